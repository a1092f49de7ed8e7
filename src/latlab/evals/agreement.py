"""Two judges on the same verdicts: Cohen's kappa, raw agreement and the items they disagree on.

Cohen's kappa = (p_o - p_e) / (1 - p_e), with p_o the share of items both judges label alike and p_e the agreement
expected by chance from each judge's own label frequencies (over complied / refused / incoherent). It is undefined
(None here) when p_e = 1, i.e. both judges gave one and the same label to every item.
"""

from __future__ import annotations

from collections import Counter

from latlab.evals.judge import OUTCOMES


def cohen_kappa(first: list[str], second: list[str], categories: tuple[str, ...] = OUTCOMES) -> float | None:
    if len(first) != len(second):
        raise ValueError(f"kappa needs paired labels: {len(first)} vs {len(second)}")
    unknown = (set(first) | set(second)) - set(categories)
    if unknown:
        raise ValueError(f"labels {sorted(unknown)} are not among {categories}")
    n = len(first)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second)) / n
    count_a, count_b = Counter(first), Counter(second)
    chance = sum(count_a[c] * count_b[c] for c in categories) / n ** 2
    if chance == 1.0:
        return None
    return (observed - chance) / (1 - chance)


def compare_judges(records: list[dict], requests_by_id: dict[str, dict], judge) -> tuple[dict, list[dict]]:
    """Relabel `records` ({"id", "output", "label", "source"}: one judged completion each, "label" the primary
    judge's) with `judge`; returns ({"kappa", "agreement", "n", "asr.<source>" by this judge}, disagreements)."""
    labels = judge.labels([requests_by_id[r["id"]] for r in records], [r["output"] for r in records])
    primary = [r["label"] for r in records]
    n = len(records)
    metrics = {"kappa": cohen_kappa(primary, labels), "n": n,
               "agreement": sum(a == b for a, b in zip(primary, labels)) / n if n else None}
    by_source: dict[str, list[str]] = {}
    for record, label in zip(records, labels):
        by_source.setdefault(record["source"], []).append(label)
    metrics.update({f"complied.{source}": sum(lab == "complied" for lab in labs) / len(labs)
                    for source, labs in by_source.items()})
    disagreements = [{**record, "other_label": label} for record, label in zip(records, labels)
                     if label != record["label"]]
    return metrics, disagreements
