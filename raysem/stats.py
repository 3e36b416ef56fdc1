"""Percentile-bootstrap confidence intervals for trial-level numbers and paired comparisons.

Every interval is a 95% percentile bootstrap by default: resample the units (trials, or pairs
of trials) with replacement ``n_boot`` times, recompute the statistic, take the ``alpha/2`` and
``1 - alpha/2`` quantiles. NaN units are dropped before resampling (a failed or undefined
measurement is not a zero). A seeded generator makes every interval reproducible.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Hashable, Mapping, NamedTuple, Sequence

import numpy as np

N_BOOT = 2000
ALPHA = 0.05


class Estimate(NamedTuple):
    """A point estimate and its bootstrap interval (NaN bounds when there is nothing to resample)."""

    estimate: float
    low: float
    high: float


_NAN = Estimate(math.nan, math.nan, math.nan)


def _finite_units(values: Any) -> np.ndarray:
    """Values as float array; drops NaN entries (1-D) or rows holding any NaN (2-D)."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim == 1:
        return arr[~np.isnan(arr)]
    if arr.ndim == 2:
        return arr[~np.isnan(arr).any(axis=1)]
    raise ValueError(f"bootstrap units must be 1-D or 2-D, got shape {arr.shape}")


def _resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _percentile_interval(estimate: float, boots: np.ndarray, alpha: float) -> Estimate:
    """``estimate`` with the ``alpha/2`` and ``1 - alpha/2`` quantiles of the non-NaN bootstrap
    statistics (NaN bounds when every resample was undefined)."""
    if np.isnan(boots).all():
        return Estimate(estimate, math.nan, math.nan)
    low, high = np.nanquantile(boots, [alpha / 2, 1 - alpha / 2])
    return Estimate(estimate, float(low), float(high))


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = N_BOOT,
    alpha: float = ALPHA,
    seed: int = 0,
) -> Estimate:
    """``(estimate, low, high)``: ``stat`` of the values and its percentile-bootstrap interval.

    ``values`` is 1-D (one number per unit) or 2-D (one row per unit, e.g. ``(x, y)`` pairs for a
    correlation); ``stat`` maps such an array to a scalar. NaN units are dropped first.
    With no finite unit everything is NaN. With a single unit the estimate is that unit's
    statistic and both bounds are NaN: one observation has no spread to resample, and a
    zero-width interval would claim a certainty the data cannot give.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    units = _finite_units(values)
    n = len(units)
    if n == 0:
        return _NAN
    estimate = float(stat(units))
    if n == 1:
        return Estimate(estimate, math.nan, math.nan)
    idx = _resample_indices(n, n_boot, seed)
    if stat is np.mean and units.ndim == 1:
        boots = units[idx].mean(axis=1)
    else:
        boots = np.array([stat(units[i]) for i in idx], dtype=float)
    return _percentile_interval(estimate, boots, alpha)


def bootstrap_ratio_ci(
    numerators: Sequence[float] | np.ndarray,
    denominators: Sequence[float] | np.ndarray,
    n_boot: int = N_BOOT,
    alpha: float = ALPHA,
    seed: int = 0,
) -> Estimate:
    """``Σ num / Σ den`` with an interval that resamples whole units (a cluster bootstrap).

    Used for pooled per-fact shares where the independent unit is the trial: unit ``i``
    contributes ``numerators[i]`` successes out of ``denominators[i]`` facts. Units with a zero
    denominator carry no information and are dropped; a resample whose denominators sum to zero
    is ignored. Bounds are NaN with fewer than two informative units.
    """
    num = np.asarray(numerators, dtype=float)
    den = np.asarray(denominators, dtype=float)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"numerators {num.shape} and denominators {den.shape} must be equal 1-D shapes")
    keep = (den > 0) & ~np.isnan(num) & ~np.isnan(den)
    num, den = num[keep], den[keep]
    n = len(num)
    if n == 0:
        return _NAN
    estimate = float(num.sum() / den.sum())
    if n == 1:
        return Estimate(estimate, math.nan, math.nan)
    idx = _resample_indices(n, n_boot, seed)
    boot_den = den[idx].sum(axis=1)
    boots = num[idx].sum(axis=1) / np.where(boot_den > 0, boot_den, np.nan)
    return _percentile_interval(estimate, boots, alpha)


def bootstrap_corr_ci(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    n_boot: int = N_BOOT,
    alpha: float = ALPHA,
    seed: int = 0,
) -> Estimate:
    """Pearson correlation of paired observations with a percentile-bootstrap interval over the pairs.

    Pairs with a NaN side are dropped; the estimate is NaN when either side is constant, and
    resamples in which one side is constant are ignored. Bounds are NaN with fewer than three pairs.
    """
    units = _finite_units(np.c_[np.asarray(x, dtype=float), np.asarray(y, dtype=float)])
    n = len(units)

    def corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = a - a.mean(axis=-1, keepdims=True)
        b = b - b.mean(axis=-1, keepdims=True)
        den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 1e-12, (a * b).sum(axis=-1) / den, np.nan)

    if n < 2:
        return _NAN
    estimate = float(corr(units[:, 0], units[:, 1]))
    if n < 3 or math.isnan(estimate):
        return Estimate(estimate, math.nan, math.nan)
    idx = _resample_indices(n, n_boot, seed)
    boots = corr(units[idx, 0], units[idx, 1])
    return _percentile_interval(estimate, boots, alpha)


def paired_difference(
    a_by_key: Mapping[Hashable, float],
    b_by_key: Mapping[Hashable, float],
    n_boot: int = N_BOOT,
    alpha: float = ALPHA,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean of ``b - a`` over the keys both sides measured (same sampling and seed), with its CI.

    Pairs where either side is NaN are dropped. Returns ``delta``/``low``/``high`` (the mean
    paired difference and its bootstrap interval over pairs), ``n_pairs``, ``share_b_greater``
    (share of pairs where b > a, NaN without pairs), ``mean_a``/``mean_b`` over the paired keys,
    and ``only_a``/``only_b``: how many keys had no partner.
    """
    common = [k for k in a_by_key if k in b_by_key]
    a = np.array([a_by_key[k] for k in common], dtype=float)
    b = np.array([b_by_key[k] for k in common], dtype=float)
    ok = ~np.isnan(a) & ~np.isnan(b)
    a, b = a[ok], b[ok]
    diff = bootstrap_ci(b - a, n_boot=n_boot, alpha=alpha, seed=seed)
    n = len(a)
    return {
        "delta": diff.estimate,
        "low": diff.low,
        "high": diff.high,
        "n_pairs": n,
        "share_b_greater": float(np.mean(b > a)) if n else math.nan,
        "mean_a": float(a.mean()) if n else math.nan,
        "mean_b": float(b.mean()) if n else math.nan,
        "only_a": sum(k not in b_by_key for k in a_by_key),
        "only_b": sum(k not in a_by_key for k in b_by_key),
    }


def difference_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = N_BOOT,
    alpha: float = ALPHA,
    seed: int = 0,
) -> Estimate:
    """``mean(b) - mean(a)`` for two independent samples, resampling each side separately."""
    xa, xb = _finite_units(a), _finite_units(b)
    if len(xa) == 0 or len(xb) == 0:
        return _NAN
    estimate = float(xb.mean() - xa.mean())
    if len(xa) < 2 or len(xb) < 2:
        return Estimate(estimate, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    boots = (
        xb[rng.integers(0, len(xb), size=(n_boot, len(xb)))].mean(axis=1)
        - xa[rng.integers(0, len(xa), size=(n_boot, len(xa)))].mean(axis=1)
    )
    return _percentile_interval(estimate, boots, alpha)
