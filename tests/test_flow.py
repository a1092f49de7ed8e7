"""The Prefect flow: DAG order from dvc.yaml, one task per stage, on a throwaway DVC repo (prefect_test_harness)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.dag import stage_graph, stage_order

REPO = Path(__file__).resolve().parents[1]


def test_repository_dag_order():
    order = stage_order(REPO / "dvc.yaml")
    for before, after in [("generate", "validate"), ("validate", "base"), ("base", "refusal"),
                          ("refusal", "evaluate"), ("evaluate", "compare"),
                          ("spawrious_generate", "spawrious_train"), ("spawrious_train", "spawrious_evaluate")]:
        assert order.index(before) < order.index(after), (before, after)
    assert stage_order(REPO / "dvc.yaml", ["compare", "generate"]) == ["generate", "compare"]
    with pytest.raises(ValueError, match="unknown stage"):
        stage_order(REPO / "dvc.yaml", ["nope"])


def _toy_dvc_repo(root: Path) -> None:
    """Three stages: a -> b -> c, each appending its name to a log so the run order is visible."""
    stages = {}
    for name, dep in (("a", None), ("b", "out/a.txt"), ("c", "out/b.txt")):
        cmd = f"mkdir -p out && echo {name} > out/{name}.txt && echo {name} >> order.log"
        stages[name] = {"cmd": cmd, "outs": [f"out/{name}.txt"], **({"deps": [dep]} if dep else {})}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, env={**os.environ, "PATH": _path()})


def _path() -> str:
    return f"{Path(sys.executable).parent}:{os.environ['PATH']}"


def test_flow_runs_stages_in_dag_order(tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import latlab_pipeline

    _toy_dvc_repo(tmp_path)
    assert stage_graph(tmp_path / "dvc.yaml") == {"a": set(), "b": {"a"}, "c": {"b"}}
    monkeypatch.setenv("PATH", _path())
    with prefect_test_harness(server_startup_timeout=120):
        assert latlab_pipeline(repo=str(tmp_path)) == ["a", "b", "c"]
        assert (tmp_path / "order.log").read_text().split() == ["a", "b", "c"]
        assert latlab_pipeline(stages=["c"], repo=str(tmp_path)) == ["c"]  # up to date: DVC skips it
    assert (tmp_path / "order.log").read_text().split() == ["a", "b", "c"]
    assert (tmp_path / "dvc.lock").exists()
