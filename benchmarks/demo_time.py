"""Where the time of `make demo` goes (issue 14): wall time of the whole run (flows.repro), each stage's MLflow run
(the stage's own work: loading, training, evaluation, logging), each stage's process (flows.repro's
logs/repro_times.json; the difference is start-up: imports of torch / transformers / MLflow, parameter checks) and
the time no stage runs (DVC status, commits, hashing).

    python benchmarks/demo_time.py --run          # run `make demo` now and time it (nothing else should run)
    python benchmarks/demo_time.py --since EPOCH  # analyse the stage runs logged to mlflow.db since EPOCH (seconds)

With --run, the machine's speed is measured before and after (`calibrate`: seconds per training step of a model
shaped like the default one at one torch thread), so timings from machines of different speed, or a machine that
slowed down, can be told apart from a change of the code. Writes benchmarks/results/demo_time.json. MLflow is the record because every stage opens exactly one run
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


def calibrate(steps: int = 20) -> float:
    """Seconds per AdamW step (forward + backward) of a randomly initialised Llama shaped like params.yaml's toy
    model (hidden 128, 4 blocks, 4 heads, MLP 384, vocabulary 361) on a batch of 64 x 32 tokens at one torch thread:
    the default pipeline's base training step (~0.18 s on the machine of the 938-s demo), timed after 3 warm-up
    steps, median of `steps`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                             num_key_value_heads=4, intermediate_size=384, vocab_size=361,
                                             max_position_embeddings=128))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batch = torch.randint(0, 361, (64, 32))
        times = []
        for step in range(steps + 3):
            start = time.perf_counter()
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step >= 3:
                times.append(time.perf_counter() - start)
        return round(sorted(times)[len(times) // 2], 4)
    finally:
        torch.set_num_threads(threads)


def covered_s(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of (start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def breakdown(runs: list[dict], began_ms: int, ended_ms: int, processes: dict[str, dict] | None = None) -> dict:
    """Where the wall time went. Per stage: its MLflow run (`run_s`: the stage's own work) and, given flows.repro's
    process times (`processes`: stage -> {start_s, end_s} from the run's start), its whole process (`process_s`)
    and the difference (`startup_s`: interpreter, imports, params check, MLflow set-up, saving). Totals:
    `in_runs_s` (sum of runs), `startup_s`, `outside_stages_s` (wall time with no stage process running: DVC's
    status, commits and hashing, the summary) and `parallelism` (stage-process seconds per wall second)."""
    processes = processes or {}
    stages = []
    for run in runs:
        end = run["end_ms"] or ended_ms
        row = {"stage": run["stage"], "run_s": round((end - run["start_ms"]) / 1000, 2), "status": run["status"]}
        if run["stage"] in processes:
            times = processes[run["stage"]]
            row["process_s"] = round(times["end_s"] - times["start_s"], 2)
            row["startup_s"] = round(row["process_s"] - row["run_s"], 2)
        stages.append(row)
    wall = (ended_ms - began_ms) / 1000
    intervals = [(t["start_s"], t["end_s"]) for t in processes.values()] or \
        [((r["start_ms"] - began_ms) / 1000, ((r["end_ms"] or ended_ms) - began_ms) / 1000) for r in runs]
    busy = sum(end - start for start, end in intervals)
    return {"wall_s": round(wall, 1), "stage_runs": len(stages),
            "in_runs_s": round(sum(s["run_s"] for s in stages), 1),
            "startup_s": round(sum(s.get("startup_s", 0.0) for s in stages), 1),
            "outside_stages_s": round(wall - covered_s(intervals), 1),
            "parallelism": round(busy / wall, 2) if wall > 0 else None,
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
    speed = {}
    if args.run:
        speed["before_s_per_step"] = calibrate()
        began = time.time()
        exit_code = subprocess.call(["make", "demo"], cwd=ROOT)
        ended = time.time()
        speed["after_s_per_step"] = calibrate()
    else:
        began = args.since
        runs = stage_runs(args.db, int(began * 1000))
        last_end = max(((r["end_ms"] or 0) for r in runs), default=0) / 1000
        ended = args.until if args.until is not None else max(last_end, began)
    repro_times = ROOT / "logs" / "repro_times.json"  # flows.repro's, offsets from its own start (~ `began`)
    processes = json.loads(repro_times.read_text())["stages"] if args.run and repro_times.exists() else None
    result = breakdown(stage_runs(args.db, int(began * 1000)), int(began * 1000), int(ended * 1000), processes)
    result.update({"make_demo_exit_code": exit_code, "measured": time.strftime("%Y-%m-%d %H:%M", time.gmtime(began)),
                   "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                               "python": sys.version.split()[0], **({"calibration": speed} if speed else {})},
                   "note": "wall_s includes `make check` and the summary when --run; stage processes run "
                           "side by side (flows.repro --jobs 2), so in_runs_s + startup_s can exceed wall_s"})
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"demo: {result['wall_s']} s wall, {result['in_runs_s']} s in {result['stage_runs']} stage runs, "
          f"{result['startup_s']} s of process start-up, {result['outside_stages_s']} s outside any stage, "
          f"parallelism {result['parallelism']} -> {RESULT.relative_to(ROOT)}")
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
