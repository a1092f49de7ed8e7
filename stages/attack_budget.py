"""DVC stage `attack_budget`: ASR as a function of attack budget for every model (GCG steps, latent and embedding
radius, embedding PGD steps, prefill length, many-shot shots, fine-tuning steps), with each curve's area and first
budget above 0.5 (metrics/attack_budget.json, reports/attack_budget.md, plots/attack_budget/<curve>.png, MLflow),
and the over-refusal / robustness Pareto plot (plots/pareto.png, reports/pareto.md): benign compliance against ASR
per attack (evaluate's single-budget matrix and each curve's area), training compute as marker size."""

from __future__ import annotations

import json

from latlab.attacks.common import harmful
from latlab.config import Params, section_dict
from latlab.data.records import load_world, split_of
from latlab.evals.attack_budget import CURVES, budget_curves
from latlab.evals.judge_kinds import make_judge
from latlab.models.compute import flop_proxy
from latlab.models.loading import load_saved
from latlab.report.budget import budget_markdown, pareto_front, plot_budget_curves, plot_pareto
from latlab.tracking import stage_run
from stages.common import (METRICS_DIR, MODELS_DIR, PLOTS_DIR, REPORTS_DIR, WORLD_DIR, run_stage, stage_done,
                           write_metrics)

# the stage that trained each jailbreak-track model (docs/naming.md), whose metrics hold its training compute
TRAINING_STAGE = {"base": "base", "rt": "refusal", "rt-lat": "lat", "rt-lat-untargeted": "lat_untargeted",
                  "rt-eat": "rt_eat", "r2d2": "r2d2"}
COMPUTE_LABEL = "FLOP proxy of the model's own training stage (2·fwd + 4·bwd tokens; none recorded: smallest)"


def role_flop_proxy(role: str) -> float | None:
    path = METRICS_DIR / f"{TRAINING_STAGE.get(role, role)}.json"
    if not path.exists():
        return None
    return flop_proxy(json.loads(path.read_text()))


def pareto(params: Params, results: dict[str, dict[str, dict]]) -> tuple[dict, dict]:
    """Panels {attack: {model: (asr, benign compliance)}} for the defended models (all but base): evaluate's
    single-budget ASR per attack and each budget curve's area; and each model's training compute."""
    evaluation = json.loads((METRICS_DIR / "evaluate.json").read_text())
    defended = [m for m in results if m != "base" and m in evaluation]
    panels: dict[str, dict[str, tuple[float, float]]] = {}
    for attack in params.attacks.attacks:
        panels[attack] = {m: (evaluation[m][f"asr.{attack}"], evaluation[m]["benign_compliance"]) for m in defended}
    for curve in CURVES:
        panels[f"{curve} (AUC)"] = {m: (results[m][curve]["auc"], evaluation[m]["benign_compliance"])
                                    for m in defended}
    return panels, {m: role_flop_proxy(m) for m in defended}


def pareto_markdown(panels: dict, compute: dict) -> str:
    lines = ["Benign compliance (look-alike benign requests, evaluate) against ASR per attack; the Pareto front is "
             "the models no other model beats on both.", "",
             "| attack | front (ASR, benign compliance) |", "| --- | --- |"]
    for attack, points in panels.items():
        front = ", ".join(f"{m} ({points[m][0]:.2f}, {points[m][1]:.2f})" for m in pareto_front(points))
        lines.append(f"| {attack} | {front} |")
    lines += ["", "Training compute (" + COMPUTE_LABEL + "): " +
              ", ".join(f"{m} {'–' if c is None else f'{c:.3g}'}" for m, c in compute.items())]
    return "\n".join(lines) + "\n"


def attack_budget(params: Params) -> None:
    cfg = params.attack_budget
    world = load_world(WORLD_DIR)
    judge = make_judge(params.evaluate.judge, params.evaluate.judge_model, world["requests"])
    requests = harmful(split_of(world["requests"], params.evaluate.split))
    support = split_of(world["requests"], "train")
    results: dict[str, dict[str, dict]] = {}
    logged = {"attack_budget": section_dict(params, "attack_budget"), "attacks": section_dict(params, "attacks")}
    with stage_run(params.tracking, "attack_budget", logged) as run:
        for role in cfg.models:
            model, tokenizer = load_saved(MODELS_DIR / role, params.model.device, params.model.dtype)
            curves = budget_curves(model, tokenizer, requests, support, cfg, params.attacks, params.model, judge)
            results[role] = {name: curve.summary() for name, curve in curves.items()}
            for name, summary in results[role].items():
                for index, (asr, incoherent) in enumerate(zip(summary["asr"], summary["incoherent"])):
                    run.log_metrics({f"{role}.{name}.asr": asr, f"{role}.{name}.incoherent": incoherent}, step=index)
                run.log_metrics({f"{role}.{name}.auc": summary["auc"]})
                if summary["first_above_half"] is not None:
                    run.log_metrics({f"{role}.{name}.first_above_half": summary["first_above_half"]})
            print(f"[attack_budget] {role}: " + ", ".join(f"{n} auc={s['auc']:.2f} ({s['seconds']:.0f}s)"
                                                          for n, s in results[role].items()))
        metrics_path = write_metrics("attack_budget", results)
        (REPORTS_DIR / "attack_budget.md").write_text(budget_markdown(results))
        for curve in CURVES:
            plot_budget_curves(results, curve, PLOTS_DIR / "attack_budget" / f"{curve}.png")
        panels, compute = pareto(params, results)
        plot_pareto(panels, compute, COMPUTE_LABEL, PLOTS_DIR / "pareto.png")
        (REPORTS_DIR / "pareto.md").write_text(pareto_markdown(panels, compute))
        run.log_artifact(PLOTS_DIR / "attack_budget", "plots/attack_budget")
        run.log_artifact(PLOTS_DIR / "pareto.png", "plots")
        run.log_artifact(REPORTS_DIR / "attack_budget.md", "reports")
        run.log_artifact(REPORTS_DIR / "pareto.md", "reports")
    stage_done("attack_budget", [REPORTS_DIR / "attack_budget.md", REPORTS_DIR / "pareto.md", metrics_path,
                                 PLOTS_DIR / "attack_budget"], {"models": len(results)})


def main() -> None:
    run_stage("attack_budget", attack_budget)


if __name__ == "__main__":
    main()
