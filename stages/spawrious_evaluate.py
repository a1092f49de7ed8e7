"""DVC stage spawrious_evaluate: collect the grid's train metrics into one results table (markdown + JSON) and a
worst-group accuracy plot."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from latlab.tracking import stage_run  # noqa: E402
from latlab.config import load_params  # noqa: E402

TRAIN_METRICS = Path("metrics/spawrious_train")
METRICS = Path("metrics/spawrious_evaluate.json")
TABLE = Path("metrics/spawrious_results.md")
PLOT = Path("plots/spawrious/worst_group_accuracy.png")


def results_table(rows: list[dict]) -> str:
    lines = ["| split | method | avg acc | worst-group acc | CF invariance | train s |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['split']} | {r['method']} | {r['average_accuracy']:.3f} | {r['worst_group_accuracy']:.3f} "
                     f"| {r.get('counterfactual_invariance', float('nan')):.3f} | {r['train_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def plot_worst_group(rows: list[dict], splits: list[str], methods: list[str], path: Path) -> None:
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(splits), 3.2))
    for i, method in enumerate(methods):
        values = [next((r["worst_group_accuracy"] for r in rows if r["split"] == s and r["method"] == method), 0.0)
                  for s in splits]
        ax.bar([j + i * width for j in range(len(splits))], values, width, label=method)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(splits))], splits)
    ax.set_ylabel("worst-group test accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncols=min(len(methods), 4))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    params = load_params()
    cfg, tracking = params.spawrious, params.tracking
    rows = []
    for split in cfg.splits:
        for method in cfg.methods:
            result = json.loads((TRAIN_METRICS / split / f"{method}.json").read_text())
            rows.append({"split": split, "method": method, "train_seconds": result["train_seconds"],
                         **{k: v for k, v in result["test"].items() if k != "groups"}})
    with stage_run(tracking, "spawrious_evaluate", {"splits": cfg.splits, "methods": cfg.methods}) as run:
        METRICS.parent.mkdir(parents=True, exist_ok=True)
        METRICS.write_text(json.dumps({f"{r['split']}.{r['method']}": r for r in rows}, indent=2))
        TABLE.write_text(results_table(rows))
        plot_worst_group(rows, cfg.splits, cfg.methods, PLOT)
        run.log_metrics({f"{r['split']}.{r['method']}": {k: v for k, v in r.items() if k not in ("split", "method")}
                         for r in rows})
        for path in (METRICS, TABLE, PLOT):
            run.log_artifact(path)
    print(TABLE.read_text())


if __name__ == "__main__":
    main()
