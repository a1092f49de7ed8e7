"""Spawrious evaluation: average accuracy, worst-group accuracy over (breed, background) groups (Lynch et al. 2023;
Sagawa et al. 2020), a per-group table, and counterfactual invariance: the share of predictions that stay the same
when only the background of an image changes (the counterfactual twin from the SCM keeps object and pixel noise).
Model selection among a run's checkpoints by three rules (Gulrajani & Lopez-Paz 2021; Yang et al. 2023, "Change is
Hard"): average accuracy and worst-class accuracy on held-out training-distribution data (no group labels needed) and
the oracle, test worst-group accuracy (group labels of the test distribution: an upper bound, not a usable rule).
"""

from __future__ import annotations

import numpy as np


def group_table(pred: np.ndarray, label: np.ndarray, groups: list[str] | np.ndarray) -> list[dict]:
    """One row per group: {"group", "n", "accuracy"}, sorted by group name."""
    pred, label, groups = np.asarray(pred), np.asarray(label), np.asarray(groups)
    rows = []
    for name in sorted(set(groups.tolist())):
        mask = groups == name
        rows.append({"group": str(name), "n": int(mask.sum()), "accuracy": float((pred[mask] == label[mask]).mean())})
    return rows


def average_accuracy(pred: np.ndarray, label: np.ndarray) -> float:
    return float((np.asarray(pred) == np.asarray(label)).mean())


def worst_group_accuracy(table: list[dict]) -> float:
    return min(row["accuracy"] for row in table)


def counterfactual_flip_rate(factual_pred: np.ndarray, counterfactual_pred: np.ndarray,
                             same_background: np.ndarray) -> float:
    """Share of (image, other background) pairs whose prediction differs from the factual one.

    factual_pred [n]; counterfactual_pred [n, k] predictions on the k counterfactual backgrounds;
    same_background [n, k] True where the counterfactual background is the factual one (excluded: no change).
    """
    flips = counterfactual_pred != np.asarray(factual_pred)[:, None]
    keep = ~np.asarray(same_background)
    return float(flips[keep].mean())


def summarise(pred: np.ndarray, label: np.ndarray, groups: list[str] | np.ndarray,
              counterfactual_pred: np.ndarray | None = None, same_background: np.ndarray | None = None) -> dict:
    table = group_table(pred, label, groups)
    out = {"average_accuracy": average_accuracy(pred, label), "worst_group_accuracy": worst_group_accuracy(table),
           "groups": table}
    if counterfactual_pred is not None:
        flip = counterfactual_flip_rate(pred, counterfactual_pred, same_background)
        out["counterfactual_flip_rate"] = flip
        out["counterfactual_invariance"] = 1.0 - flip
    return out


def worst_class_accuracy(pred: np.ndarray, label: np.ndarray) -> float:
    """Minimum over classes of the per-class accuracy (needs class labels only, no group labels)."""
    pred, label = np.asarray(pred), np.asarray(label)
    return float(min((pred[label == c] == c).mean() for c in np.unique(label)))


# rule -> (where the score is read, which score); a checkpoint row is {"step", "val": {...}, "test": {...}}
SELECTION_RULES: dict[str, tuple[str, str]] = {
    "average_val": ("val", "average_accuracy"),
    "worst_class_val": ("val", "worst_class_accuracy"),
    "oracle_worst_group": ("test", "worst_group_accuracy"),
}


def select_checkpoints(rows: list[dict]) -> dict[str, dict]:
    """For each rule of SELECTION_RULES, the checkpoint row with the highest score (ties: the later checkpoint)."""
    if not rows:
        raise ValueError("no checkpoints to select from")
    return {rule: max(reversed(rows), key=lambda r: r[part][score]) for rule, (part, score) in SELECTION_RULES.items()}
