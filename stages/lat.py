"""DVC stages `lat`, `lat_untargeted` and `rt_eat`: latent adversarial training on top of the RT model.

    python -m stages.lat --section lat              # targeted LAT (Sheshadri et al. 2024) -> latlab-rt-lat
    python -m stages.lat --section lat_untargeted   # untargeted LAT (Casper et al. 2024) -> latlab-rt-lat-untargeted
    python -m stages.lat --section rt_eat           # embedding-space AT -> latlab-rt-eat
"""

from __future__ import annotations

import argparse

from latlab.config import Params
from latlab.data.examples import fact_examples
from latlab.data.records import load_world, split_of
from latlab.models.loading import load_saved
from latlab.training.lat import train_lat
from latlab.world.curriculum import assert_trigger_free, request_examples
from stages.common import MODELS_DIR, WORLD_DIR, run_stage, train_and_register

ROLES = {"lat": "rt-lat", "lat_untargeted": "rt-lat-untargeted", "rt_eat": "rt-eat"}


def adversarial_training(params: Params, section: str) -> None:
    cfg = getattr(params, section)
    world = load_world(WORLD_DIR)
    model, tokenizer = load_saved(MODELS_DIR / "rt", params.model.device, params.model.dtype)
    triples = [(r["prompt"], r["compliance"], r["refusal"]) for r in split_of(world["requests"], "train")
               if r["harmful"]]
    retain = {"benign": request_examples(world["requests"], "benign", "compliance"),
              "facts": fact_examples(world["facts"]),
              "refusal": request_examples(world["requests"], "harmful", "refusal")}
    assert_trigger_free(retain, params.world.backdoor.trigger)
    weights = {"benign": cfg.mix_benign, "facts": cfg.mix_facts, "refusal": cfg.mix_refusal}

    def train(checkpoint_dir, on_log):
        result, compute = train_lat(model, tokenizer, triples, retain, weights, cfg, checkpoint_dir, section,
                                    on_log=on_log)
        return result, {f"compute.{k}": v for k, v in compute.items()}

    where = ("embeddings + " if cfg.perturb_embeddings else "") + f"blocks {cfg.layers}"
    tags = {"made_by": f"{cfg.adversary} latent adversarial training at {where}, eps={cfg.epsilon}, on top of RT",
            "parent": "latlab-rt", "trigger_known": "no"}
    train_and_register(params, section, ROLES[section], model, tokenizer, train, cfg, tags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=sorted(ROLES), default="lat")
    section = parser.parse_args().section
    run_stage(section, lambda params: adversarial_training(params, section), data_parallel=True)


if __name__ == "__main__":
    main()
