"""Counting the work a method does through a model, so that methods of different shapes (GCG search, latent PGD,
LAT, R2D2, unlearning) compare in one unit.

The unit is tokens through the model, forward and backward: for an N-parameter model a forward token costs about 2N
FLOPs and a backward token about 4N more, so 2·forward + 4·backward tokens is the FLOP proxy the reports use. A pass
over only part of the network (LAT's prefix-cached inner loop runs the blocks above the attacked layer) counts the
fraction of the blocks it runs. Model calls are counted too, for the attacks' metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

TOKEN_KEYS = ("forward_tokens", "backward_tokens")


def flop_proxy(metrics: dict) -> float | None:
    """2·forward + 4·backward tokens from a training stage's metrics (`compute.forward_tokens`,
    `compute.backward_tokens`); None when the stage recorded no token counts."""
    forward, backward = metrics.get("compute.forward_tokens"), metrics.get("compute.backward_tokens")
    return None if forward is None or backward is None else 2 * forward + 4 * backward


@dataclass
class Compute:
    forward_passes: int = 0
    backward_passes: int = 0
    forward_tokens: float = 0
    backward_tokens: float = 0

    def forward(self, tokens: float, passes: int = 1) -> None:
        self.forward_passes += passes
        self.forward_tokens += tokens

    def backward(self, tokens: float, passes: int = 1) -> None:
        self.backward_passes += passes
        self.backward_tokens += tokens

    def tokens(self) -> dict[str, float]:
        """The FLOP-proxy counts only: pass counts are left out because they do not add up across data-parallel
        processes (each makes the same calls on its shard)."""
        return {key: getattr(self, key) for key in TOKEN_KEYS}

    def as_dict(self) -> dict[str, float]:
        return dict(vars(self))

    @staticmethod
    def by_side(adversary: Compute, defender: Compute) -> dict[str, float]:
        """Token counts of an adversarial training run: adversary_*, defender_* and their totals (the metrics keys
        `compute.<key>` of the LAT, unlearning and backdoor-removal stages)."""
        return {**{f"adversary_{k}": v for k, v in adversary.tokens().items()},
                **{f"defender_{k}": v for k, v in defender.tokens().items()},
                **{k: getattr(adversary, k) + getattr(defender, k) for k in TOKEN_KEYS}}
