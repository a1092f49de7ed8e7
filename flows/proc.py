"""Subprocesses of the flows (`dvc repro`, `dvc pull`, ...) that stop cleanly: a SIGTERM to the flow process (a
Kubernetes pod being deleted, a scheduler, `kill`) is passed on to the child, and the flow waits for it to exit.
`dvc` dies on it, the stage under it gets SIGTERM from the kernel when its parent dies (stages/common.py), saves a
checkpoint after its current step and ends its MLflow run KILLED; only then does the flow exit (status 143). The
pod's terminationGracePeriodSeconds (k8s/work-pool/base-job-template.json) leaves time for that."""

from __future__ import annotations

import signal
import subprocess
import threading

SIGTERM_STATUS = 143


def run_passing_sigterm(cmd: list[str], cwd=None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True)`, passing a SIGTERM on to `cmd` (then SystemExit 143)."""
    received: list[int] = []
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        def forward(signum, frame) -> None:
            received.append(signum)
            proc.send_signal(signal.SIGTERM)

        main = threading.current_thread() is threading.main_thread()  # handlers belong to the main thread
        previous = signal.signal(signal.SIGTERM, forward) if main else None
        try:
            stdout, stderr = proc.communicate()
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
    if received:
        raise SystemExit(SIGTERM_STATUS)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
