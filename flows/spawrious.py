"""Prefect flow of the Spawrious track: `dvc repro` of spawrious_generate, then every spawrious_train@<method>-<split>
cell of the dvc.yaml matrix (one task each, so a failed cell retries alone), then spawrious_evaluate.

Orchestration only: it knows stage names and DVC, never the science.  `python -m flows.spawrious`
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.dag import preflight
from flows.proc import run_passing_sigterm
from latlab.env import interpreter_env

TRAIN_PREFIX = "spawrious_train@"


def _dvc(*args: str) -> str:
    done = run_passing_sigterm(["dvc", *args], env=interpreter_env())
    if done.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


@task(retries=1, retry_delay_seconds=5)
def repro(stage: str) -> str:
    get_run_logger().info("dvc repro --single-item %s", stage)
    return _dvc("repro", "--single-item", stage)


@task
def train_cells() -> list[str]:
    names = _dvc("stage", "list", "--name-only").split()
    return [name for name in names if name.startswith(TRAIN_PREFIX)]


@flow(name="spawrious")
def spawrious_flow() -> None:
    problems = preflight(Path("."), ["spawrious_generate", "spawrious_train", "spawrious_evaluate"])
    if problems:
        raise ValueError("\n".join(problems))
    repro("spawrious_generate")
    for cell in train_cells():
        repro(cell)  # sequential: the default grid is sized for 2 CPU cores
    repro("spawrious_evaluate")


if __name__ == "__main__":
    spawrious_flow()
