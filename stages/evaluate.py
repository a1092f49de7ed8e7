"""DVC stage `evaluate`: every model so far x behaviour metrics (facts, harmful ASR, benign compliance, backdoor,
perplexity) and the attack suite's ASR matrix (with each attack's incoherent rate) to metrics/evaluate.json, MLflow,
and the models' registry tags.

Judges: the primary judge (`evaluate.judge`) gives every verdict; each of `evaluate.agreement_judges` relabels the
same completions, and its Cohen's kappa with the primary judge per model goes to the metrics
(`judge.<name>.kappa`) and reports/judges/agreement.md, its disagreements to reports/judges/disagreements/. Every
judge (the toy and phrase judges always, model judges when configured) is scored on the labelled judge set:
metrics/judges.json and reports/judges/judge_set.md.
"""

from __future__ import annotations

import json

from tqdm.auto import tqdm

from latlab.config import EvaluateConfig, Params, section_dict
from latlab.data.records import load_world, split_of, write_jsonl
from latlab.evals.agreement import compare_judges
from latlab.evals.attack_suite import asr_row, run_attack_suite
from latlab.evals.behaviour import evaluate_model
from latlab.evals.judge_kinds import make_judge
from latlab.evals.judge_set import judge_scores, load_judge_set, toy_items
from latlab.models.loading import load_saved
from latlab.report.compare import asr_matrix_markdown
from latlab.report.judges import agreement_markdown, judge_set_markdown
from latlab.report.plots import plot_asr_heatmap, plot_metric_bars
from latlab.report.model_card import evaluation_summary, with_evaluation
from latlab.tracking import MODEL_CARD, model_version_description, record_model_evaluation, stage_run
from stages.common import MODELS_DIR, PLOTS_DIR, REPORTS_DIR, WORLD_DIR, run_stage, stage_done, write_metrics

BAR_KEYS = ["fact_acc.general", "fact_acc.forget", "fact_acc.related", "harmful_asr", "benign_compliance",
            "backdoor_asr"]
JUDGES_DIR = REPORTS_DIR / "judges"


def make_judges(cfg: EvaluateConfig, requests: list[dict]) -> dict[str, object]:
    """The primary judge first, then the agreement judges, by unique name (kind, or kind_<i> for a repeat)."""
    judges = {cfg.judge: make_judge(cfg.judge, cfg.judge_model, requests)}
    for spec in cfg.agreement_judges:
        judges[spec.kind if spec.kind not in judges else f"{spec.kind}_{len(judges)}"] = make_judge(
            spec.kind, spec.model, requests)
    return judges


def score_judges(judges: dict[str, object], requests: list[dict]) -> dict[str, dict]:
    """Every judge on the labelled judge set (the toy and phrase judges always); `<name>.toy_forms`: a text judge on
    the toy world's forms only (what it meets on the toy pipeline)."""
    items = load_judge_set(requests)
    everyone = {name: make_judge(name) for name in ("toy", "refusal_phrase")} | judges
    scores = {}
    for name, judge in everyone.items():
        scores[name] = judge_scores(judge, items)
        if name != "toy":
            scores[f"{name}.toy_forms"] = judge_scores(judge, toy_items(items))
    return scores


def verdicts(outputs: dict[str, list[dict]], requests_by_id: dict[str, dict]) -> list[dict]:
    """Every judged completion of one model: behaviour requests (source harmful_request / benign_request) and every
    attack (source = the attack's name)."""
    rows = [{**r, "source": "harmful_request" if requests_by_id[r["id"]]["harmful"] else "benign_request"}
            for r in outputs["requests"]]
    for name, records in outputs.items():
        if name.startswith("attack_"):
            rows += [{**r, "source": name.removeprefix("attack_")} for r in records]
    return rows


