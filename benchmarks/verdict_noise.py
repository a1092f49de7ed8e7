"""How much of a single run's unlearning verdict is sampling noise (stop 43, issues 14 and 19): the committed rule of
`latlab.evals.unlearning.summarise` (a knowledge measure above oracle + tolerance -> "suppressed") beside a
noise-aware one, on `unlearning_eval.json` files of runs on the same world.

Noise-aware rule (not adopted; a candidate for the stage): a measure votes only where the original and the oracle
differ beyond noise (the lower end of the Newcombe 95% interval of original - oracle above 0), and a model is above
the oracle on it only where its difference exceeds the tolerance and that difference's interval excludes 0.
Interval rule (stop 44; not adopted either): the seeds study's three-way rule (latlab.report.unlearning_verdict:
`classify`) with the single run's Newcombe interval of model - oracle in place of the interval over seeds: a measure
votes where the original's interval lies above the tolerance; suppressed when some model interval lies above it,
removed when all lie below it, otherwise inconclusive. Each
measure is a rate over N items, N counted from the world as the stage measures it (forget test rows; the held-out
facts' rows for relearning; the test facts of the probe's grouped split, all splits' A/B rows). The probe's
`latent.max_acc` is a maximum over blocks, so its interval is optimistic.

    python benchmarks/verdict_noise.py data/world LABEL=metrics/unlearning_eval.json LABEL=other.json ...

Prints the verdicts per model under both rules and writes benchmarks/results/verdict_noise.json.
"""

from __future__ import annotations

import inspect
import json
import math
import random
import sys
from pathlib import Path

from latlab.config import load_params
from latlab.data.records import load_world
from latlab.evals.unlearning import (
    KNOWLEDGE_KEYS,
    _rows,
    grouped_probe_accuracy,
    relearning_split,
)
from latlab.report.stats import wilson_interval
from latlab.report.unlearning_verdict import ABOVE, UNCLEAR, WITHIN, classify

ROOT = Path(__file__).resolve().parents[1]
CONFIDENCE = 0.95


def newcombe_interval(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float]:
    """Newcombe's hybrid score interval (from two Wilson intervals) of the difference p1 - p2."""
    l1, u1 = wilson_interval(p1, n1, CONFIDENCE)
    l2, u2 = wilson_interval(p2, n2, CONFIDENCE)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def newcombe_lower(p1: float, n1: int, p2: float, n2: int) -> float:
    """Lower end of `newcombe_interval`."""
    return newcombe_interval(p1, n1, p2, n2)[0]


def sample_sizes(world: dict, cfg) -> dict[str, int]:
    """N behind each knowledge measure of `unlearning_eval` (cfg: params' unlearning_eval section)."""
    def rows(fmt: str) -> list[dict]:
        return _rows(world, cfg.domain, cfg.split, fmt)  # the rows the stage's measures read
    free = len(rows("free"))
    held = set(relearning_split(world, cfg.domain, cfg.relearn_heldout, cfg.seed)[1])
    ab_all = [r for r in world["facts"] if r["domain"] == cfg.domain and r["format"] == "ab"]
    # the test facts of grouped_probe_accuracy's split (its default test fraction, the stage's seed), drawn as it
    # draws them: the function returns only the accuracy, and it is a stage dependency (changing it means a rerun)
    fraction = inspect.signature(grouped_probe_accuracy).parameters["test_fraction"].default
    names = sorted({r["fact_id"] for r in ab_all})
    random.Random(cfg.seed).shuffle(names)
    probe_test = set(names[: max(1, round(len(names) * fraction))])
    return {"qa.ab_acc": len(rows("ab")), "qa.free_recall": free, "extract.best_of": free,
            "in_context.free_recall": free,
            "relearn.free_recall": sum(r["fact_id"] in held for r in rows("free")),
            "latent.max_acc": sum(r["fact_id"] in probe_test for r in ab_all)}


def noise_aware(summary: dict, n: dict[str, int], tolerance: float) -> dict[str, dict]:
    """Per model: the measures above the oracle under the noise-aware rule, and the label."""
    first = next(iter(summary.values()))
    original, oracle = first["original"], first["oracle"]
    informative = [k for k in KNOWLEDGE_KEYS if newcombe_lower(original[k], n[k], oracle[k], n[k]) > 0]
    out = {}
    for model, row in summary.items():
        above = [k for k in informative if row["values"][k] - oracle[k] > tolerance
                 and newcombe_lower(row["values"][k], n[k], oracle[k], n[k]) > 0]
        out[model] = {"label": "suppressed" if above else "removed", "above_oracle": above}
    return {"informative": informative, "models": out}


def interval_rule(summary: dict, n: dict[str, int], tolerance: float) -> dict[str, dict]:
    """Per model: the seeds study's three-way verdict (`classify`) on one run's Newcombe intervals."""
    def status(p1: float, p2: float, size: int) -> str:
        low, high = newcombe_interval(p1, size, p2, size)
        return ABOVE if low > tolerance else WITHIN if high < tolerance else UNCLEAR

    first = next(iter(summary.values()))
    original, oracle = first["original"], first["oracle"]
    informative = [k for k in KNOWLEDGE_KEYS if status(original[k], oracle[k], n[k]) == ABOVE]
    out = {}
    for model, row in summary.items():
        statuses = {k: status(row["values"][k], oracle[k], n[k]) for k in informative}
        label, reason = classify(statuses, tolerance)
        out[model] = {"label": label, "reason": reason}
    return {"informative": informative, "models": out}


def main(argv: list[str]) -> None:
    world_dir, runs = argv[0], dict(arg.split("=", 1) for arg in argv[1:])
    cfg = load_params(ROOT / "params.yaml").unlearning_eval
    n = sample_sizes(load_world(Path(world_dir)), cfg)
    print("N per measure:", n)
    result = {"n": n, "tolerance": cfg.tolerance, "runs": {}}
    for label, path in runs.items():
        summary = json.loads(Path(path).read_text())["summary"]
        aware = noise_aware(summary, n, cfg.tolerance)
        three = interval_rule(summary, n, cfg.tolerance)
        result["runs"][label] = {"file": path, "committed_rule": {m: r["label"] for m, r in summary.items()},
                                 "noise_aware_rule": {m: r["label"] for m, r in aware["models"].items()},
                                 "noise_aware_above": {m: r["above_oracle"] for m, r in aware["models"].items()},
                                 "informative": aware["informative"],
                                 "interval_rule": {m: r["label"] for m, r in three["models"].items()},
                                 "interval_rule_reason": {m: r["reason"] for m, r in three["models"].items()},
                                 "interval_rule_informative": three["informative"]}
        print(f"{label}: informative {aware['informative']}; interval rule: {three['informative']}")
        for model, row in summary.items():
            print(f"  {model:14s} committed {row['label']:10s} {row['above_oracle']}  |  noise-aware "
                  f"{aware['models'][model]['label']:10s} {aware['models'][model]['above_oracle']}  |  interval "
                  f"{three['models'][model]['label']:12s} {three['models'][model]['reason']}")
    labels = list(runs)
    for rule in ("committed_rule", "noise_aware_rule", "interval_rule"):
        if len(labels) == 2:
            a, b = (result["runs"][x][rule] for x in labels)
            result[f"agree.{rule}"] = f"{sum(a[m] == b[m] for m in a)} of {len(a)}"
            print(f"{rule}: {labels[0]} and {labels[1]} agree on {result[f'agree.{rule}']} verdicts")
    (ROOT / "benchmarks" / "results" / "verdict_noise.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
