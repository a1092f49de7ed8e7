"""Apply `offline.env` (telemetry off, hub offline) to this process before any heavy library is imported.

The same file is exported by the Makefile to the dvc / prefect / mlflow command lines, so the settings live in one
place. Values already set in the environment win, so a user can opt back in explicitly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

OFFLINE_ENV_FILE = Path(__file__).with_name("offline.env")


def offline_settings() -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in OFFLINE_ENV_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def apply_offline_env() -> None:
    for key, value in offline_settings().items():
        os.environ.setdefault(key, value)


def interpreter_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with this interpreter's scripts folder first on PATH, so the `dvc` and the
    stages' `python` that subprocesses find are the ones installed beside it, venv activated or not (a Prefect
    worker started as `.venv/bin/prefect worker start`, `.venv/bin/python -m flows.profile_run`)."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]).rstrip(os.pathsep)
    return env
