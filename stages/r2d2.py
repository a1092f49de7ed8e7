"""DVC stage `r2d2`: R2D2 (HarmBench) GCG adversarial training on top of the RT model -> latlab-r2d2."""

from __future__ import annotations

from latlab.config import Params
from latlab.data.examples import fact_examples
from latlab.data.records import load_world, split_of
from latlab.models.loading import load_saved
from latlab.training.r2d2 import train_r2d2
from latlab.world.curriculum import request_examples
from stages.common import MODELS_DIR, WORLD_DIR, run_stage, train_and_register


def r2d2(params: Params) -> None:
    cfg = params.r2d2
    world = load_world(WORLD_DIR)
    model, tokenizer = load_saved(MODELS_DIR / "rt", params.model.device, params.model.dtype)
    harmful = [r for r in split_of(world["requests"], "train") if r["harmful"]]
    sft_pools = {"benign": request_examples(world["requests"], "benign", "compliance"),
                 "facts": fact_examples(world["facts"]),
                 "harmful": request_examples(world["requests"], "harmful", "refusal")}

    def train(checkpoint_dir, on_log):
        result = train_r2d2(model, tokenizer, harmful, sft_pools, cfg, checkpoint_dir, "r2d2", on_log=on_log)
        return result, {f"compute.{k}": v for k, v in result.compute.items()}

    tags = {"made_by": f"R2D2: GCG adversarial training, pool {cfg.pool_size}, {cfg.gcg_steps} GCG steps/step, "
                       f"on top of RT", "parent": "latlab-rt", "trigger_known": "no"}
    train_and_register(params, "r2d2", "r2d2", model, tokenizer, train, cfg, tags)


def main() -> None:
    run_stage("r2d2", r2d2, data_parallel=True)


if __name__ == "__main__":
    main()
