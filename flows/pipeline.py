"""The pipeline as a Prefect flow: one task per DVC stage, run in dependency order, with retries.

Each task runs its stage as `dvc repro --single-item <stage>` would, through `flows.repro` (the runner of `make
demo`): `dvc status` decides whether it is out of date, its command runs (a `python -m` stage in a child of a fork
server that imported torch, transformers, MLflow and the stage modules once: flows.launch) and `dvc commit` records
it in dvc.lock. A `dvc repro --single-item` per stage paid Python's and DVC's start-up (~12 s) in each of the 39
stages. Unlike DVC, it does not restore a stage's outputs from DVC's run cache. Stages run one at a time, with every
core's torch threads (`make demo` runs two at once). Prefect adds retries, logs, schedules and (see
flows/cluster.py) Kubernetes pods. Runs offline on Prefect's ephemeral local API: `python -m flows.pipeline
[--stages a b ...]`. The params check (`python -m latlab.check`) and the stage names are checked first, before
Prefect starts: a problem is one line each, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.dag import clear_stage_checkpoints, preflight, stage_order, stage_parents
from flows.repro import out_of_date, repro


def _threads() -> int:
    """Torch threads of a stage run alone: the cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@task(name="dvc-stage", retries=1, retry_delay_seconds=5, task_run_name="{stage}")
def dvc_stage(stage: str, repo: str = ".", stale: bool = True) -> str:
    """Run one DVC stage if it is out of date (`stale`: it or a stage upstream of it changed when the flow started;
    `dvc status` then decides); the stage's output goes to the flow log line by line, its log to logs/stages/."""
    logger = get_run_logger()
    if stale:
        ran = repro(Path(repo).resolve(), jobs=1, threads=_threads(), stages=[stage], emit=logger.info)
        if stage not in ran:
            logger.info("%s: up to date (its dependencies did not change)", stage)
    else:
        logger.info("%s: up to date", stage)
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
    _, stale = out_of_date(Path(repo), stage_parents(Path(repo)))  # one `dvc status` for the stages up to date
    for stage in order:
        dvc_stage(stage, repo, stage in stale)
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
