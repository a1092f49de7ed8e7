"""What the A/B benchmarks of issue 19 item 1 (ab_architecture, ab_matching, ab_recall, ab_wide_pool) share: the base
recipe's training settings as command-line overrides, and the two option names of a world A/B prompt."""
import argparse

from latlab.config import BaseTrainConfig, Params

OVERRIDES = (("steps", int, "training steps"), ("lr", float, "peak learning rate"),
             ("seed", int, "model initialisation and batch seed"))


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """--steps, --lr and --seed, each defaulting to params.yaml's base section."""
    for name, kind, what in OVERRIDES:
        parser.add_argument(f"--{name}", type=kind, default=None, help=f"{what} (default: params.yaml's base.{name})")


def training_config(params: Params, args: argparse.Namespace) -> BaseTrainConfig:
    """params.yaml's base section with the --steps, --lr and --seed given on the command line."""
    return params.base.model_copy(update={name: getattr(args, name) for name, _, _ in OVERRIDES
                                          if getattr(args, name) is not None})


def options(prompt: str) -> tuple[str, str]:
    """The names after '( A ) ' and '( B ) ' in an A/B prompt of the world's letter-first layout (AB_TEMPLATES)."""
    return prompt.split("( A ) ")[1].split(" ")[0], prompt.split("( B ) ")[1].split(" ")[0]
