"""Where the time of `make demo` goes (issue 14): wall time of the whole `dvc repro`, each stage's MLflow run
(the stage's own work: loading, training, evaluation, logging) and the gaps between runs (process start-up, imports
of torch / transformers / MLflow, parameter checks, DVC's hashing and lock bookkeeping).

    python benchmarks/demo_time.py --run          # run `make demo` now and time it (nothing else should run)
    python benchmarks/demo_time.py --since EPOCH  # analyse the stage runs logged to mlflow.db since EPOCH (seconds)

Writes benchmarks/results/demo_time.json. MLflow is the record because every stage opens exactly one run
(latlab.tracking.stage_run); reading its start and end times needs no instrumentation of DVC.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "demo_time.json"


def stage_runs(db: Path, since_ms: int) -> list[dict]:
    """Runs of mlflow.db that started at or after `since_ms` (ms since the epoch), in start order."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT name, start_time, end_time, status FROM runs WHERE start_time >= ? "
                           "ORDER BY start_time", (since_ms,)).fetchall()
    return [{"stage": name, "start_ms": start, "end_ms": end, "status": status} for name, start, end, status in rows]


def breakdown(runs: list[dict], began_ms: int, ended_ms: int) -> dict:
    """Seconds inside stage runs vs between them (start-up and DVC), per stage and in total."""
    stages, gaps, previous_end = [], [], began_ms
    for run in runs:
        end = run["end_ms"] or ended_ms
        gaps.append((run["start_ms"] - previous_end) / 1000)
        stages.append({"stage": run["stage"], "run_s": round((end - run["start_ms"]) / 1000, 2),
                       "gap_before_s": round(gaps[-1], 2), "status": run["status"]})
        previous_end = end
    tail = (ended_ms - previous_end) / 1000
    in_runs = sum(s["run_s"] for s in stages)
    return {"wall_s": round((ended_ms - began_ms) / 1000, 1), "stage_runs": len(stages),
            "in_runs_s": round(in_runs, 1), "between_runs_s": round(sum(gaps) + tail, 1),
            "mean_gap_s": round(sum(gaps) / len(gaps), 2) if gaps else None,
            "largest": sorted(stages, key=lambda s: -s["run_s"])[:8], "stages": stages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="run `make demo` now and time it")
    parser.add_argument("--since", type=float, help="analyse runs since this epoch second (an earlier make demo)")
    parser.add_argument("--until", type=float, help="end of that demo (epoch s; default: the last run's end)")
    parser.add_argument("--db", type=Path, default=ROOT / "mlflow.db")
    args = parser.parse_args(argv)
    if not args.run and args.since is None:
        print("demo_time: nothing to do without --run or --since (see the module docstring)")
        return 0
    exit_code = 0
    if args.run:
        began = time.time()
        exit_code = subprocess.call(["make", "demo"], cwd=ROOT)
        ended = time.time()
    else:
        began = args.since
        runs = stage_runs(args.db, int(began * 1000))
        last_end = max(((r["end_ms"] or 0) for r in runs), default=0) / 1000
        ended = args.until if args.until is not None else max(last_end, began)
    result = breakdown(stage_runs(args.db, int(began * 1000)), int(began * 1000), int(ended * 1000))
    result.update({"make_demo_exit_code": exit_code, "measured": time.strftime("%Y-%m-%d %H:%M", time.gmtime(began)),
                   "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                               "python": sys.version.split()[0]},
                   "note": "wall_s includes `make check` and the summary when --run; between_runs_s is process "
                           "start-up + DVC bookkeeping"})
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"demo: {result['wall_s']} s wall, {result['in_runs_s']} s in {result['stage_runs']} stage runs, "
          f"{result['between_runs_s']} s between them -> {RESULT.relative_to(ROOT)}")
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
