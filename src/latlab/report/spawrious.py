"""What the Spawrious track shows people: the grid's results table (markdown), the worst-group accuracy bars and a
counterfactual preview (one test image per class on each background)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latlab.report.plots import legend_outside, plt, save_figure


def results_table(rows: list[dict], rules: list[str]) -> str:
    """One row per (split, method): the last checkpoint's test metrics, then the test worst-group accuracy of the
    checkpoint each selection rule of `rules` picks (`selected`: rule -> value; "–" when the run kept no held-out
    set)."""
    lines = ["| split | method | avg acc | worst-group acc | CF invariance | "
             + " | ".join(f"WGA sel. {rule}" for rule in rules) + " | train s |",
             "|---|---|---:|---:|---:|" + "---:|" * len(rules) + "---:|"]
    for r in rows:
        selected = r.get("selected") or {}
        picks = " | ".join(f"{selected[rule]:.3f}" if rule in selected else "–" for rule in rules)
        lines.append(f"| {r['split']} | {r['method']} | {r['average_accuracy']:.3f} | {r['worst_group_accuracy']:.3f} "
                     f"| {r.get('counterfactual_invariance', float('nan')):.3f} | {picks} | {r['train_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def plot_worst_group(rows: list[dict], path: Path, metric: str = "worst_group_accuracy",
                     title: str = "Spawrious: worst-group accuracy") -> None:
    """Bars of `metric` per split (x, in row order), one colour per method. A row's value is a fraction (one run) or
    {"mean", "ci": [low, high]} (over seeds: drawn with interval whiskers)."""
    splits = list(dict.fromkeys(r["split"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.8 + 1.6 * len(splits)), 3.4))
    for i, method in enumerate(methods):
        cells = [(j, r[metric]) for j, split in enumerate(splits) for r in rows
                 if r["split"] == split and r["method"] == method]
        means = [c["mean"] if isinstance(c, dict) else c for _, c in cells]
        errs = None
        if cells and isinstance(cells[0][1], dict):
            errs = [[c["mean"] - c["ci"][0] for _, c in cells], [c["ci"][1] - c["mean"] for _, c in cells]]
        ax.bar([j + i * width for j, _ in cells], means, width, yerr=errs, capsize=2, label=method)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(splits))], splits)
    ax.set_xlabel("split")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (fraction)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    legend_outside(ax, title="method")
    fig.tight_layout()
    save_figure(fig, path)


def counterfactual_preview(counterfactual: np.ndarray, labels: np.ndarray, path: Path, zoom: int = 3) -> None:
    """One test image per class (rows) on each of the six backgrounds (columns)."""
    from PIL import Image

    rows = [counterfactual[int(np.argmax(labels == c))] for c in np.unique(labels)]  # each [6, H, W, 3]
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(grid)
    image.resize((grid.shape[1] * zoom, grid.shape[0] * zoom), Image.NEAREST).save(path)
