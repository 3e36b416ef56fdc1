import math

import numpy as np
import pytest
from scipy import stats

from raysem.report.stats import (
    bootstrap_ci,
    bootstrap_corr_ci,
    bootstrap_ratio_ci,
    bootstrap_ratio_difference_ci,
    difference_ci,
    paired_difference,
    sign_flip_p_value,
)


def test_constant_values_give_a_zero_width_interval():
    est, low, high = bootstrap_ci([0.25] * 12)
    assert est == low == high == pytest.approx(0.25)


def test_two_point_sample_has_the_hand_computed_percentiles():
    # Resampled means of {0, 1} are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% quantiles are the extremes.
    est, low, high = bootstrap_ci([0.0, 1.0], n_boot=4000, method="percentile")
    assert (est, low, high) == (0.5, 0.0, 1.0)


def test_nan_values_are_dropped_not_counted_as_zero():
    assert bootstrap_ci([1.0, math.nan, 1.0]) == (1.0, 1.0, 1.0)


def test_single_value_has_an_estimate_but_no_interval():
    est, low, high = bootstrap_ci([0.7])
    assert est == 0.7 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert all(math.isnan(v) for v in bootstrap_ci([math.nan, math.nan]))


def test_same_seed_same_interval_other_seed_differs():
    values = np.random.default_rng(3).normal(size=40)
    assert bootstrap_ci(values, seed=5) == bootstrap_ci(values, seed=5)
    assert bootstrap_ci(values, seed=5) != bootstrap_ci(values, seed=6)


def test_invalid_arguments_fail():
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1.0, 2.0], alpha=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([1.0, 2.0], n_boot=0)


def test_ratio_resamples_whole_units():
    # Unit 0: 3 of 4, unit 1: 0 of 1. Resamples give 6/8, 3/5 or 0/2.
    est, low, high = bootstrap_ratio_ci([3, 0], [4, 1], n_boot=4000, method="percentile")
    assert est == pytest.approx(0.6)
    assert (low, high) == (0.0, 0.75)
    # Units without facts carry no information.
    assert bootstrap_ratio_ci([1, 0, 1], [2, 0, 2]) == (0.5, 0.5, 0.5)


def test_paired_difference_recovers_a_known_shift():
    rng = np.random.default_rng(1)
    a = {("s", i): float(v) for i, v in enumerate(rng.uniform(0.1, 0.4, size=60))}
    b = {k: v + 0.05 + float(rng.normal(scale=0.02)) for k, v in a.items()}
    out = paired_difference(a, b)
    assert out["n_pairs"] == 60
    assert out["low"] < 0.05 < out["high"]
    assert out["low"] > 0
    assert out["delta"] == pytest.approx(np.mean([b[k] - a[k] for k in a]))
    assert out["share_b_greater"] > 0.9


def test_paired_difference_pairs_by_key_only():
    a = {1: 0.2, 2: 0.4, 3: 0.5, 4: math.nan}
    b = {2: 0.6, 1: 0.2, 4: 0.9, 5: 0.1}
    out = paired_difference(a, b)
    # Pairs 1 (+0.0) and 2 (+0.2); key 4 has a NaN side, 3 and 5 have no partner.
    assert out["n_pairs"] == 2
    assert out["delta"] == pytest.approx(0.1)
    assert out["share_b_greater"] == 0.5
    assert (out["mean_a"], out["mean_b"]) == pytest.approx((0.3, 0.4))
    assert (out["only_a"], out["only_b"]) == (1, 1)
    assert math.isnan(paired_difference({1: 0.1}, {2: 0.3})["delta"])


def test_unpaired_difference():
    est, low, high = difference_ci([0.1] * 5, [0.3] * 7)
    assert (est, low, high) == pytest.approx((0.2, 0.2, 0.2))


def test_correlation_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = 2 * x + rng.normal(scale=0.1, size=200)
    est, low, high = bootstrap_corr_ci(x, y)
    assert est == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert 0.99 < low <= est <= high <= 1.0
    # Same numbers as the generic bootstrap with a correlation statistic (same resamples).
    generic = bootstrap_ci(np.c_[x, y], stat=lambda a: np.corrcoef(a[:, 0], a[:, 1])[0, 1])
    assert (est, low, high) == pytest.approx(tuple(generic))
    assert math.isnan(bootstrap_corr_ci([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]).estimate)
    assert bootstrap_corr_ci([1.0, 2.0, math.nan], [2.0, 4.0, 5.0])[0] == pytest.approx(1.0)


def test_bca_is_the_default_and_corrects_a_skewed_sample():
    values = np.random.default_rng(2).exponential(size=30)
    bca = bootstrap_ci(values, seed=4)
    percentile = bootstrap_ci(values, seed=4, method="percentile")
    want = stats.bootstrap(
        (values,), np.mean, n_resamples=2000, method="BCa", rng=np.random.default_rng(4)
    ).confidence_interval
    assert (bca.low, bca.high) == pytest.approx((want.low, want.high))
    assert bca.estimate == percentile.estimate == pytest.approx(values.mean())
    assert bca.low > percentile.low and bca.high > percentile.high  # right skew moves BCa up


def test_sign_flip_test_is_exact_for_few_pairs():
    # 2^3 sign patterns of (0.1, 0.2, 0.3): only all-plus and all-minus reach |mean| >= 0.2.
    assert sign_flip_p_value([0.1, 0.2, 0.3]) == pytest.approx(2 / 8)
    assert sign_flip_p_value([0.0, 0.2]) == pytest.approx(1.0)
    assert sign_flip_p_value([0.0, 0.0]) == 1.0 and math.isnan(sign_flip_p_value([]))
    rng = np.random.default_rng(1)
    a = {i: float(v) for i, v in enumerate(rng.uniform(0.1, 0.4, size=60))}
    shifted = paired_difference(a, {k: v + 0.05 + float(rng.normal(scale=0.02)) for k, v in a.items()})
    assert shifted["p_value"] < 1e-3
    assert math.isnan(paired_difference({1: 0.1}, {1: 0.3})["p_value"])


def test_ratio_difference_resamples_units_with_both_parts():
    # Unit 1: a 1/2, b 0/2; unit 2: a 2/2, b 1/2. Pooled: 1/4 - 3/4 = -0.5, and every resample of whole
    # units gives -0.5 too (each unit's own difference is -0.5): a zero-width interval. Resampling the
    # two shares independently would not see that they move together.
    assert bootstrap_ratio_difference_ci([1, 2], [2, 2], [0, 1], [2, 2]) == (-0.5, -0.5, -0.5)
    assert difference_ci([0.5, 1.0], [0.0, 0.5]).low < -0.5
    assert all(math.isnan(v) for v in bootstrap_ratio_difference_ci([1, 1], [2, 2], [0, 0], [0, 0]))
    est, low, high = bootstrap_ratio_difference_ci([1], [2], [2], [2])
    assert est == 0.5 and math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        bootstrap_ratio_difference_ci([1, 2], [2, 2], [0], [2])
