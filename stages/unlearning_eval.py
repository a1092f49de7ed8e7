"""DVC stage `unlearning_eval`: the eight evaluations of Lynch et al. 2024 for the original (base), the oracle and
every entry of the `unlearn` method table (models/unlearn/<name>) -> metrics/unlearning_eval.json, reports/unlearning.md (model x evaluation table, and the
removed/suppressed verdict per method), plots/unlearning.png.

With params `real_data` set the questions and retain text come from its files; what they cannot support (the
oracle and its verdict, free-form evaluations) is listed under `not_measured` in the metrics and the report."""

from __future__ import annotations

from latlab.config import Params, section_dict
from latlab.data.examples import Example
from latlab.data.real_corpora import NO_ORACLE, load_real_corpora
from latlab.data.records import load_world
from latlab.evals.unlearning import (AB_TABLE_KEYS, KNOWLEDGE_KEYS, TABLE_KEYS, evaluate_unlearning, summarise,
                                     unavailable_evaluations)
from latlab.models.loading import load_saved
from latlab.report.plots import plot_metric_bars
from latlab.report.tables import unlearning_markdown
from latlab.tracking import stage_run
from stages.common import MODELS_DIR, PLOTS_DIR, REPORTS_DIR, WORLD_DIR, run_stage, stage_done, write_metrics

BAR_KEYS = [*KNOWLEDGE_KEYS, "collateral.free_recall", "general.free_recall"]
AB_BAR_KEYS = [k for k in AB_TABLE_KEYS if k != "general.perplexity"]  # bars are rates in [0, 1]


def evaluation_data(params: Params) -> tuple[dict, list[Example] | None, dict[str, str]]:
    """(records to evaluate on, held-out retain text or None for the world's, what cannot be measured and why)."""
    cfg = params.unlearning_eval
    if params.real_data is not None:
        real = load_real_corpora(params.real_data, params.validate_data, params.seed)
        world, retain_text, no_oracle = real.evaluation_world(), real.retain_text(cfg.split), {"oracle": NO_ORACLE}
    else:
        world, retain_text, no_oracle = load_world(WORLD_DIR), None, {}
    return world, retain_text, {**no_oracle, **unavailable_evaluations(world, cfg)}


def unlearning_eval(params: Params) -> None:
    cfg = params.unlearning_eval
    world, retain_text, not_measured = evaluation_data(params)
    gcg_cfg = params.attacks.gcg_individual if cfg.gcg else None
    oracle = {} if "oracle" in not_measured else {"oracle": "oracle"}
    roles = {"original": "base", **oracle, **{name: f"unlearn/{name}" for name in params.unlearn}}
    results: dict[str, dict[str, float]] = {}
    reference = None
    with stage_run(params.tracking, "unlearning_eval", section_dict(params, "unlearning_eval")) as run:
        for name, role in roles.items():
            model, tokenizer = load_saved(MODELS_DIR / role, params.model.device, params.model.dtype)
            metrics = evaluate_unlearning(model, tokenizer, world, cfg, gcg_cfg, reference, retain_text)
            if name == "original":  # probe gaps are measured against the original model's layers
                reference = {int(k.removeprefix("latent.layer")): v for k, v in metrics.items()
                             if k.startswith("latent.layer")}
            results[name] = metrics
            print(f"[unlearning_eval] {name}: " + ", ".join(f"{k}={metrics[k]:.3f}" for k in KNOWLEDGE_KEYS
                                                             if k in metrics))
            run.log_metrics({f"{name}.{k}": v for k, v in metrics.items()})
        for what, why in not_measured.items():
            print(f"[unlearning_eval] not measured: {what}: {why}")
        summary = summarise(results, "original", "oracle", cfg.tolerance) if oracle else None
        verdict = {"verdict": {n: s["label"] for n, s in summary.items()}, "summary": summary} if oracle else {}
        metrics_path = write_metrics("unlearning_eval", {"results": results, "not_measured": not_measured, **verdict})
        REPORTS_DIR.mkdir(parents=True, exist_ok=True)
        multiple_choice_only = "qa.free_recall" in not_measured
        (REPORTS_DIR / "unlearning.md").write_text(unlearning_markdown(
            results, summary, cfg.tolerance, AB_TABLE_KEYS if multiple_choice_only else TABLE_KEYS, not_measured))
        plot_metric_bars(results, AB_BAR_KEYS if multiple_choice_only else BAR_KEYS, PLOTS_DIR / "unlearning.png",
                         f"forget-domain knowledge ({cfg.domain}) and what is kept",
                         ylabel="accuracy / recall (fraction)")
        run.log_metrics({f"{n}.removed": float(s["label"] == "removed") for n, s in (summary or {}).items()})
        run.log_artifact(REPORTS_DIR / "unlearning.md", "reports")
        run.log_artifact(PLOTS_DIR / "unlearning.png", "plots")
    removed = sum(s["label"] == "removed" for s in (summary or {}).values())
    stage_done("unlearning_eval", [REPORTS_DIR / "unlearning.md", metrics_path, PLOTS_DIR / "unlearning.png"],
               {"models": len(results), **({"removed": f"{removed}/{len(summary)}"} if summary else {})})


def main() -> None:
    run_stage("unlearning_eval", unlearning_eval)


if __name__ == "__main__":
    main()
