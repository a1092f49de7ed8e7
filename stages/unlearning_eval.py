"""DVC stage `unlearning_eval`: the eight evaluations of Lynch et al. 2024 for the original (base), the oracle and
every unlearned model -> metrics/unlearning_eval.json, reports/unlearning.md (model x evaluation table, and the
removed/suppressed verdict per method), plots/unlearning.png."""

from __future__ import annotations

from latlab.config import Params, section_dict
from latlab.data.records import load_world
from latlab.evals.unlearning import KNOWLEDGE_KEYS, evaluate_unlearning, summarise, unlearning_markdown
from latlab.models.loading import load_saved
from latlab.report.plots import plot_metric_bars
from latlab.tracking import stage_run
from stages.common import MODELS_DIR, PLOTS_DIR, REPORTS_DIR, WORLD_DIR, run_stage, write_metrics

BAR_KEYS = [*KNOWLEDGE_KEYS, "collateral.free_recall", "general.free_recall"]


def unlearning_eval(params: Params) -> None:
    cfg = params.unlearning_eval
    world = load_world(WORLD_DIR)
    gcg_cfg = params.attacks.gcg_individual if cfg.gcg else None
    roles = {"original": "base", "oracle": "oracle", **{m: f"unlearn-{m}" for m in cfg.models}}
    results: dict[str, dict[str, float]] = {}
    reference = None
    with stage_run(params.tracking, "unlearning_eval", section_dict(params, "unlearning_eval")) as run:
        for name, role in roles.items():
            model, tokenizer = load_saved(MODELS_DIR / role, params.model.device, params.model.dtype)
            metrics = evaluate_unlearning(model, tokenizer, world, cfg, gcg_cfg, reference)
            if name == "original":  # probe gaps are measured against the original model's layers
                reference = {int(k.removeprefix("latent.layer")): v for k, v in metrics.items()
                             if k.startswith("latent.layer")}
            results[name] = metrics
            print(f"[unlearning_eval] {name}: " + ", ".join(f"{k}={metrics[k]:.3f}" for k in KNOWLEDGE_KEYS))
            run.log_metrics({f"{name}.{k}": v for k, v in metrics.items()})
        summary = summarise(results, "original", "oracle", cfg.tolerance)
        write_metrics("unlearning_eval", {"results": results, "verdict": {n: s["label"] for n, s in summary.items()},
                                          "summary": summary})
        REPORTS_DIR.mkdir(parents=True, exist_ok=True)
        (REPORTS_DIR / "unlearning.md").write_text(unlearning_markdown(results, summary, cfg.tolerance))
        plot_metric_bars(results, BAR_KEYS, PLOTS_DIR / "unlearning.png",
                         f"forget-domain knowledge ({cfg.domain}) and what is kept")
        run.log_metrics({f"{n}.removed": float(s["label"] == "removed") for n, s in summary.items()})
        run.log_artifact(REPORTS_DIR / "unlearning.md", "reports")
        run.log_artifact(PLOTS_DIR / "unlearning.png", "plots")


def main() -> None:
    run_stage("unlearning_eval", unlearning_eval)


if __name__ == "__main__":
    main()
