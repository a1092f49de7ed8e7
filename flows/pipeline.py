"""The pipeline as a Prefect flow: one task per DVC stage, run in dependency order, with retries.

Each task runs `dvc repro --single-item <stage>`, so DVC still decides what is up to date and records dvc.lock;
Prefect adds retries, logs, schedules and (see flows/cluster.py) Kubernetes pods. Runs offline on Prefect's
ephemeral local API: `python -m flows.pipeline [--stages a b ...]`. The params check (`python -m latlab.check`) and
the stage names are checked first, before Prefect starts: a problem is one line each, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.dag import clear_stage_checkpoints, preflight, stage_order
from flows.proc import run_passing_sigterm
from latlab.env import interpreter_env


@task(name="dvc-stage", retries=1, retry_delay_seconds=5, task_run_name="{stage}")
def dvc_stage(stage: str, repo: str = ".") -> str:
    """Run one DVC stage (skipped by DVC when its inputs are unchanged); the stage's output goes to the flow log."""
    logger = get_run_logger()
    done = run_passing_sigterm(["dvc", "repro", "--single-item", stage], cwd=repo, env=interpreter_env())
    for line in (done.stdout + done.stderr).splitlines():
        if line.strip():
            logger.info(line.rstrip()[-500:])
    if done.returncode != 0:
        raise RuntimeError(f"stage {stage} failed with exit code {done.returncode}")
    for path in clear_stage_checkpoints(Path(repo), [stage]):  # e.g. left by a killed run, outputs since restored
        logger.info("removed the stale checkpoint %s", path)
    return stage


@flow(name="latlab-pipeline", log_prints=True)
def latlab_pipeline(stages: list[str] | None = None, params_file: str = "params.yaml", repo: str = ".") -> list[str]:
    """Run the DVC stages (all, or the given ones) in DAG order; returns the stages run."""
    if Path(params_file).name != "params.yaml":
        raise ValueError("params_file: the stages read params.yaml; apply a profile first "
                         "(python -m latlab.profiles apply profiles/<name>.yaml)")
    problems = preflight(Path(repo), stages)
    if problems:
        raise ValueError("\n".join(problems))
    order = stage_order(Path(repo), stages)
    for stage in order:
        dvc_stage(stage, repo)
    return order


@flow(name="latlab-stage", log_prints=True)
def run_stage(stage: str, repo: str = ".") -> str:
    """One stage as its own flow run (per-stage deployments)."""
    problems = preflight(Path(repo), [stage])
    if problems:
        raise ValueError("\n".join(problems))
    return dvc_stage(stage, repo)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="*", default=None, help="run only these stages (DAG order kept)")
    args = parser.parse_args(argv)
    problems = preflight(Path("."), args.stages)  # before Prefect starts its API server
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        raise SystemExit(2)
    latlab_pipeline(stages=args.stages)


if __name__ == "__main__":
    main()
