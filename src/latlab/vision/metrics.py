"""Spawrious evaluation: average accuracy, worst-group accuracy over (breed, background) groups (Lynch et al. 2023;
Sagawa et al. 2020), a per-group table, and counterfactual invariance: the share of predictions that stay the same
when only the background of an image changes (the counterfactual twin from the SCM keeps object and pixel noise).
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
