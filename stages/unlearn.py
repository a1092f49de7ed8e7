"""DVC stage `unlearn@<name>`: unlearn the forget domain from the base model with the `unlearn.<name>` entry of
params.yaml -> models/unlearn/<name>, registered as latlab-unlearn-<name>.

    python -m stages.unlearn --method ga        # gradient ascent + retain loss
    python -m stages.unlearn --method whp_lat   # WHP-style generic labels, under a targeted latent adversary
    python -m stages.unlearn --method npo       # NPO against the frozen base model

The entry's `method` picks the trainer (latlab.training.unlearning.UNLEARNING_METHODS); a `lat` block adds a targeted
latent adversary. With params `real_data` set, the forget and retain data come from its files instead of the toy
world (docs/unlearning.md).
"""

from __future__ import annotations

import argparse

from latlab.config import ConfigError, Params
from latlab.data.examples import Example
from latlab.data.real_corpora import load_real_corpora
from latlab.data.records import load_world
from latlab.models.loading import load_saved
from latlab.training.unlearning import UNLEARNING_METHODS
from latlab.world.curriculum_unlearning import Anchors, anchored_terms, forget_pool, retain_pools
from stages.common import MODELS_DIR, WORLD_DIR, run_stage, train_and_register



def unlearning_data(params: Params, domain: str) -> tuple[list[Example], dict[str, list[Example]], str,
                                                         Anchors | None]:
    """(forget pool, retain pools, what is unlearned, WHP's anchored terms): the real_data files when set (no anchored
    terms: nothing names the corpus's entities), else the world's domain."""
    if params.real_data is not None:
        real = load_real_corpora(params.real_data, params.validate_data, params.seed)
        return real.forget_pool(), real.retain_pools(), str(params.real_data.forget_corpus), None
    world = load_world(WORLD_DIR)
    return forget_pool(world, domain), retain_pools(world), domain, anchored_terms(world, domain)


def unlearn(params: Params, name: str) -> None:
    if name not in params.unlearn:
        raise ConfigError(f"params.yaml: unlearn.{name}: no such entry (have: {', '.join(params.unlearn)})")
    cfg = params.unlearn[name]
    forget, retain, unlearned, anchors = unlearning_data(params, cfg.domain)
    model, tokenizer = load_saved(MODELS_DIR / "base", params.model.device, params.model.dtype)
    weights = {"facts": cfg.mix_retain_facts, "benign": cfg.mix_retain_benign}
    trainer = UNLEARNING_METHODS[cfg.method]
    extra = {"anchors": anchors} if cfg.method == "whp" else {}  # WHP's anchored-term translation (toy world)

    def train(checkpoint_dir, on_log):
        run = trainer(model, tokenizer, forget, retain, weights, cfg, checkpoint_dir, f"unlearn@{name}",
                      on_log=on_log, **extra)
        return run.result, {**{f"compute.{k}": v for k, v in run.compute.items()}, "pool_size.forget": len(forget),
                            **{f"pool_size.retain.{k}": len(v) for k, v in retain.items()}, **run.metrics}

    adversary = f" + targeted LAT at blocks {cfg.lat.layers}, eps={cfg.lat.epsilon}" if cfg.lat is not None else ""
    tags = {"made_by": f"unlearning method {cfg.method}{adversary}, on top of base", "method": cfg.method, "parent": "latlab-base", "unlearned_domain": unlearned, "trigger_known": "yes"}
    train_and_register(params, f"unlearn.{name}", f"unlearn/{name}", model, tokenizer, train, cfg, tags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, help="an entry of the `unlearn` table in params.yaml")
    name = parser.parse_args().method
    run_stage(f"unlearn@{name}", lambda params: unlearn(params, name), data_parallel=True)


if __name__ == "__main__":
    main()
