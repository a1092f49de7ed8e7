"""The benchmarks' FLOP count and MFU (exact, on known model sizes and against torch's FLOP counter) and the GPU
check's smoke path on the CPU (benchmarks/lat_step.py, benchmarks/gpu_check.py), and the GPU stage runner's scheduling
(benchmarks/gpu_stages.py) on stand-in commands."""

import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_stages
from lat_step import (PRESETS, FlopModel, lat_step_flops, llama_config, mfu, peak_tflops_of,  # noqa: E402
                      random_batches, run_preset, sft_step_flops, shrink)

from latlab.config import LATConfig  # noqa: E402
from latlab.training.lat import defence_loss, latent_adversary  # noqa: E402
from tests.settings import make


def _parameters(preset_name: str) -> int:
    """Parameter count of a preset from its FLOP model: blocks + (tied) embedding + RMSNorm weights."""
    preset = PRESETS[preset_name]
    fm = FlopModel.from_config(llama_config(preset))
    return fm.n_layers * fm.block_params + fm.head_params + (2 * preset.layers + 1) * preset.hidden


def test_presets_have_the_published_parameter_counts():
    assert _parameters("llama-1b") == 1_235_814_400  # Llama-3.2-1B
    assert _parameters("smollm2") == 134_515_008  # SmolLM2-135M (docs/real_models.md)
    fm = FlopModel.from_config(llama_config(PRESETS["llama-1b"]))
    assert (fm.block_params, fm.head_params, fm.attn_width) == (60_817_408, 262_668_288, 2048)


def test_flop_formulas_on_hand_counted_numbers():
    fm = FlopModel(block_params=10, head_params=5, n_layers=2, attn_width=4)
    # per token: 2 blocks x (2*10 + 4*4*3) + 2*5 = 146; 3 tokens
    assert fm.forward(tokens=3, seq=3, blocks=2) == 438
    assert fm.backward(3, 3, blocks=2, weight_grads=True) == 3 * (2 * (40 + 96) + 20)
    assert fm.backward(3, 3, blocks=1, weight_grads=False) == 3 * (20 + 96 + 10)
    # SFT = 3 forwards = PaLM's 6N per token + 12 * layers * A * S per token
    assert sft_step_flops(fm, batch=1, seq=3) == 3 * 438 == 6 * (2 * 10 + 5) * 3 + 12 * 2 * 4 * 3 * 3
    assert mfu(989e12, 2.0, 989.0) == 0.5
    assert mfu(1.0, 1.0, None) is None


def test_lat_step_flops_on_a_1b_model():
    fm = FlopModel.from_config(llama_config(PRESETS["llama-1b"]))
    shape = (8, 512)
    cached, uncached = (lat_step_flops(fm, make(LATConfig, layers=[8], prefix_cache=c, retain=0.0), shape, shape)
                        for c in (True, False))
    tokens, upper = 8 * 512, 16 - 8 - 1
    inner = fm.forward(tokens, 512, upper) + fm.backward(tokens, 512, upper, False)
    defence = 2 * sft_step_flops(fm, 8, 512)
    assert cached == 2 * fm.forward(tokens, 512, 16) + 2 * 16 * inner + defence
    assert uncached - cached == 2 * 16 * (fm.forward(tokens, 512, 16) - fm.forward(tokens, 512, upper)) \
        - 2 * fm.forward(tokens, 512, 16)
    with pytest.raises(ValueError, match="retain"):
        lat_step_flops(fm, make(LATConfig, layers=[8]), shape, shape)


