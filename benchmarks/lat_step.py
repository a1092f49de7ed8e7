"""Benchmark: time of one targeted-LAT step vs one SFT step, and the prefix-cached vs uncached LAT step with the
first perturbed block at L = n_layers / 2 (goal: cached <= 0.6x uncached; the FLOPs allow 0.66 on the toy, 0.78-0.79
on the SmolLM2 and 1B shapes: docs/real_models.md), with tokens/s and model FLOPs utilisation (MFU) per step. Also
reads the pipeline's compute metrics (metrics/lat.json, metrics/r2d2.json) when they exist to compare total training
compute (FLOP proxy).

    .venv/bin/python benchmarks/lat_step.py [--layers 8] [--hidden 128] [--repeats 5] [--device cpu]
    python benchmarks/lat_step.py --preset llama-1b --device cuda [--peak-tflops 989]

Presets (random init from a transformers LlamaConfig; nothing is downloaded):
- `toy` (default): the pipeline's toy Llama (8 blocks, d 128) on toy-world requests, as the pipeline trains it.
- `smollm2`: SmolLM2-135M's shape: 30 blocks, d 576, 9 heads / 3 KV heads, FFN 1536, vocab 49,152, tied embeddings.
- `llama-1b`: Llama-3.2-1B's shape: 16 blocks, d 2048, 32 heads / 8 KV heads, FFN 8192, vocab 128,256, tied.
The last two run on random token ids, batch 8 x (384 prompt + 128 completion) tokens, since their cost at GPU scale
depends on shapes only. On CUDA the steps run under bf16 autocast over fp32 master weights (`--dtype`).

Results: the CPU toy default writes benchmarks/results/lat_step.json (its historical format); any other device or
preset is merged, per preset, into benchmarks/results/lat_step_<device>.json.

Model FLOPs (what MFU divides by the peak). Per token and decoder block, a forward pass costs 2*P_block for the
matmuls (P_block = q, k, v, o, gate, up and down weights) plus 4*A*S for attention scores and values (A = query heads
x head dim, S = the padded sequence length, counted over all S keys as in PaLM's appendix B); the unembedding costs
2*P_head (vocab x d). A backward pass that also computes weight gradients costs twice its forward (4*P + 8*A*S); one
that only needs gradients with respect to the activations (weights frozen: `torch.autograd.grad` toward δ) costs
2*P + 8*A*S (attention has no weights to skip). Positions = batch x padded length, as the hardware runs them.
- SFT step: forward + weight backward through all n blocks and the head: 3x the forward = 6*N*T plus attention.
- LAT step (perturbed blocks ≥ L; LATConfig's flags decide which sequences take part): for each adversary sequence
  (harmful for `adv_toward`, refusal for `adv_away`) and each of the `inner_steps` PGD steps, a forward through
  all n blocks (uncached) or only the n - L - 1 blocks above L (prefix cache), then an activation-only backward
  through the n - L - 1 blocks above L and the head. With the prefix cache, each of the two sequences is first run
  once through the whole model without grad. Then the defender: forward + weight backward through the whole model
  on the refusal (`def_toward`) and the harmful sequence (`def_away`).
tests/test_benchmarks.py checks these counts op for op against torch's FlopCounterMode on a small eager model.
tokens/s counts the training positions one step consumes: batch x length for SFT, harmful + refusal for LAT.
"""

from __future__ import annotations

import latlab  # noqa: F401, I001  (first: applies src/latlab/offline.env before any third-party import)
import argparse
import contextlib
import dataclasses
import json
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from latlab.config import LATConfig, load_params
from latlab.data.examples import Example
from latlab.models.encoding import IGNORE, ContrastBatch, collate, collate_contrast, encode_all, to_device
from latlab.models.loading import build_toy_model, resolve_device
from latlab.training.lat import defence_loss, latent_adversary
from latlab.world.generator import generate_world
from latlab.world.tokenizer import build_tokenizer

RESULTS_DIR = Path(__file__).parent / "results"
RESULTS = RESULTS_DIR / "lat_step.json"

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (the sparsity figures halved). Checked in order, so the
# PCIe and NVL variants of the H100 come before the SXM default.
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
                    ("A100", 312.0))


@dataclasses.dataclass(frozen=True)
class Preset:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int | None  # None: the toy world's tokenizer and requests; else random token ids over this vocabulary
    tied: bool
    batch: int
    prompt_tokens: int = 0  # random-token presets only
    completion_tokens: int = 0


