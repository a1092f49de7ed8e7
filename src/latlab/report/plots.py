"""Pictures people look at rather than read: training curves, behaviour bars per model and the model x attack ASR
heatmap (matplotlib, Agg).

Every figure has a title, axis labels with units and its legend outside the data (`legend_outside`). Each function
returning a Figure (`*_figure`) is what its `plot_*` saves, so tests can inspect the axes.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
from matplotlib.figure import Figure  # noqa: E402

STEP_LABEL = "optimizer step"
LOSS_LABEL = "loss (cross-entropy terms in nats/token)"
# Logged beside the loss terms but not losses: each gets its own linear panel with this label (unknown names: as is)
DIAGNOSTIC_LABELS = {"pref_acc": "preference accuracy (fraction)", "margin": "reward margin (β·log-ratio, nats)"}
NOT_LOSS_MARKERS = ("acc", "margin")  # a history key containing one of these is a diagnostic, not a loss term


def write_history_csv(history: list[dict], path: Path) -> None:
    """DVC plots read this CSV (x = step)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "step", k))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def is_loss(name: str) -> bool:
    return not any(marker in name for marker in NOT_LOSS_MARKERS)


def y_scale(series: dict[str, list[float]], losses: bool) -> str:
    """"log" only for losses whose finite values are all > 0 (a log axis hides a negative loss, e.g. gradient
    ascent's, and means nothing for an accuracy or a margin); "linear" otherwise."""
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    return "log" if losses and values and min(values) > 0 else "linear"


def legend_outside(ax, **kwargs) -> None:
    """The legend to the right of the axes, never over the data (`save_figure` keeps it in the saved image)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8, **kwargs)


def save_figure(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # tight: the outside legend is part of the image
    plt.close(fig)


def training_curve_figure(history: list[dict], title: str) -> Figure:
    """The loss terms on one panel (log scale when all are > 0, `y_scale`), then one linear panel per diagnostic
    (preference accuracy, reward margin, ...), all against the optimizer step."""
    steps = [row["step"] for row in history]
    names = sorted({k for row in history for k in row} - {"step", "lr"})
    series = {k: [row.get(k, float("nan")) for row in history] for k in names}
    losses = {k: v for k, v in series.items() if is_loss(k)}
    panels = [("loss terms", LOSS_LABEL, losses, True)] if losses else []
    panels += [(DIAGNOSTIC_LABELS.get(k, k).split(" (")[0], DIAGNOSTIC_LABELS.get(k, k), {k: v}, False)
               for k, v in series.items() if not is_loss(k)]
    panels = panels or [("loss terms", LOSS_LABEL, {}, True)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 + 1.9 * len(panels)), sharex=True, squeeze=False)
    for ax, (name, ylabel, group, loss_panel) in zip(axes[:, 0], panels):
        for key, values in group.items():
            ax.plot(steps, values, label=key)
        ax.set_yscale(y_scale(group, loss_panel))
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(name, fontsize=9)
        legend_outside(ax)
    axes[-1, 0].set_xlabel(STEP_LABEL)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_training_curve(history: list[dict], path: Path, title: str) -> None:
    save_figure(training_curve_figure(history, title), path)


def metric_bars_figure(metrics_by_model: dict[str, dict[str, float]], keys: list[str], title: str,
                       ylabel: str) -> Figure:
    """Grouped bars: one group per metric, one bar per model (rates in [0, 1])."""
    models = list(metrics_by_model)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(keys)), 3.8))
    for i, model in enumerate(models):
        values = [metrics_by_model[model].get(k, float("nan")) for k in keys]
        ax.bar([j + i * width for j in range(len(keys))], values, width, label=model)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(keys))])
    ax.set_xticklabels(keys, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("metric")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    legend_outside(ax, title="model")
    fig.tight_layout()
    return fig


def plot_metric_bars(metrics_by_model: dict[str, dict[str, float]], keys: list[str], path: Path, title: str,
                     ylabel: str) -> None:
    save_figure(metric_bars_figure(metrics_by_model, keys, title, ylabel), path)


def asr_heatmap_figure(metrics_by_model: dict[str, dict[str, float]], attacks: list[str], title: str) -> Figure:
    """Models (rows) x attacks (columns), coloured by ASR (`asr.<attack>`, the fraction of harmful prompts complied
    with); each cell says its ASR and the attack's incoherent rate (`incoherent.<attack>`, "incoh."), so a "robust"
    model that only broke is visible."""
    models = list(metrics_by_model)
    asr = [[metrics_by_model[m].get(f"asr.{a}", float("nan")) for a in attacks] for m in models]
    fig, ax = plt.subplots(figsize=(2.4 + 1.15 * len(attacks), 2.4 + 0.55 * len(models)))
    image = ax.imshow(asr, cmap="Reds", vmin=0.0, vmax=1.0, aspect="auto")
    for i, model in enumerate(models):
        for j, attack in enumerate(attacks):
            value, incoherent = asr[i][j], metrics_by_model[model].get(f"incoherent.{attack}", float("nan"))
            text = "n/a" if math.isnan(value) else f"{value:.2f}" + (
                "" if math.isnan(incoherent) else f"\nincoh. {incoherent:.2f}")
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if not math.isnan(value) and value > 0.6 else "black")
    ax.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    ax.set_xlabel("attack")
    ax.set_ylabel("model")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="ASR (fraction complied)")
    fig.tight_layout()
    return fig


def plot_asr_heatmap(metrics_by_model: dict[str, dict[str, float]], attacks: list[str], path: Path,
                     title: str) -> None:
    save_figure(asr_heatmap_figure(metrics_by_model, attacks, title), path)
