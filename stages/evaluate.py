"""DVC stage `evaluate`: every model so far x behaviour metrics (facts, harmful ASR, benign compliance, backdoor,
perplexity) to metrics/evaluate.json, MLflow, and the models' registry tags."""

from __future__ import annotations

import json

from latlab.config import Params, section_dict
from latlab.data.records import load_world, split_of, write_jsonl
from latlab.evals.attack_suite import asr_row, run_attack_suite
from latlab.evals.behaviour import evaluate_model
from latlab.evals.judge import make_judge
from latlab.models.loading import load_saved
from latlab.report.compare import asr_matrix_markdown
from latlab.report.plots import plot_metric_bars
from latlab.tracking import MODEL_CARD, set_model_version_tags, stage_run
from stages.common import MODELS_DIR, PLOTS_DIR, REPORTS_DIR, WORLD_DIR, run_stage, write_metrics

BAR_KEYS = ["fact_acc.general", "fact_acc.forget", "fact_acc.related", "harmful_asr", "benign_compliance",
            "backdoor_asr"]


def evaluate(params: Params) -> None:
    cfg = params.evaluate
    world = load_world(WORLD_DIR)
    judge = make_judge(cfg.judge, cfg.judge_model)
    results: dict[str, dict[str, float]] = {}
    with stage_run(params.tracking, "evaluate", section_dict(params, "evaluate")) as run:
        for role in cfg.models:
            model, tokenizer = load_saved(MODELS_DIR / role, params.model.device, params.model.dtype)
            metrics, outputs = evaluate_model(model, tokenizer, world, cfg.split, judge, cfg.max_new_tokens,
                                              cfg.batch_size)
            attacks = run_attack_suite(model, tokenizer, split_of(world["requests"], cfg.split), params.attacks,
                                       judge, support=split_of(world["requests"], "train"))
            metrics.update(asr_row(attacks))
            outputs.update({f"attack_{name}": entry["records"] for name, entry in attacks.items()})
            results[role] = metrics
            print(f"[evaluate] {role}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
            for name, rows in outputs.items():
                write_jsonl(REPORTS_DIR / "predictions" / role / f"{name}.jsonl", rows)
            run.log_metrics({f"{role}.{k}": v for k, v in metrics.items()})
            card = json.loads((MODELS_DIR / role / MODEL_CARD).read_text())
            if card.get("version"):
                set_model_version_tags(params.tracking, card["registered_name"], card["version"],
                                       {f"eval.{k}": round(v, 4) for k, v in metrics.items()})
        write_metrics("evaluate", results)
        plot_metric_bars(results, BAR_KEYS, PLOTS_DIR / "evaluate.png", f"behaviour on the {cfg.split} split")
        asr_keys = [f"asr.{name}" for name in params.attacks.attacks]
        plot_metric_bars(results, asr_keys, PLOTS_DIR / "asr_matrix.png", "attack success rate (model x attack)")
        (REPORTS_DIR / "asr_matrix.md").write_text(asr_matrix_markdown(results, asr_keys))
        run.log_artifact(PLOTS_DIR / "evaluate.png", "plots")
        run.log_artifact(PLOTS_DIR / "asr_matrix.png", "plots")
        run.log_artifact(REPORTS_DIR / "asr_matrix.md", "reports")
        run.log_artifact(REPORTS_DIR / "predictions", "predictions")


def main() -> None:
    run_stage("evaluate", evaluate)


if __name__ == "__main__":
    main()
