"""Pictures people look at rather than read: training curves and behaviour bars per model (matplotlib, Agg)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)


def write_history_csv(history: list[dict], path: Path) -> None:
    """DVC plots read this CSV (x = step)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "step", k))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def plot_training_curve(history: list[dict], path: Path, title: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [row["step"] for row in history]
    for key in sorted({k for row in history for k in row} - {"step", "lr"}):
        ax.plot(steps, [row.get(key, float("nan")) for row in history], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_metric_bars(metrics_by_model: dict[str, dict[str, float]], keys: list[str], path: Path,
                     title: str) -> None:
    """Grouped bars: one group per metric, one bar per model (rates in [0, 1])."""
    path.parent.mkdir(parents=True, exist_ok=True)
    models = list(metrics_by_model)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(keys)), 3.8))
    for i, model in enumerate(models):
        values = [metrics_by_model[model].get(k, float("nan")) for k in keys]
        ax.bar([j + i * width for j in range(len(keys))], values, width, label=model)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(keys))])
    ax.set_xticklabels(keys, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