@pytest.mark.parametrize("name", ["H200", "NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "GeForce"])
def test_peak_of_known_devices(name):
    expected = {"NVIDIA H100 PCIe": 756.0, "GeForce": None}.get(name, 989.0)
    assert peak_tflops_of(name) == expected


def test_flop_count_matches_torch_flop_counter_op_for_op():
    """The closed forms equal the matmul FLOPs torch counts on a real SFT step and LAT steps (eager attention, so
    that every attention matmul is an op the counter sees; GQA and tied embeddings as in the presets)."""
    preset = shrink(PRESETS["llama-1b"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(preset, attn_implementation="eager"))
    fm = FlopModel.from_config(model.config)
    contrast, sft = random_batches(preset)
    shape = tuple(contrast.undesired["input_ids"].shape)

    def counted(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    assert counted(lambda: model(**sft).loss.backward()) == sft_step_flops(fm, *shape)
    for cached in (True, False):
        cfg = make(LATConfig, layers=[preset.layers // 2], inner_steps=2, prefix_cache=cached, retain=0.0)

        def lat_step():
            deltas, masks, _ = latent_adversary(model, cfg).attack(contrast)
            defence_loss(model, contrast, deltas, masks, cfg)[0].backward()
        assert counted(lat_step) == lat_step_flops(fm, cfg, shape, shape), f"prefix_cache={cached}"


def test_toy_preset_keeps_the_cpu_results_format():
    result = run_preset("toy", shrink(PRESETS["toy"]), torch.device("cpu"), torch.float32, repeats=1, inner_steps=2)
    for key in ("device", "machine", "torch_threads", "model", "batch", "inner_steps", "first_perturbed_block",
                "seconds_per_step", "lat_over_sft", "cached_over_uncached", "goal_cached_over_uncached"):
        assert key in result
    assert set(result["seconds_per_step"]) == {"sft", "lat_uncached", "lat_cached"}
    assert result["mfu"] == {"sft": None, "lat_uncached": None, "lat_cached": None}  # no peak known for a CPU


def test_gpu_check_smoke_writes_every_item(tmp_path):
    out = tmp_path / "gpu_check.json"
    check = gpu_check.run_check(gpu_check.parse_args(["--smoke", "--device", "cpu", "--peak-tflops", "1",
                                                      "--out", str(out)]))
    saved = json.loads(out.read_text())
    assert saved["completed"] and saved["items"].keys() == gpu_check.ITEMS.keys()
    assert {name: e["status"] for name, e in check["items"].items()} == dict.fromkeys(gpu_check.ITEMS, "ok")
    for preset in ("smollm2", "llama-1b"):
        summary = saved["summary"][f"lat_step.{preset}"]
        assert all(v > 0 for v in summary["tokens_per_s"].values()) and len(summary["mfu"]) == 3
        assert all(0 < v < 1 for v in summary["mfu"].values())
    per_device = json.loads((tmp_path / "lat_step_cpu.json").read_text())
    assert set(per_device["presets"]) == {"smollm2", "llama-1b"}
    assert saved["items"]["eap.smollm2"]["result"]["n_edges"] > 0


def test_gpu_check_records_a_timeout_and_still_writes(tmp_path):
    out = tmp_path / "gpu_check.json"
    # a child process gets 0.12 s: it is killed before torch is even imported
    check = gpu_check.run_check(gpu_check.parse_args(["--smoke", "--isolate", "--device", "cpu", "--items", "env",
                                                      "lat_step.smollm2", "--limit-scale", "0.002",
                                                      "--out", str(out)]))
    assert check["items"]["env"]["status"] == "timeout"
    assert "lat_step.smollm2" not in check["items"]  # no device: the rest is skipped
    assert json.loads(out.read_text())["completed"]


def test_gpu_stage_runner_skips_what_follows_a_failure_and_runs_what_is_independent(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_stages, "LOG_DIR", tmp_path)
    ok, fail = 'python -c "pass"', 'python -c "raise SystemExit(3)"'
    stages = {"a": ([], ok), "gate": (["a"], fail), "b": (["a", "gate"], ok), "c": (["b"], ok), "d": (["a"], fail),
              "e": (["d"], ok), "f": (["a"], ok), "slow": (["a"], 'python -c "import time; time.sleep(30)"')}
    dag = {"order": list(stages), "stages": {s: {"parents": p, "cmd": c} for s, (p, c) in stages.items()}}
    assert gpu_stages.needed(dag, ["c"]) == ["a", "gate", "b", "c"]
    assert gpu_stages.heights(dag)["a"] == 4  # a -> gate -> b -> c
    results = gpu_stages.run(dag, list(stages), exclude={"gate"}, budget=5.0, jobs=3)
    exits = {s: r["exit"] for s, r in results.items()}
    assert exits == {"a": 0, "gate": "excluded", "b": 0, "c": 0, "d": 3, "e": "skipped", "f": 0, "slow": "timeout"}
    assert results["e"]["why"] == "a parent did not finish"
    assert results["d"]["log_tail"] == [] and results["slow"]["seconds"] < 6  # stopped at the budget, not at 30 s
