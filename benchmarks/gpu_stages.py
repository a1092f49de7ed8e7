"""The default pipeline's DVC stages, unchanged, on a lent GPU machine that has no DVC (benchmarks/gpu_stages.sh
wraps it; docs/real_models.md has the results).

    python benchmarks/gpu_stages.py --write-dag .whl-stages/dag.json     # here: DVC resolves dvc.yaml's DAG
    python benchmarks/gpu_stages.py --dag .whl-stages/dag.json [--budget-s 480] [--jobs 6] [--stages base lat ...]

`model.device: auto` resolves to cuda there, so every stage runs on the GPU as `make demo` would run it on the CPU,
MLflow tracking included. Each stage starts when its parents have finished with exit 0 (up to `--jobs` at once, in
dvc.yaml's order), under what is left of `--budget-s`; a stage whose parent failed, timed out or was skipped is
skipped. `--exclude` stages (default: validate, whose Great Expectations the device image lacks and the 64 MB carry
limit leaves out) are not run and count as done for their children. `--stages` runs those and what they need.

Not flows.repro: that one asks DVC which stages are stale and commits each to dvc.lock; here every stage runs once,
from a DAG resolved where DVC is installed, and nothing is committed (the outputs stay on the device machine).
Written: `--out` (default $OUT/gpu_stages.json or benchmarks/results/gpu_stages.json): per stage its exit status,
seconds, start offset and, on a failure, the log's tail; the metrics files the run wrote; logs under
logs/gpu_stages/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG_DIR = Path("logs/gpu_stages")


def dvc_yaml_digest() -> str:
    return hashlib.sha256((ROOT / "dvc.yaml").read_bytes()).hexdigest()


def write_dag(path: Path) -> dict:
    """The repo's dvc.yaml resolved by DVC: {"dvc_yaml_sha256", "order": [stage, ...], "stages": {stage: {"parents",
    "cmd"}}}."""
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    from flows.dag import execution_waves, stage_commands, stage_parents

    parents, commands = stage_parents(ROOT), stage_commands(ROOT)  # stage_order would load DVC's graph again
    dag = {"dvc_yaml_sha256": dvc_yaml_digest(), "order": [s for wave in execution_waves(parents) for s in wave],
           "stages": {s: {"parents": parents[s], "cmd": commands[s]} for s in parents}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dag, indent=1) + "\n")
    return dag


def needed(dag: dict, wanted: list[str] | None) -> list[str]:
    """dag's stages in order, restricted to `wanted` (a foreach group name keeps all its items) and their ancestors."""
    if not wanted:
        return list(dag["order"])
    groups = {s.split("@", 1)[0] for s in dag["stages"]}
    unknown = sorted(set(wanted) - set(dag["stages"]) - groups)
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; dvc.yaml has {sorted(dag['stages'])}")
    keep: set[str] = set()
    todo = [s for s in dag["stages"] if s in wanted or s.split("@", 1)[0] in wanted]
    while todo:
        stage = todo.pop()
        if stage not in keep:
            keep.add(stage)
            todo.extend(dag["stages"][stage]["parents"])
    return [s for s in dag["order"] if s in keep]


def heights(dag: dict) -> dict[str, int]:
    """Stage -> stages on its longest chain of descendants: of the stages ready at once, the tallest starts first, so
    base (everything waits on it) does not queue behind the short Spawrious branch."""
    children: dict[str, list[str]] = {s: [] for s in dag["stages"]}
    for stage, entry in dag["stages"].items():
        for parent in entry["parents"]:
            children.setdefault(parent, []).append(stage)
    height: dict[str, int] = {}
    for stage in reversed(dag["order"]):
        height[stage] = 1 + max((height[c] for c in children[stage]), default=0)
    return height


def command(cmd: str) -> list[str]:
    """dvc.yaml's `python -m ...` with this interpreter (the device image may have no `python` on PATH)."""
    argv = shlex.split(cmd)
    return [sys.executable, *argv[1:]] if argv and argv[0] == "python" else argv


