"""Prefect flow of the Spawrious track alone: spawrious_generate, every spawrious_train@<method>-<split> cell of the
dvc.yaml matrix, then spawrious_evaluate (and the params check first), run by the pipeline flow's machinery
(flows.pipeline: flows.repro's schedule, two cells at once, one Prefect task per stage that runs, so a failed cell
retries alone). It ran a `dvc repro --single-item` per stage before, which paid DVC's and Python's start-up in each.

Orchestration only: it knows stage names, never the science.  `python -m flows.spawrious [--jobs 2]`
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow

from flows.dag import preflight
from flows.pipeline import run_as_tasks

SPAWRIOUS_STAGES = ["spawrious_generate", "spawrious_train", "spawrious_evaluate"]  # a group name: every matrix cell


@flow(name="spawrious", log_prints=True)
def spawrious_flow(repo: str = ".", jobs: int = 2) -> list[str]:
    """Run the out-of-date Spawrious stages of `repo`, `jobs` at once; returns the stages selected."""
    problems = preflight(Path(repo), SPAWRIOUS_STAGES)
    if problems:
        raise ValueError("\n".join(problems))
    return run_as_tasks(repo, SPAWRIOUS_STAGES, jobs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.spawrious", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="stages at once (default 2: the machine's cores)")
    args = parser.parse_args(argv)
    problems = preflight(Path("."), SPAWRIOUS_STAGES) + ([f"--jobs {args.jobs}: must be >= 1"] if args.jobs < 1
                                                          else [])
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        raise SystemExit(2)
    spawrious_flow(jobs=args.jobs)


if __name__ == "__main__":
    main()
