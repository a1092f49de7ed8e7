"""GPU check (issues 3 and 8): one command for a lent GPU machine that times LAT steps (SmolLM2-135M-sized and a
Llama-3.2-1B-sized random-init model) and ACDC / EAP on the GPU, and writes tokens/s, model FLOPs utilisation,
peak memory and wall time per item to benchmarks/results/gpu_check.json.

    bash benchmarks/gpu_check.sh                 # the device machine (sets up pydantic from .whl/ if needed)
    python benchmarks/gpu_check.py --smoke       # shrunk models, CPU or GPU, under a minute on a CPU

Each item runs in its own process under its own time limit (all within --budget-s; --smoke runs them in one process
unless --isolate), so an out-of-memory error, a crash, a poisoned CUDA context or a hang costs that item only; the
JSON is rewritten after every item (and every measurement inside one), so a killed run still leaves what it
measured. Nothing is downloaded: every model is a random init from a LlamaConfig, every input random or synthetic.
MFU follows benchmarks/lat_step.py's FLOP count against the device's dense bf16 peak (`--peak-tflops` overrides);
`env` also measures a bf16 matmul as the achievable peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "gpu_check.json"


@dataclass(frozen=True)
class Context:
    device: str
    smoke: bool
    peak_tflops: float | None
    out_dir: Path  # where lat_step_<device>.json is merged


# --- items (run in a child process, or inline with --inline) -----------------------------------------------------

def env_item(ctx: Context, report: Callable[[dict], None]) -> dict:
    import torch

    from latlab.models.loading import resolve_device
    from lat_step import peak_tflops

    device = resolve_device(ctx.device)
    info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "device": str(device),
            "python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count()}
    for package in ("transformers", "pydantic", "numpy"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available to torch " + torch.__version__)
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=props.total_memory / 2**30, multiprocessors=props.multi_processor_count,
                    cuda=torch.version.cuda, peak_bf16_tflops=ctx.peak_tflops or peak_tflops(device))
    # what a plain matmul reaches here: the practical ceiling next to the datasheet peak
    n, dtype = (256, torch.float32) if ctx.smoke or device.type != "cuda" else (8192, torch.bfloat16)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    sync()
    info[f"matmul_{str(dtype).removeprefix('torch.')}_tflops"] = 2 * n**3 * reps / (time.perf_counter() - start) / 1e12
    return info


def lat_item(preset_name: str) -> Callable[[Context, Callable[[dict], None]], dict]:
    def run(ctx: Context, report: Callable[[dict], None]) -> dict:
        from latlab.models.loading import resolve_device
        from lat_step import PRESETS, device_slug, peak_tflops, resolve_dtype, run_preset, save_device_results, shrink

        device = resolve_device(ctx.device)
        preset = shrink(PRESETS[preset_name]) if ctx.smoke else PRESETS[preset_name]
        result = run_preset(preset_name, preset, device, resolve_dtype("auto", device),
                            repeats=1 if ctx.smoke else 3, inner_steps=2 if ctx.smoke else 16,
                            peak=ctx.peak_tflops or peak_tflops(device), report=report)
        path = ctx.out_dir / f"lat_step_{device_slug(device)}.json"
        save_device_results(result, path)
        return {**result, "results_file": str(path)}
    return run


def acdc_item(ctx: Context, report: Callable[[dict], None]) -> dict:
    from latlab.models.loading import resolve_device
    from acdc import DENSE, SETTINGS, bench, bench_dense

    device = resolve_device(ctx.device)
    rows: list[dict] = []
    for i, (layers, heads, n) in enumerate(SETTINGS[:1] if ctx.smoke else SETTINGS):
        rows.append(bench(layers, heads, n, with_auc=(i == 0 and not ctx.smoke), device=device))
        report({"settings": rows})
    return {"settings": rows, "dense": bench_dense(**DENSE, device=device)}


def eap_item(ctx: Context, report: Callable[[dict], None]) -> dict:
    from latlab.models.loading import resolve_device
    from acdc import bench_eap_random
    from lat_step import PRESETS, shrink

    device = resolve_device(ctx.device)
    if ctx.smoke:
        return bench_eap_random(shrink(PRESETS["smollm2"]), 2, 8, device, ig_steps=2)
    return bench_eap_random(PRESETS["smollm2"], 8, 32, device, ig_steps=10)


# name -> (time limit in seconds, function); --budget-s caps their sum (later items get what is left)
ITEMS: dict[str, tuple[float, Callable[[Context, Callable[[dict], None]], dict]]] = {
    "env": (60, env_item),
    "lat_step.smollm2": (90, lat_item("smollm2")),
    "lat_step.llama-1b": (180, lat_item("llama-1b")),
    "acdc.planted": (90, acdc_item),
    "eap.smollm2": (50, eap_item),
}


def summarize(name: str, result: dict) -> dict:
    """The few numbers worth a glance; the full result stays under items[name]["result"]."""
    if name.startswith("lat_step."):
        keys = ("tokens_per_s", "mfu", "achieved_tflops", "seconds_per_step", "peak_memory_gib", "errors")
        return {k: result[k] for k in keys if k in result}
    if name == "acdc.planted":
        rows = {f"{r['n_layers']}x{r['n_heads']}x{r['n_examples']}": r for r in result.get("settings", [])}
        if "dense" in result:
            rows["dense"] = result["dense"]
        keys = ("reference_seconds", "batched_seconds", "eap_seconds", "same_circuit")
        return {label: {k: r[k] for k in keys if k in r} for label, r in rows.items()}
    if name == "eap.smollm2":
        return {k: result[k] for k in ("n_edges", "eap_seconds", "eap_ig_seconds", "eap_tokens_per_s") if k in result}
    return {k: v for k, v in result.items() if k in ("device_name", "torch", "memory_gib", "peak_bf16_tflops")
            or k.startswith("matmul_")}


def run_item_here(name: str, ctx: Context, result_file: Path | None) -> dict:
    """Run one item in this process; returns (and writes to result_file, after every report) its entry."""
    import torch

    entry: dict = {"status": "running", "result": {}}

    def write() -> None:
        if result_file is not None:
            _write_json(result_file, entry)

    def report(partial: dict) -> None:
        entry["result"] = partial
        write()

    start = time.perf_counter()
    try:
        entry["result"] = ITEMS[name][1](ctx, report)
        entry["status"] = "oom" if entry["result"].get("errors") else "ok"
    except torch.cuda.OutOfMemoryError as err:
        entry.update(status="oom", error=str(err).splitlines()[0])
    except Exception as err:  # noqa: BLE001 - any failure is this item's result, not the whole check's
        entry.update(status="error", error=f"{type(err).__name__}: {err}"[:2000],
                     traceback=traceback.format_exc()[-4000:])
    entry["wall_s"] = time.perf_counter() - start
    if torch.cuda.is_available() and ctx.device != "cpu" and torch.cuda.is_initialized():
        entry["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    entry["summary"] = summarize(name, entry["result"])
    write()
    return entry


# --- the parent: one child per item, under a time limit -----------------------------------------------------------

def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")  # a reader (or a kill mid-write) never sees half a file
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run_item_child(name: str, ctx: Context, limit: float, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "item.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run-item", name, "--result-file", str(result_file),
               "--device", ctx.device, "--out-dir", str(ctx.out_dir)]
        cmd += ["--smoke"] if ctx.smoke else []
        cmd += ["--peak-tflops", str(ctx.peak_tflops)] if ctx.peak_tflops else []
        start = time.perf_counter()
        # a session of its own, so that a timeout kills the item's whole process group and nothing lingers on the GPU
        proc = subprocess.Popen(cmd, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
        entry = json.loads(result_file.read_text()) if result_file.exists() else {"result": {}}
    if rc is None:
        entry.update(status="timeout", error=f"killed after its {limit:.0f} s limit")
        entry["summary"] = summarize(name, entry.get("result", {}))
    elif rc != 0 or entry.get("status") in (None, "running"):
        entry.update(status="crashed", error=f"exit code {rc}")
    entry["wall_s"] = time.perf_counter() - start
    entry["time_limit_s"] = limit
    return entry


def run_check(args: argparse.Namespace) -> dict:
    ctx = Context(args.device or ("auto" if args.smoke else "cuda"), args.smoke, args.peak_tflops, args.out.parent)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    check = {"check": "gpu_check", "smoke": args.smoke, "command": " ".join(sys.argv),
             "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": ctx.device,
             "budget_s": args.budget_s, "items": {}, "summary": {}, "completed": False}
    copies = {args.out}

    def save() -> None:
        _write_json(args.out, check)
        if args.copy_to:
            for path in copies:
                if path.exists():
                    shutil.copy2(path, Path(args.copy_to) / path.name)

    save()
    start = time.perf_counter()
    names = args.items or list(ITEMS)
    for i, name in enumerate(names, 1):
        remaining = args.budget_s - (time.perf_counter() - start)
        limit = min(ITEMS[name][0] * args.limit_scale, remaining)
        if remaining < 5:
            check["items"][name] = {"status": "skipped", "error": "the check's time budget is spent"}
            print(f"== [{i}/{len(names)}] {name}: skipped (budget spent)", flush=True)
            save()
            continue
        print(f"== [{i}/{len(names)}] {name} (limit {limit:.0f} s)", flush=True)
        entry = run_item_here(name, ctx, None) if args.inline else run_item_child(name, ctx, limit, args)
        check["items"][name] = entry
        check["summary"][name] = {"status": entry["status"], "wall_s": round(entry["wall_s"], 2),
                                  **entry.get("summary", {})}
        if "results_file" in entry.get("result", {}):
            copies.add(Path(entry["result"]["results_file"]))
        print(f"   {entry['status']} in {entry['wall_s']:.1f} s" +
              (f": {entry['error']}" if entry.get("error") else ""), flush=True)
        save()
        if name == "env" and entry["status"] != "ok":
            print("   no usable device: the other items are skipped", flush=True)
            break
    check["completed"] = True
    check["wall_s"] = time.perf_counter() - start
    save()
    print(json.dumps(check["summary"], indent=1, default=str))
    print(f"wrote {args.out}" + (f" (and copied to {args.copy_to})" if args.copy_to else ""))
    return check


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="shrunk models and few steps (CPU-sized)")
    parser.add_argument("--device", help="default: cuda, and without one nothing is checked (--smoke: cuda if "
                        "available, else cpu)")
    parser.add_argument("--peak-tflops", type=float, help="peak for MFU (default: the device's dense bf16 peak)")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/gpu_check.json "
                        "(--smoke: gpu_check_smoke.json in the temp folder)")
    parser.add_argument("--copy-to", help="also copy the result files here after every item (the device's $OUT)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="all items together")
    parser.add_argument("--limit-scale", type=float, default=1.0, help="multiplies every item's time limit")
    parser.add_argument("--items", nargs="+", choices=list(ITEMS), help="a subset, in this order")
    parser.add_argument("--inline", action="store_true", help="run the items in this process (no time limits); "
                        "the default with --smoke, where a process per item would double the time on a CPU")
    parser.add_argument("--isolate", action="store_true", help="with --smoke: a process per item all the same")
    parser.add_argument("--run-item", choices=list(ITEMS), help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.inline = args.inline or (args.smoke and not args.isolate)
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "gpu_check_smoke.json" if args.smoke else RESULTS
    return args


def main() -> None:
    args = parse_args()
    if args.run_item:
        ctx = Context(args.device, args.smoke, args.peak_tflops, args.out_dir)
        run_item_here(args.run_item, ctx, args.result_file)
        return
    if args.device is None and not args.smoke:
        import torch

        if not torch.cuda.is_available():  # `make benchmarks` runs every script here, also on machines without one
            print("gpu_check: no CUDA device here, nothing to check (--smoke runs the shrunk check on the CPU; "
                  "--device cuda makes this an error)")
            return
    check = run_check(args)
    sys.exit(0 if all(e["status"] == "ok" for e in check["items"].values()) else 1)


if __name__ == "__main__":
    main()
