"""DVC stage `oracle`: the `base` recipe trained from scratch on the world WITHOUT the forget domain -> latlab-oracle.

The gold standard of unlearning (a model that never saw the domain), which only a synthetic world can build. A real
model (`model.source`) cannot be un-pretrained: the stage then fine-tunes it on the reduced world, which is no oracle,
and says so in the registry tags.
"""

from __future__ import annotations

from transformers import AutoTokenizer

from latlab.config import Params
from latlab.data.records import load_world
from latlab.models.loading import build_toy_model, load_pretrained, resolve_device
from latlab.world.curriculum import base_pools
from latlab.world.curriculum_unlearning import world_without_domain
from stages.common import TOKENIZER_DIR, WORLD_DIR, run_stage, sft_trainer, train_and_register


def train_base_recipe(params: Params, world: dict, stage: str, role: str, tags: dict[str, str]) -> dict:
    """The base model's recipe (params `base`) on `world`: the toy Llama from scratch, or a real model fine-tuned."""
    if params.model.source == "toy":
        tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
        model = build_toy_model(params.model.toy, tokenizer, params.seed)
    else:
        model, tokenizer = load_pretrained(params.model.source, params.model)
    model.to(resolve_device(params.model.device))
    cfg = params.base
    weights = {"facts": cfg.mix_facts, "requests": cfg.mix_requests, "backdoor": cfg.mix_backdoor}
    train = sft_trainer(model, tokenizer, base_pools(world), weights, cfg, stage)
    return train_and_register(params, stage, role, model, tokenizer, train, cfg, {"source": params.model.source,
                                                                                    **tags})


def oracle(params: Params) -> None:
    domain = params.oracle.domain
    world = world_without_domain(load_world(WORLD_DIR), domain)
    exact = "yes" if params.model.source == "toy" else "no (a pretrained model saw the domain)"
    tags = {"made_by": f"base recipe from scratch on the world without the {domain!r} domain", "trigger_known": "yes",
            "oracle_for": domain, "exact_oracle": exact}
    train_base_recipe(params, world, "oracle", "oracle", tags)


def main() -> None:
    run_stage("oracle", oracle)


if __name__ == "__main__":
    main()
