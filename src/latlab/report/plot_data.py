"""Results as DVC plot data: small CSVs under plots/results/ that the `report` stage derives from the committed
metrics, so `dvc plots diff REV_A REV_B` (and its offline rendering, `python -m latlab.report.plots_diff`) compares
two experiments' results, not only their training curves. dvc.yaml's top-level `plots:` section says how DVC draws
each file (x, y, template); nothing here computes a new number.

Files, one row per bar or point; every rate is a fraction in [0, 1]:

- `asr.csv` (metrics/evaluate.json): model_attack ("<model> / <attack>", the bar's label), model, attack, asr (ASR,
  fraction of harmful prompts complied with), incoherent (fraction of broken outputs; empty when not measured).
- `unlearning.csv` (metrics/unlearning_eval.json): method_evaluation ("<method> / <evaluation>"), method, evaluation,
  value: each model's accuracy on the knowledge evaluations the removed/suppressed verdict reads (higher = more of
  the forgotten knowledge left), for every unlearned model, the oracle and the original.
- `attack_budget/<curve>/<model>.csv` (metrics/attack_budget.json): budget (the curve's unit: steps, radius ε,
  words, shots), asr, incoherent; one file per curve and model, so DVC draws one ASR-vs-budget line per revision.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

EVALUATE = "evaluate.json"
UNLEARNING = "unlearning_eval.json"
ATTACK_BUDGET = "attack_budget.json"
ASR_CSV = "asr.csv"
UNLEARNING_CSV = "unlearning.csv"
BUDGET_DIR = "attack_budget"
LABEL_SEPARATOR = " / "  # DVC's bar templates take one category field: "<row> / <column>"


def attack_rates(model_metrics: dict[str, float], prefix: str = "asr.") -> dict[str, float]:
    """attack -> rate from one model's evaluate metrics (`asr.<attack>`; `incoherent.<attack>` with that prefix).
    Keys with a further dot (`asr.latent.eps_0.5`) are one attack's sub-results, not attacks."""
    return {key.removeprefix(prefix): value for key, value in model_metrics.items()
            if key.startswith(prefix) and "." not in key.removeprefix(prefix)}


def _fraction(value) -> float | str:
    """A rate for a CSV cell; "" for a missing or non-finite one (DVC reads an empty cell as no value)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else ""


def asr_rows(evaluate: dict[str, dict[str, float]]) -> list[dict]:
    """evaluate: model -> metrics (metrics/evaluate.json). One row per model and attack, in the file's model order
    and sorted attack order."""
    rows = []
    for model, metrics in evaluate.items():
        incoherent = attack_rates(metrics, "incoherent.")
        for attack, asr in sorted(attack_rates(metrics).items()):
            rows.append({"model_attack": f"{model}{LABEL_SEPARATOR}{attack}", "model": model, "attack": attack,
                         "asr": _fraction(asr), "incoherent": _fraction(incoherent.get(attack))})
    return rows


def unlearning_rows(unlearning_eval: dict) -> list[dict]:
    """unlearning_eval: metrics/unlearning_eval.json ({"results": model -> metrics, "summary": method -> {"values":
    evaluation -> value, ...}, ...}). The evaluations are the ones the summary judged on (the knowledge metrics,
    which differ between the toy world and multiple-choice real data); one row per model of `results` and evaluation,
    a model without one left out; no rows when no unlearned model was judged (empty summary)."""
    summary = unlearning_eval.get("summary") or {}
    evaluations = list(next(iter(summary.values()))["values"]) if summary else []
    rows = []
    for method, metrics in unlearning_eval["results"].items():
        for evaluation in evaluations:
            if evaluation in metrics:
                rows.append({"method_evaluation": f"{method}{LABEL_SEPARATOR}{evaluation}", "method": method,
                             "evaluation": evaluation, "value": _fraction(metrics[evaluation])})
    return rows


def budget_rows(attack_budget: dict[str, dict[str, dict]]) -> dict[tuple[str, str], list[dict]]:
    """attack_budget: model -> curve -> {"budgets", "asr", "incoherent", ...} (metrics/attack_budget.json).
    Returns (curve, model) -> one row per budget."""
    return {(curve, model): [{"budget": b, "asr": _fraction(a), "incoherent": _fraction(i)}
                             for b, a, i in zip(point["budgets"], point["asr"], point["incoherent"])]
            for model, curves in attack_budget.items() for curve, point in curves.items()}


def _write_csv(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_result_plots(metrics_dir: Path, out_dir: Path) -> list[Path]:
    """Write every file of the module docstring from metrics_dir/{evaluate,unlearning_eval,attack_budget}.json into
    out_dir (emptied first: a model or curve gone from the metrics leaves no stale file). Returns the files written.
    Raises FileNotFoundError naming a missing metrics file (each is a dvc.yaml dependency of the `report` stage)."""
    def load(name: str) -> dict:
        path = metrics_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (run the stage that writes it before `report`)")
        return json.loads(path.read_text())

    evaluate, unlearning, budget = load(EVALUATE), load(UNLEARNING), load(ATTACK_BUDGET)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    written = [_write_csv(asr_rows(evaluate), out_dir / ASR_CSV),
               _write_csv(unlearning_rows(unlearning), out_dir / UNLEARNING_CSV)]
    written += [_write_csv(rows, out_dir / BUDGET_DIR / curve / f"{model}.csv")
                for (curve, model), rows in budget_rows(budget).items()]
    return written
