"""The pipeline as a Prefect flow: one task per DVC stage, run in dependency order, with retries.

The stages are scheduled by `flows.repro` (the runner of `make demo`): one `dvc status` decides what is out of date,
independent stages run two at a time (each `python -m` stage in a child of a fork server that imported torch,
transformers, MLflow and the stage modules once: flows.launch) and each finished stage is recorded in dvc.lock by
`dvc commit`, as `dvc repro` would. Every stage that runs is a Prefect task named after it, with its output in the
task's log line by line and one retry. A `dvc repro --single-item` per task (this flow before) paid Python's and
DVC's start-up and a whole-DAG status check in each of the 39 stages (~18 s each; the smoke pipeline through the
`pipeline-local` deployment took 713 s, now 175 s); unlike `dvc repro`, stages are not restored from DVC's run
cache. Prefect adds retries, logs, schedules and (see flows/cluster.py) Kubernetes pods. Runs offline on Prefect's
ephemeral local API: `python -m flows.pipeline [--stages a b ...] [--jobs 2]`. The params check (`python -m
latlab.check`) and the stage names are checked first, before Prefect starts: a problem is one line each, exit
status 2.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.dag import clear_stage_checkpoints, preflight, stage_order
from flows.repro import StageRun, repro


class StageFailed(RuntimeError):
    def __init__(self, stage: str, code: int, log: Path):
        super().__init__(f"stage {stage} failed with exit code {code}; log: {log}")
        self.code, self.log = code, log


@task(name="dvc-stage", retries=1, retry_delay_seconds=5, task_run_name="{stage}", cache_policy=NO_CACHE)
def dvc_stage(stage: str, run: StageRun) -> tuple[int, Path]:
    """Run one out-of-date DVC stage's command (`run`, from flows.repro: its outputs removed first, its output lines
    to this task's log); StageFailed on a non-zero exit, which Prefect retries once."""
    code, log = run()
    if code != 0:
        raise StageFailed(stage, code, log)
    return code, log


def _log_line(line: str) -> None:
    get_run_logger().info(line)  # the logger of the task run current in this thread


def run_as_tasks(repo: str, stages: list[str] | None, jobs: int) -> list[str]:
    """flows.repro with each stage in a `dvc_stage` task of the calling flow run (its context copied into the
    runner's threads); returns the stages selected (`stage_order`), whether they ran or were up to date."""
    flow_context = contextvars.copy_context()

    def wrap(stage: str, run: StageRun) -> tuple[int, Path]:
        try:
            return flow_context.copy().run(dvc_stage, stage, run)
        except StageFailed as failed:  # after its retry: flows.repro stops the run and names it
            return failed.code, failed.log

    repro(Path(repo).resolve(), jobs=jobs, threads=max(1, (os.cpu_count() or 1) // jobs), stages=stages,
          emit=_log_line, wrap=wrap)
    order = stage_order(Path(repo), stages)
    # up to date without running (or restored by an earlier run): a checkpoint a killed run left is stale
    for path in clear_stage_checkpoints(Path(repo), order):
        get_run_logger().info("removed the stale checkpoint %s", path)
    return order


@flow(name="latlab-pipeline", log_prints=True)
def latlab_pipeline(stages: list[str] | None = None, params_file: str = "params.yaml", repo: str = ".",
                    jobs: int = 2) -> list[str]:
    """Run the DVC stages (all, or the given ones) in DAG order, `jobs` at once; returns the stages (selected)."""
    if Path(params_file).name != "params.yaml":
        raise ValueError("params_file: the stages read params.yaml; apply a profile first "
                         "(python -m latlab.profiles apply profiles/<name>.yaml)")
    problems = preflight(Path(repo), stages)
    if problems:
        raise ValueError("\n".join(problems))
    return run_as_tasks(repo, stages, jobs)


@flow(name="latlab-stage", log_prints=True)
def run_stage(stage: str, repo: str = ".") -> str:
    """One stage as its own flow run (per-stage deployments)."""
    problems = preflight(Path(repo), [stage])
    if problems:
        raise ValueError("\n".join(problems))
    run_as_tasks(repo, [stage], 1)
    return stage


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="*", default=None, help="run only these stages (DAG order kept)")
    parser.add_argument("--jobs", type=int, default=2, help="stages at once (default 2: the machine's cores)")
    args = parser.parse_args(argv)
    problems = preflight(Path("."), args.stages)  # before Prefect starts its API server
    if args.jobs < 1:
        problems.append(f"--jobs {args.jobs}: must be >= 1")
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        raise SystemExit(2)
    latlab_pipeline(stages=args.stages, jobs=args.jobs)


if __name__ == "__main__":
    main()