PRESETS = {
    "toy": Preset(layers=8, hidden=128, heads=4, kv_heads=4, ffn=384, vocab=None, tied=False, batch=16),
    "smollm2": Preset(layers=30, hidden=576, heads=9, kv_heads=3, ffn=1536, vocab=49152, tied=True, batch=8,
                      prompt_tokens=384, completion_tokens=128),
    "llama-1b": Preset(layers=16, hidden=2048, heads=32, kv_heads=8, ffn=8192, vocab=128256, tied=True, batch=8,
                       prompt_tokens=384, completion_tokens=128),
}


def shrink(preset: Preset) -> Preset:
    """A seconds-on-a-CPU stand-in of `preset` that keeps its kind (GQA, tied, data source) for smoke runs."""
    return dataclasses.replace(preset, layers=4, hidden=64, heads=4, kv_heads=2 if preset.kv_heads < preset.heads
                               else 4, ffn=128, vocab=None if preset.vocab is None else 512, batch=2,
                               prompt_tokens=12 if preset.prompt_tokens else 0,
                               completion_tokens=4 if preset.completion_tokens else 0)


def llama_config(preset: Preset, attn_implementation: str | None = None) -> LlamaConfig:
    """LlamaConfig of a random-token preset. max_position_embeddings only bounds the positions benchmarked (a
    large one costs memory in interp.patching's causal mask)."""
    return LlamaConfig(vocab_size=preset.vocab, hidden_size=preset.hidden, intermediate_size=preset.ffn,
                       num_hidden_layers=preset.layers, num_attention_heads=preset.heads,
                       num_key_value_heads=preset.kv_heads, max_position_embeddings=2048,
                       tie_word_embeddings=preset.tied, attn_implementation=attn_implementation)


def build_preset_model(preset: Preset, device: torch.device, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: a 1B model's random init on the CPU takes minutes
        return LlamaForCausalLM(llama_config(preset))


# --- model FLOPs (see the module docstring) ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FlopModel:
    block_params: int  # matmul weights of one decoder block
    head_params: int  # unembedding weights
    n_layers: int
    attn_width: int  # query heads x head dim

    @classmethod
    def from_config(cls, config) -> FlopModel:
        d, heads = config.hidden_size, config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or d // heads
        q = heads * head_dim
        kv = config.num_key_value_heads * head_dim
        block = d * q + 2 * d * kv + q * d + 3 * d * config.intermediate_size
        return cls(block, config.vocab_size * d, config.num_hidden_layers, q)

    def forward(self, tokens: int, seq: int, blocks: int) -> int:
        """A forward pass over `tokens` positions of length-`seq` sequences through `blocks` blocks and the head."""
        return tokens * (blocks * (2 * self.block_params + 4 * self.attn_width * seq) + 2 * self.head_params)

    def backward(self, tokens: int, seq: int, blocks: int, weight_grads: bool) -> int:
        """The backward from the logits down through the top `blocks` blocks."""
        weights = 4 if weight_grads else 2
        return tokens * (blocks * (weights * self.block_params + 8 * self.attn_width * seq)
                         + weights * self.head_params)


def sft_step_flops(fm: FlopModel, batch: int, seq: int) -> int:
    tokens = batch * seq
    return fm.forward(tokens, seq, fm.n_layers) + fm.backward(tokens, seq, fm.n_layers, weight_grads=True)


def lat_step_flops(fm: FlopModel, cfg: LATConfig, harmful: tuple[int, int], refusal: tuple[int, int]) -> int:
    """Model FLOPs of one `LatentAdversary.attack` + `defence_loss` + backward; harmful/refusal = (batch, length)
    of the ContrastBatch's undesired/desired sides."""
    if cfg.retain:
        raise ValueError("lat_step_flops leaves out the retain batch: benchmark with retain=0")
    lowest = -1 if cfg.perturb_embeddings else min(cfg.layers)
    upper = fm.n_layers - lowest - 1  # blocks between the lowest δ and the logits
    cached = cfg.prefix_cache and lowest >= 0
    if cfg.adversary == "targeted":
        adversary = [harmful] * (cfg.adv_toward > 0) + [refusal] * (cfg.adv_away > 0)
    else:
        adversary = [refusal]
    total = 0
    if cached:  # LatentAdversary.attack caches both sequences, with a full forward each
        total += sum(fm.forward(b * s, s, fm.n_layers) for b, s in (harmful, refusal))
    for b, s in adversary:
        inner = fm.forward(b * s, s, upper if cached else fm.n_layers) + fm.backward(b * s, s, upper, False)
        total += cfg.inner_steps * inner
    for b, s in [refusal] * (cfg.def_toward > 0) + [harmful] * (cfg.def_away > 0):
        total += fm.forward(b * s, s, fm.n_layers) + fm.backward(b * s, s, fm.n_layers, True)
    return total


def peak_tflops_of(device_name: str) -> float | None:
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in device_name), None)


def peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 peak of a known CUDA device; None elsewhere (then MFU needs --peak-tflops)."""
    return peak_tflops_of(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    return None if peak is None else flops / seconds / (peak * 1e12)


def device_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# --- data ---------------------------------------------------------------------------------------------------------

def world_batches(preset: Preset) -> tuple[LlamaForCausalLM, ContrastBatch, dict]:
    """The toy model with harmful requests of the toy world: (model, their ContrastBatch of harmful completion and
    refusal, SFT batch on the refusals)."""
    params = load_params()
    world = generate_world(params.world, 0)
    tokenizer = build_tokenizer(r[f] for recs in world.values() for r in recs
                                for f in ("prompt", "completion", "compliance", "refusal") if f in r)
    arch = params.model.toy.updated(hidden_size=preset.hidden, num_layers=preset.layers, num_heads=preset.heads,
                                    intermediate_size=preset.ffn)
    model = build_toy_model(arch, tokenizer, 0)
    harmful = [r for r in world["requests"] if r["harmful"]][: preset.batch]
    refusals = encode_all(tokenizer, [Example(r["prompt"], r["refusal"]) for r in harmful])
    contrast = collate_contrast(tokenizer, encode_all(tokenizer, [Example(r["prompt"], r["compliance"])
                                                                  for r in harmful]), refusals)
    return model, contrast, collate(refusals, tokenizer.pad_token_id)


def random_batches(preset: Preset, seed: int = 0) -> tuple[ContrastBatch, dict]:
    """A random-token ContrastBatch of fixed length (no padding): the two sequences share their prompt."""
    gen = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(3, preset.vocab, (preset.batch, n), generator=gen).tolist()  # noqa: E731
    prompts, ignore = ids(preset.prompt_tokens), [IGNORE] * preset.prompt_tokens
    encoded = {name: [(p + c, ignore + c) for p, c in zip(prompts, ids(preset.completion_tokens))]
               for name in ("harmful", "refusal")}
    harmful, refusal = collate(encoded["harmful"], 0), collate(encoded["refusal"], 0)
    return ContrastBatch(harmful, refusal, harmful["input_ids"].shape[1]), refusal


# --- timing -------------------------------------------------------------------------------------------------------

def _timed(fn, repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()  # CUDA runs asynchronously: stop the clock when the GPU is done
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_preset(name: str, preset: Preset, device: torch.device, dtype: torch.dtype, repeats: int,
               inner_steps: int = 16, peak: float | None = None, report: Callable[[dict], None] | None = None) -> dict:
    """Time SFT, uncached and cached LAT steps of `preset`; a CUDA out-of-memory in one measurement is recorded
    and the next one still runs. `report` gets the result so far after each measurement."""
    torch.manual_seed(0)
    if preset.vocab is None:
        model, contrast, sft_batch = world_batches(preset)
        model = model.to(device)
    else:
        model = build_preset_model(preset, device)
        contrast, sft_batch = random_batches(preset)
    contrast = contrast.to(device)
    sft_batch = to_device(sft_batch, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    first = preset.layers // 2
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # bf16 autocast over fp32 master weights: LatentAdversary allocates δ in fp32, which autocast reconciles
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype != torch.float32 else contextlib.nullcontext
    fm = FlopModel.from_config(model.config)
    shapes = {"harmful": tuple(contrast.undesired["input_ids"].shape),
              "refusal": tuple(contrast.desired["input_ids"].shape)}

    def sft_step():
        with autocast():
            loss = model(**sft_batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def lat_cfg(cached: bool) -> LATConfig:
        return load_params().lat.updated(layers=[first], inner_steps=inner_steps, prefix_cache=cached, retain=0.0)

    def lat_step(cached: bool):
        cfg = lat_cfg(cached)
        adversary = latent_adversary(model, cfg)

        def step():
            with autocast():
                deltas, masks, _ = adversary.attack(contrast)
                loss, _ = defence_loss(model, contrast, deltas, masks, cfg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return step

    lat_tokens = sum(b * s for b, s in shapes.values())
    steps = {
        "sft": (sft_step, sft_step_flops(fm, *sft_batch["input_ids"].shape), sft_batch["input_ids"].numel()),
        "lat_uncached": (lat_step(False), lat_step_flops(fm, lat_cfg(False), shapes["harmful"], shapes["refusal"]),
                         lat_tokens),
        "lat_cached": (lat_step(True), lat_step_flops(fm, lat_cfg(True), shapes["harmful"], shapes["refusal"]),
                       lat_tokens),
    }
    result = {
        "preset": name, "device": str(device), "machine": platform.processor() or platform.machine(),
        "device_name": torch.cuda.get_device_name(device) if cuda else None, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "dtype": str(dtype).removeprefix("torch."),
        "model": {"layers": preset.layers, "hidden": preset.hidden, "heads": preset.heads,
                  "kv_heads": preset.kv_heads, "ffn": preset.ffn, "vocab": model.config.vocab_size,
                  "tied": preset.tied, "parameters": sum(p.numel() for p in model.parameters())},
        "batch": preset.batch, "seq": {k: s for k, (_, s) in shapes.items()}, "inner_steps": inner_steps,
        "first_perturbed_block": first, "repeats": repeats, "peak_tflops": peak,
        "seconds_per_step": {}, "tokens_per_step": {}, "tokens_per_s": {}, "model_tflop_per_step": {},
        "achieved_tflops": {}, "mfu": {},
    }
    for key, (fn, flops, tokens) in steps.items():
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        try:
            seconds = _timed(fn, repeats, sync)
        except torch.cuda.OutOfMemoryError as err:
            result.setdefault("errors", {})[key] = f"OutOfMemoryError: {str(err).splitlines()[0]}"
        else:
            result["seconds_per_step"][key] = seconds
            result["tokens_per_step"][key] = tokens
            result["tokens_per_s"][key] = tokens / seconds
            result["model_tflop_per_step"][key] = flops / 1e12
            result["achieved_tflops"][key] = flops / seconds / 1e12
            result["mfu"][key] = mfu(flops, seconds, peak)
        if cuda:
            result.setdefault("peak_memory_gib", {})[key] = torch.cuda.max_memory_allocated(device) / 2**30
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        mfu_text = "" if result["mfu"].get(key) is None else f", MFU {result['mfu'][key]:.3f}"
        print(f"[{name}] {key}: " + (result["errors"][key] if key not in result["seconds_per_step"] else
              f"{result['seconds_per_step'][key]:.4f} s/step, {result['tokens_per_s'][key]:,.0f} tokens/s, "
              f"{result['achieved_tflops'][key]:.3g} TFLOP/s{mfu_text}"), flush=True)
        if report:
            report(result)
    sec = result["seconds_per_step"]
    if "sft" in sec and "lat_uncached" in sec:
        result["lat_over_sft"] = sec["lat_uncached"] / sec["sft"]
    if "lat_cached" in sec and "lat_uncached" in sec:
        result["cached_over_uncached"] = sec["lat_cached"] / sec["lat_uncached"]
    result["goal_cached_over_uncached"] = 0.6
    return result


def save_device_results(result: dict, path: Path) -> None:
    """Merge one preset's result into a per-device file: {"presets": {name: result}}."""
    saved = json.loads(path.read_text()) if path.exists() else {"presets": {}}
    saved["presets"][result["preset"]] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=2) + "\n")


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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    return DTYPES["bfloat16" if device.type == "cuda" else "float32"] if name == "auto" else DTYPES[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="toy")
    parser.add_argument("--layers", type=int, help="override the preset's block count")
    parser.add_argument("--hidden", type=int, help="override the preset's width (toy: FFN = 3 x width)")
    parser.add_argument("--batch", type=int, help="override the preset's batch size")
    parser.add_argument("--inner-steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="autocast dtype; auto = bfloat16 on CUDA, float32 elsewhere")
    parser.add_argument("--peak-tflops", type=float, help="peak for MFU (default: known CUDA devices' dense bf16)")
    parser.add_argument("--out", type=Path, help="result file (default: see the module docstring)")
    parser.add_argument("--metrics", default="metrics", help="pipeline metrics folder with lat.json and r2d2.json")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    if args.layers:
        preset = dataclasses.replace(preset, layers=args.layers)
    if args.hidden:
        preset = dataclasses.replace(preset, hidden=args.hidden,
                                     ffn=3 * args.hidden if args.preset == "toy" else preset.ffn)
    if args.batch:
        preset = dataclasses.replace(preset, batch=args.batch)
    device = resolve_device(args.device)
    peak = args.peak_tflops or peak_tflops(device)
    result = run_preset(args.preset, preset, device, resolve_dtype(args.dtype, device), args.repeats,
                        args.inner_steps, peak)
    if args.out is None and device.type == "cpu" and args.preset == "toy":
        result["pipeline_training_compute"] = pipeline_compute(Path(args.metrics))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    out = args.out or RESULTS_DIR / f"lat_step_{device_slug(device)}.json"
    save_device_results(result, out)
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