def run_stage(stage: str, cmd: str, timeout: float) -> dict:
    log = LOG_DIR / f"{stage.replace('@', '.')}.log"
    start = time.perf_counter()
    with log.open("w") as out:
        try:
            code = subprocess.run(command(cmd), check=False, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    entry = {"exit": code, "seconds": round(time.perf_counter() - start, 1)}
    if code != 0:
        entry["log_tail"] = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-25:]
    return entry


def run(dag: dict, stages: list[str], exclude: set[str], budget: float, jobs: int) -> dict[str, dict]:
    began = time.perf_counter()
    results: dict[str, dict] = {s: {"exit": "excluded"} for s in stages if s in exclude}
    height = heights(dag)
    todo = sorted((s for s in stages if s not in exclude), key=lambda s: -height[s])  # parents stay before children
    done_ok = set(results) | {p for s in todo for p in dag["stages"][s]["parents"] if p not in stages}
    not_ok: set[str] = set()  # failed, timed out or skipped
    running: dict[Future, str] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while todo or running:
            for stage in list(todo):
                parents = dag["stages"][stage]["parents"]
                if any(p in not_ok for p in parents):
                    todo.remove(stage)
                    not_ok.add(stage)
                    results[stage] = {"exit": "skipped", "why": "a parent did not finish"}
                elif all(p in done_ok for p in parents) and len(running) < jobs:
                    todo.remove(stage)
                    left = budget - (time.perf_counter() - began)
                    if left < 1:
                        not_ok.add(stage)
                        results[stage] = {"exit": "skipped", "why": "no time left"}
                        continue
                    results[stage] = {"start_s": round(time.perf_counter() - began, 1)}
                    running[pool.submit(run_stage, stage, dag["stages"][stage]["cmd"], left)] = stage
            if not running:
                if todo:  # cannot happen in a DAG whose order puts parents first; never spin
                    raise RuntimeError(f"nothing can start: {todo}")
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                stage = running.pop(future)
                results[stage] = {**future.result(), **results[stage]}
                (done_ok if results[stage]["exit"] == 0 else not_ok).add(stage)
                print(f"[{time.perf_counter() - began:5.0f} s] {stage}: exit {results[stage]['exit']} "
                      f"({results[stage]['seconds']} s)", flush=True)
    return {s: results[s] for s in stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-dag", type=Path, help="resolve dvc.yaml's DAG with DVC into this file and stop")
    parser.add_argument("--dag", type=Path, help="the file --write-dag wrote")
    parser.add_argument("--budget-s", type=float, default=480.0, help="all stages together (default 480)")
    parser.add_argument("--jobs", type=int, default=6, help="stages at once (default 6)")
    parser.add_argument("--stages", nargs="+", help="these stages and what they need (default: all)")
    parser.add_argument("--exclude", nargs="*", default=["validate"], help="not run, counted as done")
    default_out = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "results"
    parser.add_argument("--out", type=Path, default=default_out / "gpu_stages.json")
    args = parser.parse_args()
    if args.write_dag:
        dag = write_dag(args.write_dag)
        print(f"wrote {args.write_dag}: {len(dag['stages'])} stages")
        return
    if not args.dag:
        parser.error("--dag (or --write-dag) is required")
    dag = json.loads(args.dag.read_text())
    if dag.get("dvc_yaml_sha256") != dvc_yaml_digest():
        raise SystemExit(f"{args.dag} was resolved from another dvc.yaml: rerun `bash benchmarks/gpu_stages.sh "
                         "--fetch-wheels` (or --write-dag) where DVC is installed")
    os.chdir(ROOT)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    began = time.time()
    stages = run(dag, needed(dag, args.stages), set(args.exclude), args.budget_s, args.jobs)

    import torch

    metrics = {str(p): json.loads(p.read_text()) for p in sorted(Path("metrics").rglob("*.json"))
               if p.stat().st_mtime >= began}
    result = {"device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "torch": torch.__version__, "budget_s": args.budget_s, "jobs": args.jobs,
              "git_commit": os.environ.get("LATLAB_GIT_COMMIT"),
              "note": f"up to {args.jobs} stages side by side on one device: their seconds include contention",
              "stages": stages, "metrics": metrics}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    raise SystemExit(0 if all(e["exit"] in (0, "excluded") for e in stages.values()) else 1)


if __name__ == "__main__":
    main()
