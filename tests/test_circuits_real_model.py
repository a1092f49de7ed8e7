"""scripts/circuits_real_model.py's core on a tiny random Llama with a word-level tokenizer over the capitals task
(no download): metrics.json's keys, finite CPR / CMD, a Jaccard in [0, 1], the report and the plot."""

from __future__ import annotations

import json
import math

from latlab.config import ToyArchitecture
from latlab.models.loading import build_toy_model
from latlab.world.tokenizer import build_tokenizer
from scripts.circuits_real_model import TASK, load_items, run
from tests.settings import make


def test_circuits_real_model_core(tmp_path):
    items = load_items(TASK)
    assert len(items) >= 24 and {"subject", "prompt", "answer"} <= set(items[0])
    tokenizer = build_tokenizer(t for item in items for t in (item["prompt"], item["answer"]))
    arch = make(ToyArchitecture, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_positions=16)
    model = build_toy_model(arch, tokenizer, seed=0)
    # a random model gets no prompt right: pair every candidate (select=False)
    metrics = run(model, tokenizer, items, "capitals", [0.01, 0.1, 0.5], top_k=5, bootstrap_samples=3, seed=0,
                  n_pairs=6, out=tmp_path, select=False, model_name="tiny")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in ("accuracy", "accuracy_n", "candidates", "circuit_pairs", "n_edges", "cpr", "cmd", "curve",
                "bootstrap_jaccard", "seconds", "pairs", "top_k", "edge_fractions", "bootstrap_samples"):
        assert key in saved, key
    assert saved["pairs"] == saved["circuit_pairs"]["n"] == 6
    assert saved["accuracy_n"] == saved["candidates"]["n"] > 6 and 0 <= saved["accuracy"] <= 1
    assert math.isfinite(saved["cpr"]) and math.isfinite(saved["cmd"])
    assert saved["curve"]["fraction"] == [0.0, 0.01, 0.1, 0.5, 1.0] and saved["curve"]["edges"][-1] == saved["n_edges"]
    jaccard = saved["bootstrap_jaccard"]
    assert jaccard["samples"] == 3
    assert all(0 <= jaccard[k] <= 1 for k in ("mean", "ci_low", "ci_high"))
    assert len(saved["top_edges"]) == 5 and saved["patched_positions"] == [3]  # "The capital of <country> is"
    assert "CPR" in (tmp_path / "README.md").read_text()
    assert (tmp_path / "faithfulness_curve.png").stat().st_size > 0
