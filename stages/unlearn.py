"""DVC stage `unlearn@<method>`: unlearn the forget domain from the base model -> latlab-unlearn-<method>.

    python -m stages.unlearn --method ga        # gradient ascent + retain loss
    python -m stages.unlearn --method whp_lat   # WHP-style generic labels, under a targeted latent adversary
    python -m stages.unlearn --method rmu       # RMU (WMDP)

Each method reads its own params section `unlearn_<method>`; the `_lat` variants must set `lat` there. With params
`real_data` set, the forget and retain data come from its files instead of the toy world (docs/unlearning.md).
"""

from __future__ import annotations

import argparse

from latlab.config import ConfigError, Params
from latlab.data.real_corpora import load_real_corpora
from latlab.data.records import load_world
from latlab.models.loading import load_saved
from latlab.training.examples import Example
from latlab.training.unlearning import train_gradient_ascent, train_rmu, train_whp
from latlab.world.curriculum_unlearning import forget_pool, retain_pools
from stages.common import MODELS_DIR, WORLD_DIR, run_stage, train_and_register

METHODS = ("ga", "ga_lat", "whp", "whp_lat", "rmu", "rmu_lat")
TRAINERS = {"ga": train_gradient_ascent, "whp": train_whp, "rmu": train_rmu}
DESCRIPTIONS = {"ga": "gradient ascent on forget data + retain loss", "whp": "WHP-style generic-label fine-tuning",
                "rmu": "RMU: forget activations toward a scaled random direction"}


def unlearning_data(params: Params, domain: str) -> tuple[list[Example], dict[str, list[Example]], str]:
    """(forget pool, retain pools, what is unlearned): the real_data files when set, else the world's domain."""
    if params.real_data is not None:
        real = load_real_corpora(params.real_data, params.validate_data, params.seed)
        return real.forget_pool(), real.retain_pools(), str(params.real_data.forget_corpus)
    world = load_world(WORLD_DIR)
    return forget_pool(world, domain), retain_pools(world), domain


def unlearn(params: Params, method: str) -> None:
    section = f"unlearn_{method}"
    cfg = getattr(params, section)
    family = method.removesuffix("_lat")
    if method.endswith("_lat") != (cfg.lat is not None):
        raise ConfigError(f"params.yaml: {section}.lat: must be {'set' if method.endswith('_lat') else 'null'} "
                          f"for method {method}")
    forget, retain, unlearned = unlearning_data(params, cfg.domain)
    model, tokenizer = load_saved(MODELS_DIR / "base", params.model.device, params.model.dtype)
    weights = {"facts": cfg.mix_retain_facts, "benign": cfg.mix_retain_benign}

    def train(checkpoint_dir, on_log):
        run = TRAINERS[family](model, tokenizer, forget, retain, weights, cfg, checkpoint_dir, section, on_log=on_log)
        return run.result, {**{f"compute.{k}": v for k, v in run.compute.items()}, "pool_size.forget": len(forget),
                            **{f"pool_size.retain.{k}": len(v) for k, v in retain.items()}}

    adversary = f" + targeted LAT at blocks {cfg.lat.layers}, eps={cfg.lat.epsilon}" if cfg.lat is not None else ""
    tags = {"made_by": f"{DESCRIPTIONS[family]}{adversary}, on top of base", "parent": "latlab-base",
            "unlearned_domain": unlearned, "trigger_known": "yes"}
    train_and_register(params, section, f"unlearn-{method}", model, tokenizer, train, cfg, tags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=METHODS, required=True)
    method = parser.parse_args().method
    run_stage(f"unlearn_{method}", lambda params: unlearn(params, method), data_parallel=True)


if __name__ == "__main__":
    main()
