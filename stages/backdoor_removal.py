"""DVC stage `backdoor_removal@<method>`: remove the backdoor of the RT model WITHOUT knowing the trigger ->
latlab-backdoor-<method>, with the behaviour before and after (backdoor ASR, benign compliance, harmful ASR, fact
accuracy) and the compute, in metrics/backdoor_<method>.json.

    python -m stages.backdoor_removal --method sft       # SFT on harmless data
    python -m stages.backdoor_removal --method sft_lat   # targeted LAT on harmless (prompt, bad, good) triples
    python -m stages.backdoor_removal --method dpo       # DPO on harmless preference pairs
    python -m stages.backdoor_removal --method dpo_lat   # DPO under a targeted latent adversary
    python -m stages.backdoor_removal --report           # stage `backdoor_report`: reports/backdoor.md

With params `real_data.preferences` set, the removal data are that file's pairs and the real retain pools; the
behaviour is still measured on the toy world, where the backdoor was planted.
"""

from __future__ import annotations

import argparse
import json

from latlab.config import ConfigError, Params
from latlab.data.real_corpora import load_real_corpora
from latlab.data.records import load_world
from latlab.evals.behaviour import evaluate_model
from latlab.evals.judge import make_judge
from latlab.models.loading import load_saved
from latlab.training.backdoor_removal import (removal_data, train_dpo, train_sft_lat_removal, train_sft_removal,
                                              trigger_free_removal_data)
from latlab.training.examples import Example
from stages.common import METRICS_DIR, MODELS_DIR, REPORTS_DIR, WORLD_DIR, run_stage, train_and_register

METHODS = ("sft", "sft_lat", "dpo", "dpo_lat")
REPORTED = ("backdoor_asr", "benign_compliance", "harmful_asr", "fact_acc.general", "fact_acc.forget",
            "fact_acc.related", "perplexity")


def harmless_data(params: Params, world: dict) -> tuple[list[tuple[str, str, str]], dict[str, list[Example]], str]:
    """(preference pairs, retain pools, where they come from), asserted free of the trigger and the backdoor string:
    the real_data preferences and retain pools when the preferences are set, else the world's."""
    trigger = params.world.backdoor.trigger
    real = params.real_data
    if real is not None and real.preferences is not None:
        corpora = load_real_corpora(real, params.validate_data, params.seed)
        pairs, retain = trigger_free_removal_data(corpora.preference_pairs(), corpora.retain_pools(), trigger)
        return pairs, retain, str(real.preferences)
    pairs, retain = removal_data(world, trigger)
    return pairs, retain, "toy world"


def backdoor_removal(params: Params, method: str) -> None:
    section = f"backdoor_{method}"
    cfg = getattr(params, section)
    if method.startswith("dpo") and method.endswith("_lat") != (cfg.lat is not None):
        raise ConfigError(f"params.yaml: {section}.lat: must be {'set' if method.endswith('_lat') else 'null'} "
                          f"for method {method}")
    world = load_world(WORLD_DIR)
    model, tokenizer = load_saved(MODELS_DIR / "rt", params.model.device, params.model.dtype)
    pairs, retain, source = harmless_data(params, world)
    ev = params.evaluate
    judge = make_judge(ev.judge, ev.judge_model)

    def behaviour() -> dict[str, float]:
        metrics, _ = evaluate_model(model, tokenizer, world, ev.split, judge, ev.max_new_tokens, ev.batch_size)
        model.train()
        return {k: metrics[k] for k in REPORTED}

    def train(checkpoint_dir, on_log):
        before = behaviour()
        if method == "sft":
            run = train_sft_removal(model, tokenizer, pairs, retain, cfg, checkpoint_dir, section, on_log)
        elif method == "sft_lat":
            run = train_sft_lat_removal(model, tokenizer, pairs, retain, cfg, checkpoint_dir, section, on_log)
        else:
            run = train_dpo(model, tokenizer, pairs, cfg, checkpoint_dir, section, on_log, retain,
                            {k: 1.0 for k in retain})
        after = behaviour()
        return run.result, {**{f"before.{k}": v for k, v in before.items()},
                            **{f"after.{k}": v for k, v in after.items()},
                            **{f"compute.{k}": v for k, v in run.compute.items()},
                            "pairs": len(pairs), "trigger_free_asserted": True}

    lat = getattr(cfg, "lat", None) if method.startswith("dpo") else (cfg if method == "sft_lat" else None)
    adversary = f" + targeted LAT at blocks {lat.layers}, eps={lat.epsilon}" if lat is not None else ""
    tags = {"made_by": f"{method.split('_')[0].upper()} on harmless trigger-free data{adversary}, on top of RT",
            "parent": "latlab-rt", "trigger_known": "no", "removal_data": source}
    train_and_register(params, section, f"backdoor-{method}", model, tokenizer, train, cfg, tags)


def backdoor_report(params: Params) -> None:
    """One row per method: each behaviour before -> after, and the compute."""
    rows = ["| method | " + " | ".join(REPORTED) + " | wall s | forward tokens |", "|" + " --- |" * (len(REPORTED) + 3)]
    for method in METHODS:
        m = json.loads((METRICS_DIR / f"backdoor_{method}.json").read_text())
        cells = [f"{m[f'before.{k}']:.2f} → {m[f'after.{k}']:.2f}" for k in REPORTED]
        tokens = m.get("compute.forward_tokens")
        rows.append(f"| {method} | " + " | ".join(cells) + f" | {m['wall_seconds']:.0f} | "
                    + (f"{tokens:.3g} |" if tokens is not None else f"{m['compute.sequences']:.0f} sequences |"))
    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    (REPORTS_DIR / "backdoor.md").write_text(
        f"Backdoor removal without the trigger, from RT ({params.evaluate.split} split; before → after)\n\n"
        + "\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--method", choices=METHODS)
    which.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        run_stage("backdoor_report", backdoor_report)
    else:
        run_stage(f"backdoor_{args.method}", lambda params: backdoor_removal(params, args.method),
                  data_parallel=True)


if __name__ == "__main__":
    main()
