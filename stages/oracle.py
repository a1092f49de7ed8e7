"""DVC stage `oracle`: the `base` recipe trained from scratch on the world WITHOUT the forget domain -> latlab-oracle.

The gold standard of unlearning (a model that never saw the domain), which only a synthetic world can build. A real
model (`model.source`) cannot be un-pretrained: the stage then fine-tunes it on the reduced world, which is no oracle,
and says so in the registry tags.
"""

from __future__ import annotations

from latlab.config import Params
from latlab.data.records import load_world
from latlab.world.curriculum_unlearning import world_without_domain
from stages.base import train_base_recipe
from stages.common import WORLD_DIR, run_stage


def oracle(params: Params) -> None:
    domain = params.oracle.domain
    world = world_without_domain(load_world(WORLD_DIR), domain)
    exact = "yes" if params.model.source == "toy" else "no (a pretrained model saw the domain)"
    tags = {"made_by": f"base recipe from scratch on the world without the {domain!r} domain", "trigger_known": "yes",
            "oracle_for": domain, "exact_oracle": exact}
    train_base_recipe(params, world, "oracle", "oracle", tags)


def main() -> None:
    run_stage("oracle", oracle, data_parallel=True)


if __name__ == "__main__":
    main()
