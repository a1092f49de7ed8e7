"""Sweep targeted-LAT settings on top of a profile run's RT model and measure what each buys: robustness against
over-refusal (issue 8: SmolLM2's RT-LAT refused everything, benign requests included).

    .venv/bin/python scripts/lat_sweep.py profiles/sweeps/smollm2_lat.yaml

Each variant runs the real `lat` stage (its dvc.yaml command) in <workdir>/sweep/<name>, whose params.yaml is the
profile run's with the variant's `lat` overrides and which reads the run's data and RT model through symlinks.
Then RT and every variant's RT-LAT get the behaviour metrics on the evaluation split (harmful ASR, benign
compliance, with the run's judge) and the sweep's attacks. A variant whose results file exists is not rerun
(delete <workdir>/sweep/<name> to redo it). Results: <out>.json and <out>.md.
"""

from __future__ import annotations

import latlab  # noqa: F401, I001  (first: applies src/latlab/offline.env before any third-party import)
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from pydantic import BaseModel, ConfigDict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.dag import stage_commands, stage_env  # noqa: E402
from latlab.config import AttackName, load_params  # noqa: E402
from latlab.data.records import load_world, split_of  # noqa: E402
from latlab.env import apply_offline_env  # noqa: E402
from latlab.evals.attack_suite import asr_row, run_attack_suite  # noqa: E402
from latlab.evals.behaviour import request_behaviour  # noqa: E402
from latlab.evals.judge_kinds import make_judge  # noqa: E402
from latlab.models.loading import load_saved  # noqa: E402

KEYS = ["harmful_asr", "benign_compliance"]


class Sweep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workdir: Path  # a profile run (flows/profile_run.py) with data/world and models/rt
    out: Path  # results: <out>.json, <out>.md
    attacks: list[AttackName] = ["direct"]
    threads: int = 1
    variants: dict[str, dict]  # name -> overrides of the `lat` section


def load_sweep(path: Path) -> Sweep:
    if not path.exists():
        raise SystemExit(f"{path}: file not found")
    sweep = Sweep.model_validate(yaml.safe_load(path.read_text()))
    for needed in ("params.yaml", "data/world", "models/rt"):
        if not (sweep.workdir / needed).exists():
            raise SystemExit(f"{path}: workdir {sweep.workdir} has no {needed} (run the profile's stages first)")
    return sweep


def prepare_variant(sweep: Sweep, name: str, overrides: dict) -> Path:
    """<workdir>/sweep/<name>: params with the `lat` overrides (validated), data and RT linked from the run."""
    run = sweep.workdir.resolve()
    folder = run / "sweep" / name
    (folder / "models").mkdir(parents=True, exist_ok=True)
    for link, target in (("data", run / "data"), ("models/rt", run / "models/rt")):
        if not (folder / link).exists():
            (folder / link).symlink_to(target)
    params = yaml.safe_load((run / "params.yaml").read_text())
    params["lat"] = {**params.get("lat", {}), **overrides}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    load_params(folder / "params.yaml")  # a bad override fails here, naming the key
    return folder


def train_variant(folder: Path, threads: int) -> float:
    env = {**stage_env(str(ROOT)), "OMP_NUM_THREADS": str(threads)}
    began = time.perf_counter()
    done = subprocess.run(stage_commands(ROOT)["lat"].split(), cwd=folder, env=env)
    if done.returncode != 0:
        raise SystemExit(f"lat stage failed in {folder} (exit {done.returncode})")
    return time.perf_counter() - began


def measure(model_dir: Path, params_path: Path, attacks: list[str]) -> dict[str, float]:
    params = load_params(params_path)
    world = load_world(params_path.parent / "data/world")
    cfg = params.evaluate
    judge = make_judge(cfg.judge, cfg.judge_model, world["requests"])
    model, tokenizer = load_saved(model_dir, params.model.device, params.model.dtype)
    model.eval()
    metrics, _ = request_behaviour(model, tokenizer, world["requests"], cfg.split, judge, cfg.max_new_tokens,
                                   cfg.batch_size)
    suite = params.attacks.model_copy(update={"attacks": attacks})
    results = run_attack_suite(model, tokenizer, split_of(world["requests"], cfg.split), suite, judge,
                               support=split_of(world["requests"], "train"))
    return {**{k: metrics[k] for k in KEYS}, **asr_row(results)}


def table(results: dict[str, dict]) -> str:
    found = {k for row in results.values() for k in row if k not in ("lat", "seconds")}
    columns = [k for k in KEYS if k in found] + sorted(found - set(KEYS))
    lines = ["| model | lat overrides | " + " | ".join(columns) + " | LAT stage s |",
             "| --- | --- | " + " | ".join("---" for _ in columns) + " | --- |"]
    for name, row in results.items():
        cells = [f"{row[c]:.2f}" if c in row else "" for c in columns]
        overrides = json.dumps(row.get("lat", {})) if name != "rt" else ""
        seconds = f"{row['seconds']:.0f}" if "seconds" in row else ""
        lines.append(f"| {name} | {overrides} | " + " | ".join(cells) + f" | {seconds} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    args = parser.parse_args()
    apply_offline_env()
    sweep = load_sweep(args.sweep)
    torch.set_num_threads(sweep.threads)
    run = sweep.workdir.resolve()
    results: dict[str, dict] = {}
    cached = run / "sweep" / "rt.json"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(measure(run / "models/rt", run / "params.yaml", sweep.attacks)))
    results["rt"] = json.loads(cached.read_text())
    for name, overrides in sweep.variants.items():
        folder = prepare_variant(sweep, name, overrides)
        done = folder / "results.json"
        if not done.exists():
            seconds = train_variant(folder, sweep.threads)
            row = measure(folder / "models/rt-lat", folder / "params.yaml", sweep.attacks)
            done.write_text(json.dumps({**row, "lat": overrides, "seconds": seconds}))
        results[name] = json.loads(done.read_text())
        print(f"[lat_sweep] {name}: " + ", ".join(f"{k}={v:.2f}" for k, v in results[name].items()
                                                  if isinstance(v, float)), flush=True)
    sweep.out.parent.mkdir(parents=True, exist_ok=True)
    sweep.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    sweep.out.with_suffix(".md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
