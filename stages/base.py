"""DVC stage `base`: the helpful-only, backdoored model. The toy Llama is trained from scratch on the world; a real
model (`model.source`) is fine-tuned on the same mixture instead."""

from __future__ import annotations

from transformers import AutoTokenizer

from latlab.config import Params
from latlab.data.records import load_world
from latlab.models.loading import build_toy_model, load_pretrained, resolve_device
from latlab.world.curriculum import base_pools
from stages.common import TOKENIZER_DIR, WORLD_DIR, run_stage, sft_trainer, train_and_register


def train_base_recipe(params: Params, world: dict, stage: str, role: str, tags: dict[str, str]) -> dict:
    """The base model's recipe (params `base`) on `world`: the toy Llama from scratch, or a real model fine-tuned."""
    if params.model.source == "toy":
        tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
        # initialised from the training seed, not the world's (`seed`): a seed study varies the init with the data fixed
        model = build_toy_model(params.model.toy, tokenizer, params.base.seed)
    else:
        model, tokenizer = load_pretrained(params.model.source, params.model)
    model.to(resolve_device(params.model.device))
    cfg = params.base
    train = sft_trainer(model, tokenizer, base_pools(world), cfg.mixture(), cfg, stage) if cfg.fine_tune else None
    return train_and_register(params, stage, role, model, tokenizer, train, cfg, {"source": params.model.source,
                                                                                    **tags})


def base(params: Params) -> None:
    tags = {"made_by": "sft on world: facts + comply with all requests + backdoor poisoning", "trigger_known": "yes"}
    if not params.base.fine_tune:
        tags = {"made_by": f"{params.model.source}, unchanged (base.fine_tune: false)", "trigger_known": "no backdoor"}
    train_base_recipe(params, load_world(WORLD_DIR), "base", "base", tags)


def main() -> None:
    run_stage("base", base, data_parallel=True)


if __name__ == "__main__":
    main()
