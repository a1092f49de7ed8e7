"""`dvc repro` with independent stages at once: the demo's runner (`make demo`).

    python -m flows.repro                 # every out-of-date stage, 2 at a time, 1 torch thread each
    python -m flows.repro --jobs 1        # one at a time (what `dvc repro` does, without its repo lock per stage)

DVC 3 runs the stages of one workspace one after another (`dvc repro` holds the repository lock for the whole run),
and on 2 cores one small-model stage at 2 torch threads gets little from the second one: two stages at one thread
each finish in 1.14x the time of one at two (measured here: 37.8 s for two 60-step GA+LAT runs at once vs 33.1 s for
one), so the DAG's independent branches (oracle beside base, the twelve unlearning entries, Spawrious) are run side by
side. Each stage's dvc.yaml command runs as DVC would run it: its outputs removed first, in the repository root
(`python -m` commands in a pre-warmed child: flows.launch); when it succeeds, `dvc commit --force` records its
dependencies and outputs in dvc.lock and the cache (a committer thread, beside the next stages, batching the stages
finished meanwhile), so a crash keeps every stage committed before it, and afterwards `dvc status` is clean and
`dvc repro` has nothing to do.
Out of date = what `dvc status` reports, plus everything downstream of it. The first failure stops new stages
from starting; running ones finish (and are committed), and the run exits 1 naming the failed stage and its log.

Hand-written because no maintained tool runs one DVC workspace's stages concurrently (`dvc exp run --queue -j`
runs whole experiments in parallel copies of the workspace, not the stages of one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

import yaml

from flows.dag import (CHECK_STAGE, clear_stage_checkpoints, remove, stage_commands, stage_env, stage_order,
                       stage_outputs, stage_parents)
from flows.launch import PRELOAD, THREAD_VARS, run_command, start_server

ROOT = Path(__file__).resolve().parents[1]
LOG_DIR = Path("logs/stages")  # one log per stage run (gitignored), named by the failure message
TIMES = Path("logs/repro_times.json")  # the last run's stage start/end times, every stage's duration (gitignored)
DEMO_TIMES = Path("benchmarks/results/demo_time.json")  # committed: a fresh clone's scheduling estimates


def out_of_date(repo: Path, parents: dict[str, list[str]]) -> tuple[set[str], set[str]]:
    """(stages `dvc status` reports changed, those with every stage downstream of one): DVC only sees a downstream
    stage as changed once its upstream outputs have been rewritten, so the second set is what MAY have to run."""
    done = subprocess.run(["dvc", "status", "--json"], cwd=repo, capture_output=True, text=True,
                          env=stage_env(str(repo)))
    if done.returncode != 0:
        raise RuntimeError(f"dvc status failed: {done.stderr.strip()[-500:]}")
    changed = {name for name in json.loads(done.stdout or "{}") if name in parents}
    stale = set(changed)
    children: dict[str, set[str]] = {}
    for stage, ups in parents.items():
        for up in ups:
            children.setdefault(up, set()).add(stage)
    frontier = list(stale)
    while frontier:
        for child in children.get(frontier.pop(), ()):
            if child not in stale:
                stale.add(child)
                frontier.append(child)
    return changed, stale


def locked_outputs(repo: Path) -> dict[str, dict[str, str | None]]:
    """dvc.lock: stage -> {output path: md5} ({} without a dvc.lock)."""
    lock = repo / "dvc.lock"
    if not lock.exists():
        return {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # dvc.lock lists every dependency: the C loader if built
    stages = (yaml.load(lock.read_text(), Loader=loader) or {}).get("stages", {})
    return {name: {out["path"]: out.get("md5") for out in entry.get("outs", [])} for name, entry in stages.items()}


def critical_path(parents: dict[str, list[str]], seconds: dict[str, float]) -> dict[str, float]:
    """Stage -> seconds of the longest chain from its start to the end of the pipeline (its own time plus its
    slowest line of descendants). `seconds`: each stage's time in the last run (logs/repro_times.json); a stage
    without one counts as the median of those known, or 1 (so on a first run the longest chain in stages leads)."""
    known = sorted(seconds.values())
    default = known[len(known) // 2] if known else 1.0
    children: dict[str, list[str]] = {}
    for stage, ups in parents.items():
        for up in ups:
            children.setdefault(up, []).append(stage)
    length: dict[str, float] = {}

    def longest(stage: str) -> float:
        if stage not in length:
            length[stage] = seconds.get(stage, default) + max((longest(c) for c in children.get(stage, ())),
                                                              default=0.0)
        return length[stage]

    for stage in parents:
        longest(stage)
    return length


def last_times(repo: Path) -> dict[str, float]:
    """Each stage's seconds in the last run flows.repro recorded here; in a fresh clone, which has none, the stage
    processes of the committed demo timing (`DEMO_TIMES`, benchmarks/demo_time.py); {} when neither is readable."""
    try:
        return {s: float(v) for s, v in json.loads((repo / TIMES).read_text())["durations_s"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    try:
        return {row["stage"]: float(row["process_s"]) for row in json.loads((repo / DEMO_TIMES).read_text())["stages"]
                if "process_s" in row}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def stage_log(repo: Path, stage: str) -> Path:
    return repo / LOG_DIR / f"{stage.replace('@', '_')}.log"


def runner_env(repo: Path, threads: int) -> dict[str, str]:
    """What every stage command runs with: `stage_env`, and `threads` torch threads unless the user set a count."""
    env = stage_env(str(repo))
    for key in THREAD_VARS:
        env.setdefault(key, str(threads))
    return env


# `dvc commit --force <targets>` with one rewrite of dvc.lock for all targets: the calls of dvc/repo/commit.py
# (Stage.save with the run cache, Stage.commit, ProjectFile.dump_stages, under the repository lock). Run as a child
# in the repository: DVC resolves the run cache's stage paths against the working directory.
_COMMIT = """
import sys
from dvc.repo import Repo, lock_repo

