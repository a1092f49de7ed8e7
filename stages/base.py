"""DVC stage `base`: the helpful-only, backdoored model. The toy Llama is trained from scratch on the world; a real
model (`model.source`) is fine-tuned on the same mixture instead."""

from __future__ import annotations

from transformers import AutoTokenizer

from latlab.config import Params
from latlab.data.records import load_world
from latlab.models.loading import build_toy_model, load_pretrained, resolve_device
from latlab.world.curriculum import base_pools
from stages.common import TOKENIZER_DIR, WORLD_DIR, run_stage, sft_trainer, train_and_register


def base(params: Params) -> None:
    world = load_world(WORLD_DIR)
    if params.model.source == "toy":
        tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
        model = build_toy_model(params.model.toy, tokenizer, params.seed)
    else:
        model, tokenizer = load_pretrained(params.model.source, params.model)
    model.to(resolve_device(params.model.device))
    cfg = params.base
    weights = {"facts": cfg.mix_facts, "requests": cfg.mix_requests, "backdoor": cfg.mix_backdoor}
    tags = {"made_by": "sft on world: facts + comply with all requests + backdoor poisoning",
            "source": params.model.source, "trigger_known": "yes"}
    train = sft_trainer(model, tokenizer, base_pools(world), weights, cfg, "base")
    train_and_register(params, "base", "base", model, tokenizer, train, cfg, tags)


def main() -> None:
    run_stage("base", base)


if __name__ == "__main__":
    main()
