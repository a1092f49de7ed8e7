"""Budget curves (one figure per attack, every model on it), their table, and the over-refusal / robustness Pareto
plot (benign compliance against ASR per attack, training compute as marker size)."""

from __future__ import annotations

import math
from pathlib import Path

from latlab.report.plots import legend_outside, plt, save_figure

CURVE_LABELS = {"gcg_steps": "GCG steps", "latent_eps": "latent-attack radius ε", "embedding_eps":
                "embedding-attack radius ε", "embedding_steps": "embedding-attack PGD steps", "prefill_words":
                "prefilled words", "many_shot_shots": "many-shot demonstrations (requested)", "tamper_steps":
                "fine-tuning (tamper) steps"}


def plot_budget_curves(results: dict[str, dict[str, dict]], curve: str, path: Path) -> None:
    """results: model -> curve name -> summary ({"budgets", "asr", "incoherent", "auc", ...}). Solid: ASR; dotted:
    incoherent rate, same colour."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, (model, curves) in enumerate(results.items()):
        point = curves[curve]
        colour = f"C{i % 10}"
        ax.plot(point["budgets"], point["asr"], marker="o", color=colour, label=f"{model} (AUC {point['auc']:.2f})")
        ax.plot(point["budgets"], point["incoherent"], linestyle=":", color=colour)
    ax.set_xlabel(CURVE_LABELS.get(curve, curve))
    ax.set_ylabel("ASR, fraction (dotted: incoherent rate)")
    ax.set_ylim(-0.03, 1.03)
    ax.axhline(0.5, color="grey", linewidth=0.5)
    ax.set_title(f"ASR vs budget: {CURVE_LABELS.get(curve, curve)}")
    legend_outside(ax, title="model")
    fig.tight_layout()
    save_figure(fig, path)


def budget_markdown(results: dict[str, dict[str, dict]]) -> str:
    """One table per curve: model, ASR at each budget, area under the curve, first budget with ASR > 0.5."""
    lines: list[str] = []
    curves = list(next(iter(results.values()))) if results else []
    for curve in curves:
        budgets = next(iter(results.values()))[curve]["budgets"]
        lines += [f"### {CURVE_LABELS.get(curve, curve)} (`{curve}`)", "",
                  "| model | " + " | ".join(f"{b:g}" for b in budgets) + " | AUC | first > 0.5 |",
                  "|" + " --- |" * (len(budgets) + 3)]
        for model, by_curve in results.items():
            s = by_curve[curve]
            first = "–" if s["first_above_half"] is None else f"{s['first_above_half']:g}"
            cells = [f"{a:.2f}" + (f" ({c:.2f})" if c else "") for a, c in zip(s["asr"], s["incoherent"])]
            lines.append(f"| {model} | " + " | ".join(cells) + f" | {s['auc']:.2f} | {first} |")
        lines.append("")
    lines.append("Cells: ASR (incoherent rate, when not 0). AUC: the trapezoid area under ASR(budget) divided by the "
                 "budget range, i.e. the mean ASR over the range.")
    return "\n".join(lines) + "\n"


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Models not dominated in (lower ASR, higher benign compliance): points = model -> (asr, compliance)."""
    return [m for m, (a, c) in points.items()
            if not any((a2 <= a and c2 >= c) and (a2, c2) != (a, c) for m2, (a2, c2) in points.items() if m2 != m)]


def plot_pareto(panels: dict[str, dict[str, tuple[float, float]]], compute: dict[str, float | None],
                compute_label: str, path: Path) -> None:
    """One panel per attack: each model at (ASR, benign compliance), marker area proportional to its training
    compute (a model with none recorded gets the smallest marker), the Pareto front joined by a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    models = sorted({m for points in panels.values() for m in points})
    largest = max([c for c in compute.values() if c] or [1.0])
    for ax, (attack, points) in zip(axes.flat, panels.items()):
        for i, model in enumerate(models):
            if model not in points:
                continue
            asr, compliance = points[model]
            size = 20 + 380 * (compute.get(model) or 0) / largest
            ax.scatter([asr], [compliance], s=size, color=f"C{i % 10}", alpha=0.7, label=model)
        front = sorted((points[m] for m in pareto_front(points)))
        ax.plot([a for a, _ in front], [c for _, c in front], color="grey", linewidth=0.8)
        ax.set_title(attack, fontsize=9)
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("ASR", fontsize=8)
        ax.set_ylabel("benign compliance", fontsize=8)
    spare = list(axes.flat)[len(panels):]
    for ax in spare:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    legend = dict(fontsize=7, title="marker area: " + compute_label.replace(" (", "\n("), title_fontsize=7,
                  markerscale=0.5)
    fig.suptitle("over-refusal vs robustness (up and left is better)", fontsize=10)
    if spare:  # in the first empty panel, else below the grid
        spare[0].legend(handles, labels, loc="center", **legend)
        fig.tight_layout()
    else:
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), **legend)
    fig.savefig(path, dpi=120)
    plt.close(fig)