def finite(metrics: dict) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def evaluate(params: Params) -> None:
    cfg = params.evaluate
    world = load_world(WORLD_DIR)
    judges = make_judges(cfg, world["requests"])
    judge, others = judges[cfg.judge], {n: j for n, j in judges.items() if n != cfg.judge}
    requests_by_id = {r["id"]: r for r in world["requests"]}
    results: dict[str, dict[str, float]] = {}
    agreement: dict[str, dict[str, dict]] = {}
    # one tick per model's behaviour evaluation and per attack on it: the stage runs for minutes
    progress = tqdm(total=len(cfg.models) * (1 + len(params.attacks.attacks)), desc="[evaluate] models x attacks",
                    dynamic_ncols=True)
    with progress, stage_run(params.tracking, "evaluate", section_dict(params, "evaluate")) as run:
        for role in cfg.models:
            progress.set_postfix_str(f"{role}: behaviour")
            model, tokenizer = load_saved(MODELS_DIR / role, params.model.device, params.model.dtype)
            metrics, outputs = evaluate_model(model, tokenizer, world, cfg.split, judge, cfg.max_new_tokens,
                                              cfg.batch_size)
            progress.update()
            progress.set_postfix_str(f"{role}: attacks")
            attacks = run_attack_suite(model, tokenizer, split_of(world["requests"], cfg.split), params.attacks,
                                       judge, support=split_of(world["requests"], "train"),
                                       on_attack_done=lambda name: progress.update())
            metrics.update(asr_row(attacks))
            outputs.update({f"attack_{name}": entry["records"] for name, entry in attacks.items()})
            agreement[role] = {}
            for name, other in others.items():
                stats, disagreements = compare_judges(verdicts(outputs, requests_by_id), requests_by_id, other)
                agreement[role][name] = stats
                metrics.update({f"judge.{name}.kappa": stats["kappa"], f"judge.{name}.agreement": stats["agreement"]})
                write_jsonl(JUDGES_DIR / "disagreements" / f"{role}.{name}.jsonl", disagreements)
            results[role] = metrics
            progress.write(f"[evaluate] {role}: " + ", ".join(f"{k}={metrics[k]:.3f}" for k in BAR_KEYS
                                                              if isinstance(metrics.get(k), (int, float))))
            for name, rows in outputs.items():
                write_jsonl(REPORTS_DIR / "predictions" / role / f"{name}.jsonl", rows)
            run.log_metrics({f"{role}.{k}": v for k, v in finite(metrics).items()})
            card = json.loads((MODELS_DIR / role / MODEL_CARD).read_text())
            if card.get("version"):
                current = model_version_description(params.tracking, card["registered_name"], card["version"])
                record_model_evaluation(params.tracking, card, finite(metrics),
                                        with_evaluation(current, evaluation_summary(metrics, cfg.split)))
        metrics_path = write_metrics("evaluate", results)
        scores = score_judges(judges, world["requests"])
        write_metrics("judges", {name: {k: v for k, v in s.items() if k != "errors"} for name, s in scores.items()})
        write_jsonl(JUDGES_DIR / "judge_set_errors.jsonl",
                    [{"judge": name, **e} for name, s in scores.items() for e in s["errors"]])
        (JUDGES_DIR / "judge_set.md").write_text(judge_set_markdown(scores))
        (JUDGES_DIR / "agreement.md").write_text(agreement_markdown(agreement, cfg.judge))
        run.log_metrics({f"judges.{name}.{k}": s[k] for name, s in scores.items()
                         for k in ("accuracy", "false_compliance", "false_refusal", "false_incoherent")})
        plot_metric_bars(results, BAR_KEYS, PLOTS_DIR / "evaluate.png", f"behaviour on the {cfg.split} split",
                         ylabel="rate (fraction of prompts)")
        asr_keys = [f"asr.{name}" for name in params.attacks.attacks]
        plot_asr_heatmap(results, list(params.attacks.attacks), PLOTS_DIR / "asr_matrix.png",
                         f"attack success rate, model x attack ({cfg.judge} judge)")
        (REPORTS_DIR / "asr_matrix.md").write_text(asr_matrix_markdown(results, asr_keys))
        run.log_artifact(PLOTS_DIR / "evaluate.png", "plots")
        run.log_artifact(PLOTS_DIR / "asr_matrix.png", "plots")
        run.log_artifact(REPORTS_DIR / "asr_matrix.md", "reports")
        run.log_artifact(JUDGES_DIR, "judges")
        run.log_artifact(REPORTS_DIR / "predictions", "predictions")
    worst = max(((role, k.removeprefix("asr."), m[k]) for role, m in results.items() for k in asr_keys if k in m),
                key=lambda t: t[2], default=None)
    stage_done("evaluate", [metrics_path, PLOTS_DIR / "evaluate.png", PLOTS_DIR / "asr_matrix.png",
                            REPORTS_DIR / "asr_matrix.md"],
               {"models": len(results), **({"highest_asr": f"{worst[2]:.2f} ({worst[0]} x {worst[1]})"}
                                           if worst else {})})


def main() -> None:
    run_stage("evaluate", evaluate)


if __name__ == "__main__":
    main()
