"""Intervals and verdicts for conclusions drawn from a few seeds (issue 14): a percentile bootstrap of a mean over
seeds, the paired bootstrap of a difference over seeds, the Wilson interval of a rate with its N, and the verdict rule
of the science scorecard.

Small-N caveat, stated once: with 3 seeds a percentile bootstrap of the mean can only return values between the
smallest and the largest seed (each resample is 3 draws from 3 values, and all 3 draws equal the smallest with
probability 1/27 > 2.5%), so the 95% interval is the seeds' range. "Supported" then means every seed's effect lies on
the claimed side: strict, but no stronger than the data. More seeds narrow it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

SUPPORTED, REFUTED, INCONCLUSIVE = "supported", "refuted", "inconclusive"
DIRECTIONS = ("greater", "less")


def bootstrap_mean_ci(values: Sequence[float], samples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one value per seed): `samples` resamples of the seeds
    with replacement, the (1-confidence)/2 and (1+confidence)/2 quantiles of the resampled means. Deterministic for a
    given `seed` (numpy default_rng). One value gives the degenerate interval (v, v); none raises ValueError."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("bootstrap_mean_ci: no values")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(samples, data.size))].mean(axis=1)  # [samples]
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def paired_difference_ci(treated: Sequence[float], control: Sequence[float], samples: int, confidence: float,
                         seed: int) -> tuple[float, float]:
    """Paired bootstrap interval of mean(treated - control): `treated[i]` and `control[i]` come from the same seed
    (same data, same upstream models), so seeds are resampled as pairs, i.e. the bootstrap runs over the per-seed
    differences. ValueError when the lengths differ."""
    if len(treated) != len(control):
        raise ValueError(f"paired_difference_ci: {len(treated)} treated values against {len(control)} controls")
    differences = np.asarray(treated, dtype=float) - np.asarray(control, dtype=float)
    return bootstrap_mean_ci(differences, samples, confidence, seed)


def wilson_interval(rate: float, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a binomial rate observed on `n` trials (e.g. ASR over n prompts); (0, 1) for n = 0.
    Treats the n trials as independent: pooled over prompts x seeds it ignores the spread between seeds."""
    if n <= 0:
        return 0.0, 1.0
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"wilson_interval: rate {rate} is not in [0, 1]")
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def verdict(ci: tuple[float, float], direction: str, n_seeds: int, *, min_seeds: int, threshold: float = 0.0) -> str:
    """The scorecard's rule: a claim says the effect is `direction` ("greater" / "less") than `threshold` (0 for a
    difference). The interval entirely on the claimed side -> supported; entirely on the other side -> refuted (an
    interval touching the threshold is on neither side); otherwise, or with fewer than `min_seeds` seeds (params
    `study.min_seeds`, at least 2: one run is no conclusion, and with 2 the percentile interval is just the two
    values) -> inconclusive. ValueError for an unknown direction or `min_seeds` < 2."""
    if direction not in DIRECTIONS:
        raise ValueError(f"verdict: direction {direction!r} is not one of {DIRECTIONS}")
    if min_seeds < 2:
        raise ValueError(f"verdict: min_seeds {min_seeds} < 2 would draw a conclusion from one run")
    if n_seeds < min_seeds:
        return INCONCLUSIVE
    low, high = ci
    above, below = low > threshold, high < threshold
    if above or below:
        return SUPPORTED if above == (direction == "greater") else REFUTED
    return INCONCLUSIVE
