"""Run a profile's chosen stages in a work directory of their own, so a large profile (e.g. profiles/smollm2.yaml)
never overwrites the default run's models, metrics and dvc.lock.

    python -m flows.profile_run profiles/smollm2.yaml --stages generate validate base refusal lat evaluate \\
        --workdir runs/smollm2

The work directory gets params.yaml = the repo's params.yaml + the profile (relative `model.source` paths resolved
against the repo), and each stage runs its dvc.yaml command there (one Prefect task per stage, in DAG order). Not
`dvc repro`: a subset of the DAG (say, evaluate without R2D2's model) is exactly what DVC refuses to run, so this
path trades DVC's up-to-date checks for a chosen subset; MLflow (the work directory's mlflow.db) still records every
stage. Stage wall times go to <workdir>/reports/profile_run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task

from flows.dag import preflight, resolved_with, stage_commands, stage_env, stage_order
from flows.launch import run_command
from latlab.profiles import apply_profile

ROOT = Path(__file__).resolve().parents[1]


def prepare_workdir(profile: Path, workdir: Path, repo: Path = ROOT) -> Path:
    """workdir/params.yaml = repo params + profile, with a relative model.source made absolute when it exists."""
    workdir.mkdir(parents=True, exist_ok=True)
    params = workdir / "params.yaml"
    params.write_text((repo / "params.yaml").read_text())
    merged = apply_profile(profile, params)
    source = merged.get("model", {}).get("source", "toy")
    if source != "toy" and not Path(source).is_absolute() and (repo / source).exists():
        merged["model"]["source"] = str((repo / source).resolve())
        params.write_text(f"# {repo / 'params.yaml'} + {profile}\n" + yaml.safe_dump(merged, sort_keys=False))
    return params


def run_stage(stage: str, cmd: str, workdir: str, env: dict[str, str], emit) -> float:
    """One stage's dvc.yaml command in `workdir` (flows.launch: `python -m` stages in a pre-warmed child), each
    output line passed to `emit` as it comes and kept in <workdir>/logs/stages/<stage>.log; wall seconds,
    RuntimeError naming the stage when it fails."""
    began = time.perf_counter()
    log = Path(workdir) / "logs" / "stages" / f"{stage.replace('@', '_')}.log"
    code = run_command(cmd, workdir, env, log, emit=emit)
    seconds = time.perf_counter() - began
    if code != 0:
        raise RuntimeError(f"stage {stage} failed with exit code {code} after {seconds:.0f} s (`{cmd}` in {workdir}; "
                           f"log: {log})")
    return seconds


@task(name="profile-stage", task_run_name="{stage}")
def run_stage_command(stage: str, cmd: str, workdir: str, repo: str) -> float:
    return run_stage(stage, cmd, workdir, stage_env(repo), get_run_logger().info)


def run_stages(stages: list[str], commands: dict[str, str], run_one, report: Path, header: dict) -> dict[str, float]:
    """`run_one(stage, cmd) -> seconds` for each stage in order. `report` (JSON: torch threads = OMP_NUM_THREADS
    unless `header` says, `header`, stage -> seconds, total) is rewritten after every stage, so a crash keeps the
    times measured so far."""
    timings: dict[str, float] = {}
    began = time.perf_counter()
    report.parent.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        timings[stage] = round(run_one(stage, commands[stage]), 1)
        report.write_text(json.dumps({"torch_threads": os.environ.get("OMP_NUM_THREADS", "default"), **header,
                                      "stages": timings, "total_seconds": round(time.perf_counter() - began, 1)},
                                     indent=2))
        print(f"{stage}: {timings[stage]} s")
    return timings


@flow(name="latlab-profile-run", log_prints=True)
def profile_run(profile: str, stages: list[str], workdir: str, repo: str = str(ROOT)) -> dict[str, float]:
    """Run `stages` of dvc.yaml with `profile` applied, in `workdir`; returns stage -> wall seconds."""
    params = prepare_workdir(Path(profile), Path(workdir), Path(repo))
    where = str(Path(workdir).resolve())
    with resolved_with(params, Path(repo)) as dag:  # the profile's method tables and splits, not the repo's
        order, commands = stage_order(dag, stages), stage_commands(dag)
    return run_stages(order, commands,
                      lambda stage, cmd: run_stage_command(stage, cmd, where, repo),
                      Path(workdir) / "reports" / "profile_run.json", {"profile": profile})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.profile_run", description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("--stages", nargs="+", required=True, help="dvc.yaml stages to run (DAG order kept)")
    parser.add_argument("--workdir", required=True, help="where params.yaml, data, models and metrics go")
    args = parser.parse_args(argv)
    problems = preflight(ROOT, args.stages, Path(args.profile))  # before Prefect starts its API server
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        raise SystemExit(2)
    try:
        profile_run(args.profile, args.stages, args.workdir)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