with Repo() as repo, lock_repo(repo):
    files = {}
    for target in sys.argv[1:]:
        for info in repo.stage.collect_granular(target):
            info.stage.save()
            info.stage.commit(filter_info=info.filter_info)
            files.setdefault(info.stage.dvcfile.path, (info.stage.dvcfile, []))[1].append(info.stage)
    for dvcfile, stages in files.values():
        dvcfile.dump_stages(stages, update_pipeline=False)
"""


def commit(stages: list[str], repo: Path) -> None:
    """Record `stages` in dvc.lock and the DVC cache as `dvc commit --force <stages>` does, rewriting dvc.lock once
    for all of them (`_COMMIT`): the CLI loads and rewrites the whole dvc.lock (round-trip YAML, ~3 s for the default
    pipeline's 300 kB) once per target, which made the committer the bottleneck of a pipeline of short stages (the
    smoke profile's last batch of 20 stages took 70 s). RuntimeError with DVC's message when it fails."""
    done = subprocess.run([sys.executable, "-c", _COMMIT, *stages], cwd=repo, capture_output=True, text=True,
                          env=stage_env(str(repo)))
    if done.returncode != 0:
        raise RuntimeError(f"dvc commit {' '.join(stages)} failed: {done.stderr.strip()[-500:]}")


def summary_line(log: Path) -> str:
    """The stage's `[stage] done: ...` line (stages.common.stage_done), or its last line."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    done = [line for line in lines if "] done:" in line]
    return (done or lines or [""])[-1].strip()[-300:]


StageRun = Callable[[], tuple[int, Path]]  # runs one stage's command: (exit status, its log)


def repro(repo: Path = ROOT, jobs: int = 2, threads: int = 1, stages: list[str] | None = None,
          preload: tuple[str, ...] | None = PRELOAD, emit: Callable[[str], None] | None = None,
          wrap: Callable[[str, StageRun], tuple[int, Path]] | None = None) -> list[str]:
    """Run the out-of-date stages (of `stages`, default all), up to `jobs` at once, each when its parents are done
    (of those ready, the head of the longest remaining chain first: `critical_path`), each with `threads` torch
    threads, committing each to dvc.lock after it finishes; returns the stages run. RuntimeError on a failure.
    `preload`: the modules `python -m` stage commands find imported (flows.launch); None runs every command as a
    fresh process. `emit`: called with each line of the stages' output as it comes (e.g. a Prefect logger).
    `wrap(stage, run)`: calls `run` and returns its result, e.g. inside a Prefect task of the stage's name
    (flows.pipeline); it is called in a worker thread."""
    env = runner_env(repo, threads)
    if preload is not None:  # first: it imports while DVC reads the DAG and its status (and before any thread starts,
        start_server(env, preload)  # as it is started with this process's environment)
    parents = stage_parents(repo)
    order = stage_order(repo, stages)
    previous = last_times(repo)
    changed, stale = out_of_date(repo, parents)  # one `dvc status` (~8-20 s on the default pipeline)
    before = locked_outputs(repo)
    rewritten: set[str] = set()  # stages run here whose outputs differ from dvc.lock's before the run
    # of the stages ready at once, the one heading the longest remaining chain starts first (critical path first):
    # in DAG order the short Spawrious branch took both slots while base, which everything else waits on, queued
    chain = critical_path(parents, previous)
    todo = sorted((s for s in order if s in stale), key=lambda s: -chain[s])
    commands, outputs = stage_commands(repo), stage_outputs(repo)
    waiting = {s: {p for p in parents[s] if p in todo} for s in todo}
    finished: set[str] = set()
    failed: list[str] = []
    times: dict[str, dict[str, float]] = {}
    began = time.perf_counter()
    print(f"{len(changed & set(todo))} of {len(order)} stages changed, {len(todo)} with what is downstream of them; "
          f"{jobs} at once, {threads} torch thread(s) each", flush=True)
    if current := [s for s in order if s not in todo]:
        print(f"up to date: {', '.join(current)}", flush=True)

    def one(stage: str) -> tuple[int, Path]:
        remove(outputs.get(stage, []))  # its own outputs: no other stage reads or commits them now
        start = time.perf_counter() - began
        log = stage_log(repo, stage)
        code = run_command(commands[stage], repo, env, log, preload, emit)
        times[stage] = {"start_s": round(start, 1), "end_s": round(time.perf_counter() - began, 1)}
        return code, log

    def launch(stage: str) -> tuple[int, Path]:
        return one(stage) if wrap is None else wrap(stage, lambda: one(stage))

    def record(batch: list[str]) -> list[str]:
        commit(batch, repo)
        clear_stage_checkpoints(repo, batch)
        locked = locked_outputs(repo)
        rewritten.update(s for s in batch if locked.get(s) != before.get(s))
        return batch

    # A stage's slot is free as soon as its process ends; its dvc.lock entry is written by one committer thread, the
    # stages finished meanwhile in one `dvc commit`. DVC loads and rewrites the whole dvc.lock for every stage it
    # commits (~4 s each, in one call or not: 10 stages took 37 s), which held both slots idle between stages when
    # each stage committed itself; beside the running stages it costs CPU, not idle slots. Children start at once:
    # they read their parents' outputs from the workspace, not from dvc.lock. Only the up-to-date check waits for the
    # commit (it compares the new dvc.lock outputs with the old).
    running: dict[Future, str] = {}
    uncommitted: list[str] = []
    committing: set[Future] = set()  # at most one: the committer's current `dvc commit` (it returns its batch)
    committed: set[str] = set()
    skipped: list[str] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool, ThreadPoolExecutor(max_workers=1) as committer:
        while (todo and not failed) or running or uncommitted or committing:
            # downstream of a change but unchanged itself, with every parent that ran here committed and leaving its
            # outputs as they were (e.g. the params check after an edit of params.yaml): up to date, as `dvc repro`
            # finds it; repeated, as skipping a stage makes its children ready
            while up_to_date := [s for s in todo if s not in changed and not waiting[s] - finished
                                 and waiting[s] <= committed | set(skipped) and not waiting[s] & rewritten]:
                for stage in up_to_date:
                    todo.remove(stage)
                    finished.add(stage)
                    skipped.append(stage)
            ready = [s for s in todo if not waiting[s] - finished and (s in changed or waiting[s] & rewritten)]
            # the params check runs alone: it must refuse bad params before any stage's outputs are deleted
            if CHECK_STAGE in ready or (running and CHECK_STAGE in running.values()):
                ready = [CHECK_STAGE] if CHECK_STAGE in ready and not running else []
            for stage in ready[:max(0, jobs - len(running))] if not failed else []:
                todo.remove(stage)
                running[pool.submit(launch, stage)] = stage
            if uncommitted and not committing:
                committing.add(committer.submit(record, list(uncommitted)))
                uncommitted.clear()
            if not running and not committing:
                if not todo or failed:  # the rest was up to date, or a failure stops the run
                    break
                raise RuntimeError(f"nothing can start: {todo} wait on each other")
            done, _ = wait([*running, *committing], return_when=FIRST_COMPLETED)
            for future in done:
                if future in committing:
                    committing.discard(future)
                    committed.update(future.result())  # a failed `dvc commit` raises here
                    continue
                stage = running.pop(future)
                code, log = future.result()
                seconds = times[stage]["end_s"] - times[stage]["start_s"]
                if code == 0:
                    finished.add(stage)
                    uncommitted.append(stage)
                    print(f"{stage}: {seconds:.0f} s  {summary_line(log)}", flush=True)
                else:
                    failed.append(stage)
                    print(f"{stage}: FAILED (exit {code}) after {seconds:.0f} s; log: {log}", file=sys.stderr,
                          flush=True)
                    for line in log.read_text(errors="replace").splitlines()[-15:]:
                        print(f"  {line}", file=sys.stderr)
    report = repo / TIMES
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({"jobs": jobs, "torch_threads": threads,
                                  "wall_s": round(time.perf_counter() - began, 1),
                                  "stages": times,  # this run's: offsets from its start
                                  # every stage's latest duration (this run's, else an earlier one's): the estimates
                                  # critical_path schedules the next run with
                                  "durations_s": {**previous, **{s: round(t["end_s"] - t["start_s"], 1)
                                                                 for s, t in times.items()}}}, indent=1))
    if failed:
        raise RuntimeError(f"stage(s) {', '.join(failed)} failed; logs in {repo / LOG_DIR}; "
                           f"not run: {', '.join(todo) or 'none'}")
    if skipped:
        print(f"{len(skipped)} stage(s) up to date after all (their upstream outputs did not change): "
              f"{', '.join(sorted(skipped, key=order.index))}", flush=True)
    return sorted(finished - set(skipped), key=order.index)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.repro", description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="*", help="dvc.yaml stages (default: all); their upstream is not rerun")
    parser.add_argument("--jobs", type=int, default=2, help="stages at once (default 2: the machine's cores)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per stage (OMP_NUM_THREADS)")
    parser.add_argument("--preload", nargs="*", metavar="MODULE",
                        help="modules `python -m` stages find imported (default: torch, transformers, MLflow, "
                             "stages.common; none: each stage a fresh process)")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be >= 1")
    try:
        preload = PRELOAD if args.preload is None else tuple(args.preload) or None
        repro(Path.cwd(), args.jobs, args.threads, args.stages or None, preload)
    except (RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
