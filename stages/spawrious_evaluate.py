"""DVC stage spawrious_evaluate: collect the grid's train metrics into one results table (markdown + JSON) and a
worst-group accuracy plot."""

from __future__ import annotations

import json
from pathlib import Path

from latlab.config import Params
from latlab.report.spawrious import plot_worst_group, results_table
from latlab.tracking import stage_run
from latlab.vision.metrics import SELECTION_RULES
from stages.common import run_stage, stage_done

TRAIN_METRICS = Path("metrics/spawrious_train")
METRICS = Path("metrics/spawrious_evaluate.json")
TABLE = Path("reports/spawrious_results.md")
PLOT = Path("plots/spawrious/worst_group_accuracy.png")


def evaluate(params: Params) -> None:
    cfg, tracking = params.spawrious, params.tracking
    rows = []
    for split in cfg.splits:
        for method in cfg.methods:
            result = json.loads((TRAIN_METRICS / split / f"{method}.json").read_text())
            selected = {rule: row["test"]["worst_group_accuracy"] for rule, row in result.get("selection", {}).items()}
            rows.append({"split": split, "method": method, "train_seconds": result["train_seconds"],
                         **{k: v for k, v in result["test"].items() if k != "groups"}, "selected": selected})
    with stage_run(tracking, "spawrious_evaluate", {"splits": cfg.splits, "methods": cfg.methods}) as run:
        for path in (METRICS, TABLE):
            path.parent.mkdir(parents=True, exist_ok=True)
        METRICS.write_text(json.dumps({f"{r['split']}.{r['method']}": r for r in rows}, indent=2))
        TABLE.write_text(results_table(rows, list(SELECTION_RULES)))
        plot_worst_group(rows, PLOT)
        run.log_metrics({f"{r['split']}.{r['method']}": {k: v for k, v in r.items() if k not in ("split", "method")}
                         for r in rows})  # nested `selected` is flattened to <cell>.selected.<rule>
        for path in (METRICS, TABLE, PLOT):
            run.log_artifact(path)
    best = max(rows, key=lambda r: r["worst_group_accuracy"])
    stage_done("spawrious_evaluate", [TABLE, METRICS, PLOT],
               {"best_worst_group_accuracy": best["worst_group_accuracy"], "best": f"{best['split']}.{best['method']}"})


def main() -> None:
    run_stage("spawrious_evaluate", evaluate)


if __name__ == "__main__":
    main()
