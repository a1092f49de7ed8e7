"""The Spawrious grid over seeds (`make spawrious`, issue 18): every split x method cell of each seed's run as mean,
bootstrap interval over seeds and N, for the last checkpoint and under each model-selection rule, as JSON, a
markdown table and a worst-group plot with interval bars.

    python -m latlab.report.spawrious_study runs/spawrious     # reads runs/spawrious/seed_*/metrics/spawrious_train
    python -m latlab.report.spawrious_study runs/spawrious_dial --dial   # the spurious-strength dial's curves

Reads what `stages.spawrious_train` wrote (metrics/spawrious_train/<split>/<method>.json per seed directory); the
interval is latlab.report.stats' percentile bootstrap over seeds (with 3 seeds: their range). The selection rules are
read from the results (latlab.vision.metrics.SELECTION_RULES wrote them; report sits beside the vision track).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from latlab.config import dial_correlation
from latlab.report.plots import legend_outside, plt, save_figure
from latlab.report.spawrious import plot_worst_group
from latlab.report.stats import bootstrap_mean_ci

METRICS = ("average_accuracy", "worst_group_accuracy", "counterfactual_flip_rate")
OUT_JSON = Path("metrics/spawrious_study.json")
OUT_MD = Path("reports/spawrious_study.md")
OUT_PLOT = Path("plots/spawrious/study_worst_group.png")
DIAL_JSON = Path("metrics/spawrious_dial.json")
DIAL_MD = Path("reports/spawrious_dial.md")
DIAL_PLOT = Path("plots/spawrious/dial.png")


def load_cells(workdir: Path) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """(split, method) -> {seed: that seed's spawrious_train result}; seeds from the seed_<s> folder names."""
    cells: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for seed_dir in sorted(workdir.glob("seed_*")):
        seed = int(seed_dir.name.removeprefix("seed_"))
        for path in sorted((seed_dir / "metrics" / "spawrious_train").glob("*/*.json")):
            result = json.loads(path.read_text())
            cells.setdefault((result["split"], result["method"]), {})[seed] = result
    if not cells:
        raise FileNotFoundError(f"no {workdir}/seed_*/metrics/spawrious_train/<split>/<method>.json: run the grid first")
    return cells


def _interval(values: list[float], bootstrap: dict[str, Any]) -> dict[str, Any]:
    low, high = bootstrap_mean_ci(values, bootstrap["samples"], bootstrap["confidence"], bootstrap["seed"])
    return {"mean": sum(values) / len(values), "ci": [low, high], "n_seeds": len(values)}


def selection_rules(cells: dict[tuple[str, str], dict[int, dict[str, Any]]]) -> list[str]:
    """The selection rules the results carry, in the order the training stage wrote them."""
    return list(dict.fromkeys(rule for per_seed in cells.values() for result in per_seed.values()
                              for rule in result.get("selection", {})))


def summarize(cells: dict[tuple[str, str], dict[int, dict[str, Any]]], bootstrap: dict[str, Any]) -> list[dict]:
    """One row per cell: split, method, seeds, and {metric: {mean, ci, n_seeds}} for the last checkpoint's test
    metrics and `selected.<rule>` (test worst-group accuracy of the checkpoint each rule picks)."""
    rules = selection_rules(cells)
    rows = []
    for (split, method), per_seed in cells.items():
        seeds = sorted(per_seed)
        row: dict[str, Any] = {"split": split, "method": method, "seeds": seeds}
        for metric in METRICS:
            row[metric] = _interval([per_seed[s]["test"][metric] for s in seeds], bootstrap)
        for rule in rules:
            picked = [per_seed[s]["selection"][rule]["test"]["worst_group_accuracy"] for s in seeds
                      if rule in per_seed[s].get("selection", {})]
            if picked:
                row[f"selected.{rule}"] = _interval(picked, bootstrap)
        rows.append(row)
    return sorted(rows, key=_reading_order)


def _reading_order(row: dict) -> tuple:
    """O2O before M2M, easy -> medium -> hard (the paper's order), then method."""
    family, _, level = row["split"].partition("_")
    return (family != "o2o", {"easy": 0, "medium": 1, "hard": 2}.get(level, 3), row["split"], row["method"])


def _fmt(cell: dict[str, Any] | None) -> str:
    return "–" if cell is None else f"{cell['mean']:.2f} [{cell['ci'][0]:.2f}, {cell['ci'][1]:.2f}]"


def markdown(rows: list[dict], confidence: float, title: str = "Spawrious grid") -> str:
    rules = list(dict.fromkeys(key.removeprefix("selected.") for r in rows for key in r if key.startswith("selected.")))
    level = f"{confidence:.0%}"
    lines = [f"{title}: test metrics as mean [{level} bootstrap interval over seeds]; N = seeds per cell. "
             "Last = the model at the end of training; WGA sel. <rule> = test worst-group accuracy of the checkpoint "
             "the rule picks (average_val, worst_class_val: held-out training-distribution data, no group labels; "
             "oracle_worst_group: test group labels, an upper bound).", "",
             "| split | method | N | avg acc (last) | WGA (last) | " + " | ".join(f"WGA sel. {r}" for r in rules)
             + " | CF flip rate (last) |", "|---|---|---:|" + "---:|" * (3 + len(rules))]
    for r in rows:
        lines.append(f"| {r['split']} | {r['method']} | {len(r['seeds'])} | {_fmt(r['average_accuracy'])} | "
                     f"{_fmt(r['worst_group_accuracy'])} | "
                     + " | ".join(_fmt(r.get(f"selected.{rule}")) for rule in rules)
                     + f" | {_fmt(r['counterfactual_flip_rate'])} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, metric: str = "worst_group_accuracy") -> None:
    """Bars of `metric` (mean over seeds) per split, one colour per method, interval whiskers."""
    seeds = max(len(r["seeds"]) for r in rows)
    plot_worst_group(rows, path, metric,
                     f"Spawrious: {metric.replace('_', ' ')}, mean and interval over {seeds} seeds")


def dial_rho(split: str) -> float:
    """rho of a dial split (`dial_97` -> 0.97); ValueError naming any other split."""
    rho = dial_correlation(split)
    if rho is None:
        raise ValueError(f"{split!r} is not a dial split (dial_<rho in percent>): run --dial on a dial study")
    return rho


DIAL_TITLE = ("Spurious-strength dial: training correlation rho = P(breed on its own background), split dial_<rho in "
              "percent>; test on every breed x background (worst group: a breed on another's background)")


def plot_dial(rows: list[dict], path: Path) -> None:
    """Worst-group accuracy (left) and counterfactual flip rate (right) of the last checkpoint against the training
    correlation rho, one line per method, interval whiskers. x is 1 - rho on a log scale (0.97 and 0.99 are where
    methods part), labelled with rho."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    rhos = sorted({dial_rho(r["split"]) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4))
    for ax, metric in zip(axes, ("worst_group_accuracy", "counterfactual_flip_rate")):
        for i, method in enumerate(methods):
            cells = sorted((dial_rho(r["split"]), r[metric]) for r in rows if r["method"] == method)
            # a small horizontal offset per method keeps overlapping whiskers readable
            xs = [(1 - rho) * (1 + 0.04 * (i - (len(methods) - 1) / 2)) for rho, _ in cells]
            means = [c["mean"] for _, c in cells]
            errs = [[c["mean"] - c["ci"][0] for _, c in cells], [c["ci"][1] - c["mean"] for _, c in cells]]
            ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xticks([1 - rho for rho in rhos], [f"{rho:g}" for rho in rhos])
        ax.minorticks_off()
        ax.invert_xaxis()
        ax.set_xlabel("training correlation rho (axis: 1 - rho, log)")
        ax.set_ylabel(f"{metric.replace('_', ' ')} (fraction)")
        ax.set_ylim(0, 1)
    seeds = max(len(r["seeds"]) for r in rows)
    axes[0].set_title("worst-group test accuracy")
    axes[1].set_title("counterfactual flip rate (background changed)")
    fig.suptitle(f"Spawrious spurious-strength dial: mean and interval over {seeds} seeds")
    legend_outside(axes[1], title="method")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    from latlab.config import load_params

    parser = argparse.ArgumentParser(prog="python -m latlab.report.spawrious_study", description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="the grid's study work directory (its seed_<s> folders)")
    parser.add_argument("--dial", action="store_true", help="a spurious-strength dial study (dial_<p> splits): "
                        f"write {DIAL_MD}, {DIAL_JSON} and the curves {DIAL_PLOT}")
    args = parser.parse_args(argv)
    study = load_params().study
    bootstrap = {"samples": study.bootstrap_samples, "confidence": study.confidence, "seed": study.bootstrap_seed}
    rows = summarize(load_cells(args.workdir), bootstrap)
    if args.dial:
        rows = sorted(rows, key=lambda r: (dial_rho(r["split"]), r["method"]))
    out_json, out_md, out_plot = (DIAL_JSON, DIAL_MD, DIAL_PLOT) if args.dial else (OUT_JSON, OUT_MD, OUT_PLOT)
    for path in (out_json, out_md):
        path.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"workdir": str(args.workdir), "confidence": study.confidence,
                                    "bootstrap_samples": study.bootstrap_samples, "cells": rows}, indent=2))
    if args.dial:
        out_md.write_text(markdown(rows, study.confidence, DIAL_TITLE))
        plot_dial(rows, out_plot)
    else:
        out_md.write_text(markdown(rows, study.confidence))
        plot(rows, out_plot)
    print(f"{out_md}, {out_json}, {out_plot}: {len(rows)} cells")


if __name__ == "__main__":
    main()
