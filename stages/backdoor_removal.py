"""DVC stage `backdoor_removal@<name>`: remove the backdoor of the RT model WITHOUT knowing the trigger, with the
`backdoor_removal.<name>` entry of params.yaml -> models/backdoor_removal/<name> (latlab-backdoor_removal-<name>), with
the behaviour before and after (backdoor ASR, benign compliance, harmful ASR, fact accuracy) and the compute, in
metrics/backdoor_removal/<name>.json.

    python -m stages.backdoor_removal --method sft       # SFT on harmless data
    python -m stages.backdoor_removal --method sft_lat   # targeted LAT on harmless (prompt, bad, good) triples
    python -m stages.backdoor_removal --method dpo_lat   # DPO under a targeted latent adversary

The entry's `method` picks the trainer (latlab.training.backdoor_removal.REMOVAL_METHODS). With params
`real_data.preferences` set, the removal data are that file's pairs and the real retain pools; the behaviour is
still measured on the toy world, where the backdoor was planted.
"""

from __future__ import annotations

import argparse

from latlab.config import ConfigError, Params
from latlab.data.examples import Example
from latlab.data.real_corpora import load_real_corpora
from latlab.data.records import load_world
from latlab.evals.behaviour import evaluate_model
from latlab.evals.judge_kinds import make_judge
from latlab.models.loading import load_saved
from latlab.training.backdoor_removal import REMOVAL_METHODS, removal_data, trigger_free_removal_data
from latlab.world.curriculum_unlearning import harmful_preference_pairs
from stages.common import MODELS_DIR, WORLD_DIR, run_stage, train_and_register

TOY = "toy world"
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
    return pairs, retain, TOY


def backdoor_removal(params: Params, name: str) -> None:
    if name not in params.backdoor_removal:
        raise ConfigError(f"params.yaml: backdoor_removal.{name}: no such entry "
                          f"(have: {', '.join(params.backdoor_removal)})")
    cfg = params.backdoor_removal[name]
    world = load_world(WORLD_DIR)
    model, tokenizer = load_saved(MODELS_DIR / "rt", params.model.device, params.model.dtype)
    pairs, retain, source = harmless_data(params, world)
    # the adversary's targets: on the toy world the pairs whose rejected side is harmful compliance; a real preference
    # file's rejected sides (HH-RLHF harmless-base) are all the more harmful answer, so every pair
    attack = harmful_preference_pairs(world) if source == TOY else None
    ev = params.evaluate
    judge = make_judge(ev.judge, ev.judge_model, world["requests"])
    trainer = REMOVAL_METHODS[cfg.method]

    def behaviour() -> dict[str, float]:
        metrics, _ = evaluate_model(model, tokenizer, world, ev.split, judge, ev.max_new_tokens, ev.batch_size)
        model.train()
        return {k: metrics[k] for k in REPORTED}

    def train(checkpoint_dir, on_log):
        before = behaviour()
        run = trainer(model, tokenizer, pairs, retain, cfg, checkpoint_dir, f"backdoor_removal@{name}", on_log,
                      attack=attack)
        after = behaviour()
        return run.result, {**{f"before.{k}": v for k, v in before.items()},
                            **{f"after.{k}": v for k, v in after.items()},
                            **{f"compute.{k}": v for k, v in run.compute.items()},
                            "pairs": len(pairs), "attacked_pairs": len(attack if attack is not None else pairs),
                            "trigger_free_asserted": True}

    adversary = f" + targeted LAT at blocks {cfg.lat.layers}, eps={cfg.lat.epsilon}" if cfg.lat is not None else ""
    tags = {"made_by": f"{cfg.method.upper()} on harmless trigger-free data{adversary}, on top of RT",
            "method": cfg.method, "parent": "latlab-rt", "trigger_known": "no", "removal_data": source}
    train_and_register(params, f"backdoor_removal.{name}", f"backdoor_removal/{name}", model, tokenizer, train, cfg,
                       tags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, help="an entry of the `backdoor_removal` table in params.yaml")
    args = parser.parse_args()
    run_stage(f"backdoor_removal@{args.method}", lambda params: backdoor_removal(params, args.method),
              data_parallel=True)


if __name__ == "__main__":
    main()
