"""benchmarks/verdict_noise.py: the noise-aware unlearning verdict (a candidate rule, stop 43) on synthetic summaries."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from verdict_noise import interval_rule, newcombe_lower, noise_aware

from latlab.evals.unlearning import KNOWLEDGE_KEYS

N = dict.fromkeys(KNOWLEDGE_KEYS, 96)


def _summary(original: dict, oracle: dict, models: dict) -> dict:
    return {m: {"original": original, "oracle": oracle, "values": v} for m, v in models.items()}


def test_newcombe_lower_separates_noise_from_signal():
    # 0.573 vs 0.448 on 96 items each (stop 43's slow-kind run): the interval of the difference includes 0
    assert newcombe_lower(55 / 96, 96, 43 / 96, 96) < 0
    assert newcombe_lower(0.20, 96, 0.0, 96) > 0
    assert newcombe_lower(0.5, 96, 0.5, 96) < 0
    assert newcombe_lower(0.9, 1000, 0.5, 1000) == pytest.approx(0.4 - 0.04, abs=0.01)


def test_a_measure_at_chance_cannot_call_a_model_suppressed():
    chance = {k: 0.5 for k in KNOWLEDGE_KEYS}
    original = chance | {"qa.ab_acc": 0.573, "qa.free_recall": 0.99}
    oracle = chance | {"qa.ab_acc": 0.448, "qa.free_recall": 0.0}
    models = {"at_chance": chance | {"qa.ab_acc": 0.60, "qa.free_recall": 0.0},
              "recalls": chance | {"qa.ab_acc": 0.45, "qa.free_recall": 0.30},
              "recalls_a_little": chance | {"qa.ab_acc": 0.45, "qa.free_recall": 0.08}}
    out = noise_aware(_summary(original, oracle, models), N, tolerance=0.10)
    assert out["informative"] == ["qa.free_recall"]
    assert out["models"]["at_chance"] == {"label": "removed", "above_oracle": []}
    assert out["models"]["recalls"] == {"label": "suppressed", "above_oracle": ["qa.free_recall"]}
    assert out["models"]["recalls_a_little"]["label"] == "removed"  # within the tolerance


def test_the_interval_rule_says_inconclusive_where_one_run_cannot_decide():
    chance = {k: 0.5 for k in KNOWLEDGE_KEYS}
    original = chance | {"qa.free_recall": 0.99}
    oracle = chance | {"qa.free_recall": 0.0}
    models = {"kept": chance | {"qa.free_recall": 0.60},  # interval of the distance well above 0.1
              "gone": chance | {"qa.free_recall": 0.0},  # 0/96 vs 0/96: upper end ~0.05
              "near": chance | {"qa.free_recall": 0.10}}  # 0.10 +- ~0.07 straddles the tolerance
    out = interval_rule(_summary(original, oracle, models), N, tolerance=0.10)
    assert out["informative"] == ["qa.free_recall"]  # a measure at chance for the original does not vote
    assert {m: r["label"] for m, r in out["models"].items()} == {
        "kept": "suppressed", "gone": "removed", "near": "inconclusive"}
