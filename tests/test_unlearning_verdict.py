"""The unlearning verdict over seeds (latlab.report.unlearning_verdict) on synthetic per-seed results, and the
committed study's verdict file rebuilt from the committed per-seed metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from latlab.report.unlearning_verdict import unlearning_verdicts, verdicts_markdown

ROOT = Path(__file__).resolve().parents[1]
STATS = {"samples": 2000, "confidence": 0.95, "seed": 0, "min_seeds": 3}
KEYS = ("qa.free_recall", "qa.ab_acc")


def per_seed(models: dict[str, list[tuple[float, float]]]) -> dict[int, dict]:
    """{seed: metrics tree} from {model: [(free recall, A/B accuracy) per seed]}."""
    seeds = len(next(iter(models.values())))
    return {s: {"unlearning_eval.json": {"results": {m: dict(zip(KEYS, values[s])) for m, values in models.items()}}}
            for s in range(seeds)}


ORIGINAL = [(0.95, 0.60), (0.97, 0.55), (0.99, 0.62)]  # free recall far above the oracle; A/B near it
ORACLE = [(0.00, 0.55), (0.02, 0.58), (0.01, 0.52)]


def verdicts(**methods):
    result = unlearning_verdicts(per_seed({"original": ORIGINAL, "oracle": ORACLE, **methods}), 0.1, **STATS,
                                 keys=KEYS)
    return result, {m: row["verdict"] for m, row in result["methods"].items()}


def test_separated_intervals_give_removed_and_suppressed():
    result, labels = verdicts(gone=[(0.0, 0.9), (0.03, 0.9), (0.02, 0.9)],  # A/B far above: does not vote
                              kept=[(0.40, 0.5), (0.55, 0.5), (0.35, 0.5)])
    assert result["informative"] == ["qa.free_recall"]  # the original is at the oracle on A/B
    assert labels == {"gone": "removed", "kept": "suppressed"}
    assert result["methods"]["kept"]["measures"]["qa.free_recall"]["mean"] == pytest.approx((0.40 + 0.53 + 0.34) / 3)  # paired distances


def test_seeds_on_both_sides_of_the_tolerance_are_inconclusive():
    _, labels = verdicts(split=[(0.0, 0.5), (0.30, 0.5), (0.05, 0.5)])
    assert labels == {"split": "inconclusive"}


def test_fewer_seeds_than_min_seeds_is_no_verdict():
    models = {"original": ORIGINAL[:2], "oracle": ORACLE[:2], "kept": [(0.9, 0.5), (0.9, 0.5)]}
    result = unlearning_verdicts(per_seed(models), 0.1, **STATS, keys=KEYS)
    assert result["informative"] == [] and result["methods"]["kept"]["verdict"] == "inconclusive"
    assert result["methods"]["kept"]["reason"] == "2 seed(s): fewer than 3 is no conclusion"


def test_no_oracle_no_verdict_and_the_table_marks_each_measure():
    assert unlearning_verdicts(per_seed({"original": ORIGINAL, "ga": ORIGINAL}), 0.1, **STATS, keys=KEYS) == {}
    result, _ = verdicts(kept=[(0.40, 0.5), (0.55, 0.5), (0.35, 0.5)], split=[(0.0, 0.5), (0.30, 0.5), (0.05, 0.5)])
    table = verdicts_markdown(result, 0.95)
    assert "| kept | **suppressed** | +0.423 [+0.340, +0.530] ▲ |" in table
    assert "| split | **inconclusive** | +0.107 [+0.000, +0.280] ? |" in table
    assert "removed: 0 of 2, suppressed: 1 of 2, inconclusive: 1 of 2" in table


def test_committed_verdicts_follow_from_the_committed_seed_metrics():
    from flows.study import STUDY_DIR, unlearning_tolerance
    from latlab.config import StudyConfig
    from latlab.report.seed_summary import load_metrics_tree

    committed = json.loads((ROOT / STUDY_DIR / "unlearning_verdict.json").read_text())
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg = StudyConfig.model_validate(raw["study"])
    seeds = {s: load_metrics_tree(ROOT / STUDY_DIR / f"seed_{s}") for s in committed["seeds"]}
    rebuilt = unlearning_verdicts(seeds, unlearning_tolerance(raw), samples=cfg.bootstrap_samples,
                                  confidence=cfg.confidence, seed=cfg.bootstrap_seed, min_seeds=cfg.min_seeds)
    assert {m: r["verdict"] for m, r in rebuilt["methods"].items()} == {
        m: r["verdict"] for m, r in committed["methods"].items()}, "rerun `python -m flows.study --collect-only`"
    assert rebuilt["informative"] == committed["informative"]
