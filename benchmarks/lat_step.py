"""Benchmark: time of one targeted-LAT step vs one SFT step, and the prefix-cached vs uncached LAT step with the
first perturbed block at L = n_layers / 2 (goal: cached <= 0.6x uncached). Also reads the pipeline's compute
metrics (metrics/lat.json, metrics/r2d2.json) when they exist to compare total training compute (FLOP proxy).

    .venv/bin/python benchmarks/lat_step.py [--layers 8] [--hidden 128] [--repeats 5] [--device cpu]

Writes benchmarks/results/lat_step.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from latlab.config import LATConfig, ToyArchitecture, WorldConfig
from latlab.models.loading import build_toy_model
from latlab.training.examples import Example, collate, encode_all
from latlab.training.lat import LatentAdversary, collate_triples, defence_loss
from latlab.world.generator import generate_world
from latlab.world.tokenizer import build_tokenizer

RESULTS = Path(__file__).parent / "results" / "lat_step.json"


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pipeline_compute(metrics_dir: Path) -> dict:
    """Training compute of targeted LAT vs R2D2 from the pipeline's metrics files, as a FLOP proxy in units of the
    parameter count: 2 per forward token + 4 per backward token (the usual 6N-per-token rule split in two)."""
    compute = {}
    for stage in ("lat", "r2d2"):
        path = metrics_dir / f"{stage}.json"
        if path.exists():
            m = json.loads(path.read_text())
            compute[stage] = {"forward_tokens": m.get("compute.forward_tokens"),
                              "backward_tokens": m.get("compute.backward_tokens"),
                              "flops_over_params": 2 * m.get("compute.forward_tokens", 0)
                              + 4 * m.get("compute.backward_tokens", 0),
                              "wall_seconds": m.get("wall_seconds")}
    if "lat" in compute and "r2d2" in compute:
        compute["r2d2_over_lat_flops"] = compute["r2d2"]["flops_over_params"] / compute["lat"]["flops_over_params"]
        compute["goal_r2d2_over_lat"] = 10.0
    return compute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--inner-steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--metrics", default="metrics", help="pipeline metrics folder with lat.json and r2d2.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    world = generate_world(WorldConfig(), 0)
    tokenizer = build_tokenizer(r[f] for recs in world.values() for r in recs
                                for f in ("prompt", "completion", "compliance", "refusal") if f in r)
    arch = ToyArchitecture(hidden_size=args.hidden, num_layers=args.layers, num_heads=4,
                           intermediate_size=3 * args.hidden)
    model = build_toy_model(arch, tokenizer, 0).to(args.device)
    harmful = [r for r in world["requests"] if r["harmful"]][: args.batch]
    device_batch = lambda b: {k: v.to(args.device) for k, v in b.items()}  # noqa: E731
    triples = collate_triples(tokenizer, encode_all(tokenizer, [Example(r["prompt"], r["compliance"]) for r in harmful]),
                              encode_all(tokenizer, [Example(r["prompt"], r["refusal"]) for r in harmful]))
    triples.harmful, triples.refusal = device_batch(triples.harmful), device_batch(triples.refusal)
    sft_batch = device_batch(collate(encode_all(tokenizer, [Example(r["prompt"], r["refusal"]) for r in harmful]),
                                     tokenizer.pad_token_id))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    first = args.layers // 2

    def sft_step():
        loss = model(**sft_batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def lat_step(cached: bool):
        cfg = LATConfig(layers=[first], inner_steps=args.inner_steps, prefix_cache=cached, retain=0.0)
        adversary = LatentAdversary(model, cfg)

        def step():
            deltas, masks, _ = adversary.attack(triples)
            loss, _ = defence_loss(model, triples, deltas, masks, cfg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return step

    sft = _timed(sft_step, args.repeats)
    uncached = _timed(lat_step(False), args.repeats)
    cached = _timed(lat_step(True), args.repeats)
    result = {
        "device": args.device, "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "model": {"layers": args.layers, "hidden": args.hidden, "parameters": sum(p.numel() for p in model.parameters())},
        "batch": args.batch, "inner_steps": args.inner_steps, "first_perturbed_block": first,
        "seconds_per_step": {"sft": sft, "lat_uncached": uncached, "lat_cached": cached},
        "lat_over_sft": uncached / sft, "cached_over_uncached": cached / uncached, "goal_cached_over_uncached": 0.6,
    }
    result["pipeline_training_compute"] = pipeline_compute(Path(args.metrics))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
