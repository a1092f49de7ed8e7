"""DVC stage `refusal`: refusal training (RT) of the base model, the baseline every later defence is compared with.
The backdoor trigger never appears in its data (asserted)."""

from __future__ import annotations

from latlab.config import Params
from latlab.data.records import load_world
from latlab.models.loading import load_saved
from latlab.world.curriculum import assert_trigger_free, refusal_pools
from stages.common import MODELS_DIR, WORLD_DIR, run_stage, sft_trainer, train_and_register


def refusal(params: Params) -> None:
    world = load_world(WORLD_DIR)
    model, tokenizer = load_saved(MODELS_DIR / "base", params.model.device, params.model.dtype)
    pools = refusal_pools(world)
    assert_trigger_free(pools, params.world.backdoor.trigger)
    cfg = params.refusal
    weights = {"harmful": cfg.mix_harmful, "benign": cfg.mix_benign, "facts": cfg.mix_facts}
    tags = {"made_by": "refusal training (sft): harmful -> refusal, benign -> help, fact replay",
            "parent": "latlab-base", "trigger_known": "no"}
    train = sft_trainer(model, tokenizer, pools, weights, cfg, "refusal")
    train_and_register(params, "refusal", "rt", model, tokenizer, train, cfg, tags)


def main() -> None:
    run_stage("refusal", refusal, data_parallel=True)


if __name__ == "__main__":
    main()
