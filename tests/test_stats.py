"""latlab.report.stats: bootstrap intervals over seeds, the Wilson interval, the scorecard's verdict rule."""

import numpy as np
import pytest

from latlab.report.stats import (INCONCLUSIVE, REFUTED, SUPPORTED, bootstrap_mean_ci, paired_difference_ci, verdict,
                                 wilson_interval)


def test_bootstrap_ci_covers_the_mean_and_narrows_with_more_seeds():
    rng = np.random.default_rng(1)
    few, many = rng.normal(0.3, 0.1, size=5), rng.normal(0.3, 0.1, size=200)
    low, high = bootstrap_mean_ci(few, 2000, 0.95, seed=0)
    assert low < few.mean() < high
    low_many, high_many = bootstrap_mean_ci(many, 2000, 0.95, seed=0)
    assert low_many < many.mean() < high_many
    assert high_many - low_many < high - low
    assert 0.25 < low_many < 0.3 < high_many < 0.35  # the true mean 0.3, SE 0.007


def test_bootstrap_ci_is_deterministic_and_three_seeds_give_their_range():
    values = [0.1, 0.4, 0.7]
    assert bootstrap_mean_ci(values, 5000, 0.95, seed=3) == bootstrap_mean_ci(values, 5000, 0.95, seed=3)
    assert bootstrap_mean_ci(values, 5000, 0.95, seed=3) == pytest.approx((0.1, 0.7))  # see the module docstring
    assert bootstrap_mean_ci([0.2], 100, 0.95, seed=0) == (0.2, 0.2)
    with pytest.raises(ValueError):
        bootstrap_mean_ci([], 100, 0.95, seed=0)


def test_paired_interval_sees_a_consistent_difference_that_unpaired_spread_hides():
    control = [0.2, 0.5, 0.8]  # seeds differ a lot ...
    treated = [c - 0.1 for c in control]  # ... but within every seed the treatment lowers by 0.1
    low, high = paired_difference_ci(treated, control, 2000, 0.95, seed=0)
    assert low == pytest.approx(-0.1) and high == pytest.approx(-0.1)
    with pytest.raises(ValueError):
        paired_difference_ci([1.0], [1.0, 2.0], 100, 0.95, seed=0)


def test_wilson_interval_known_values():
    # 8 of 10: (0.4902, 0.9433) at 95% (Wilson 1927; e.g. statsmodels proportion_confint method="wilson")
    assert wilson_interval(0.8, 10, 0.95) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    low, high = wilson_interval(0.0, 40, 0.95)  # 0 of 40 still leaves up to ~8.8%
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.0876, abs=1e-4)  # z²/(n + z²)
    assert wilson_interval(0.5, 0, 0.95) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(1.5, 10, 0.95)


@pytest.mark.parametrize(("ci", "direction", "n", "expected"), [
    ((-0.3, -0.1), "less", 3, SUPPORTED),
    ((-0.3, -0.1), "greater", 3, REFUTED),
    ((0.1, 0.3), "greater", 3, SUPPORTED),
    ((0.1, 0.3), "less", 3, REFUTED),
    ((-0.1, 0.2), "less", 3, INCONCLUSIVE),
    ((-0.1, 0.2), "greater", 3, INCONCLUSIVE),
    ((0.0, 0.2), "greater", 3, INCONCLUSIVE),  # touching the threshold is not on its side
    ((0.1, 0.3), "greater", 1, INCONCLUSIVE),  # one run is no conclusion
    ((0.1, 0.3), "greater", 2, INCONCLUSIVE),  # nor two (min_seeds 3, params study.min_seeds)
])
def test_verdict_rule(ci, direction, n, expected):
    assert verdict(ci, direction, n, min_seeds=3) == expected


def test_verdict_threshold_and_bad_direction():
    assert verdict((-0.04, -0.01), "greater", 3, min_seeds=3, threshold=-0.05) == SUPPORTED
    assert verdict((-0.04, -0.01), "greater", 3, min_seeds=3) == REFUTED
    with pytest.raises(ValueError):
        verdict((0.1, 0.2), "bigger", 3, min_seeds=3)
    with pytest.raises(ValueError, match="min_seeds"):
        verdict((0.1, 0.2), "greater", 3, min_seeds=1)
