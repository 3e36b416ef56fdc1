"""Bootstrap confidence intervals and paired tests for trial-level numbers, on ``scipy.stats``.

Every interval is a 95% bootstrap interval by default, computed by ``scipy.stats.bootstrap``
over the units (trials, or pairs of trials) with ``n_boot`` resamples: bias-corrected and
accelerated (BCa) by default, the plain percentile interval with ``method="percentile"``, and
the percentile interval wherever BCa is undefined (too few distinct resamples). NaN units are
dropped first (a failed or undefined measurement is not a zero). A seeded generator makes every
interval reproducible. Paired differences also carry a two-sided sign-flip permutation test
(``scipy.stats.permutation_test``; exact when 2^n ≤ the number of resamples).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
from scipy import stats

N_BOOT = 2000
ALPHA = 0.05
Method = Literal["BCa", "percentile"]
METHOD: Method = "BCa"


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


def _check(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _interval(
    estimate: float,
    data: tuple[np.ndarray, ...],
    statistic: Callable[..., Any],
    *,
    paired: bool,
    vectorized: bool,
    n_boot: int,
    alpha: float,
    seed: int,
    method: Method,
) -> Estimate:
    """``estimate`` with ``scipy.stats.bootstrap``'s interval; BCa falls back to percentile where undefined."""
    for how in dict.fromkeys([method, "percentile"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate resamples: handled by the fallback below
            result = stats.bootstrap(
                data,
                statistic,
                n_resamples=n_boot,
                confidence_level=1 - alpha,
                method=how,
                paired=paired,
                vectorized=vectorized,
                rng=np.random.default_rng(seed),
            )
        low, high = result.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return Estimate(estimate, float(low), float(high))
    return Estimate(estimate, math.nan, math.nan)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = N_BOOT,
    alpha: float = ALPHA,
    seed: int = 0,
    method: Method = METHOD,
) -> Estimate:
    """``(estimate, low, high)``: ``stat`` of the values and its bootstrap interval.

    ``values`` is 1-D (one number per unit) or 2-D (one row per unit, e.g. ``(x, y)`` pairs for a
    correlation; rows are resampled whole); ``stat`` maps such an array to a scalar. NaN units
    are dropped first. With no finite unit everything is NaN. With a single unit the estimate is
    that unit's statistic and both bounds are NaN: one observation has no spread to resample,
    and a zero-width interval would claim a certainty the data cannot give. Identical units give
    a zero-width interval.
    """
    _check(n_boot, alpha)
    units = _finite_units(values)
    if len(units) == 0:
        return _NAN
    estimate = float(stat(units))
    if len(units) == 1:
        return Estimate(estimate, math.nan, math.nan)
    if (units == units[0]).all():
        return Estimate(estimate, estimate, estimate)
    if stat is np.mean and units.ndim == 1:
        return _interval(
            estimate,
            (units,),
            np.mean,
            paired=False,
            vectorized=True,
            n_boot=n_boot,
            alpha=alpha,
            seed=seed,
            method=method,
        )
    columns = tuple(units.T) if units.ndim == 2 else (units,)
    return _interval(
        estimate,
        columns,
        lambda *cols: stat(np.column_stack(cols) if units.ndim == 2 else cols[0]),
        paired=True,
        vectorized=False,
        n_boot=n_boot,
        alpha=alpha,
        seed=seed,
        method=method,
    )


def bootstrap_ratio_ci(
    numerators: Sequence[float] | np.ndarray,
    denominators: Sequence[float] | np.ndarray,
    n_boot: int = N_BOOT,
    alpha: float = ALPHA,
    seed: int = 0,
    method: Method = METHOD,
) -> Estimate:
    """``Σ num / Σ den`` with an interval that resamples whole units (a cluster bootstrap).

    Used for pooled per-fact shares where the independent unit is the trial: unit ``i``
    contributes ``numerators[i]`` successes out of ``denominators[i]`` facts. Units with a zero
    denominator carry no information and are dropped. Bounds are NaN with fewer than two
    informative units.
    """
    num = np.asarray(numerators, dtype=float)
    den = np.asarray(denominators, dtype=float)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"numerators {num.shape} and denominators {den.shape} must be equal 1-D shapes")
    _check(n_boot, alpha)
    keep = (den > 0) & ~np.isnan(num) & ~np.isnan(den)
    num, den = num[keep], den[keep]
    if len(num) == 0:
        return _NAN
    estimate = float(num.sum() / den.sum())
    if len(num) == 1:
        return Estimate(estimate, math.nan, math.nan)
    if (num / den == estimate).all():
        return Estimate(estimate, estimate, estimate)

    def ratio(n: np.ndarray, d: np.ndarray, axis: int = -1) -> np.ndarray:
        return n.sum(axis=axis) / d.sum(axis=axis)

    return _interval(
        estimate, (num, den), ratio, paired=True, vectorized=True, n_boot=n_boot, alpha=alpha, seed=seed, method=method
    )


def bootstrap_ratio_difference_ci(
    num_a: Sequence[float] | np.ndarray,
    den_a: Sequence[float] | np.ndarray,
    num_b: Sequence[float] | np.ndarray,
    den_b: Sequence[float] | np.ndarray,
    n_boot: int = N_BOOT,
    alpha: float = ALPHA,
    seed: int = 0,
    method: Method = METHOD,
) -> Estimate:
    """``Σ num_b / Σ den_b − Σ num_a / Σ den_a`` over units that each hold both parts (e.g. a trial's
    facts in two distance bands), with an interval that resamples whole units, so the two shares
    move together as they do within a trial. NaN when either side has no denominator."""
    parts = [np.asarray(x, dtype=float) for x in (num_a, den_a, num_b, den_b)]
    if len({p.shape for p in parts}) != 1 or parts[0].ndim != 1:
        raise ValueError(f"the four unit arrays must be equal 1-D shapes, got {[p.shape for p in parts]}")
    _check(n_boot, alpha)
    if parts[1].sum() <= 0 or parts[3].sum() <= 0:
        return _NAN

    def diff(na: np.ndarray, da: np.ndarray, nb: np.ndarray, db: np.ndarray, axis: int = -1) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return nb.sum(axis=axis) / db.sum(axis=axis) - na.sum(axis=axis) / da.sum(axis=axis)

    estimate = float(diff(parts[0], parts[1], parts[2], parts[3]))
    if len(parts[0]) < 2:
        return Estimate(estimate, math.nan, math.nan)
    return _interval(
        estimate, tuple(parts), diff, paired=True, vectorized=True, n_boot=n_boot, alpha=alpha, seed=seed, method=method
    )


def _corr(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson correlation along ``axis``; NaN where either side is constant."""
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    den = np.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-12, (a * b).sum(axis=axis) / den, np.nan)


def bootstrap_corr_ci(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    n_boot: int = N_BOOT,
    alpha: float = ALPHA,
    seed: int = 0,
    method: Method = METHOD,
) -> Estimate:
    """Pearson correlation of paired observations with a bootstrap interval over the pairs.

    Pairs with a NaN side are dropped; the estimate is NaN when either side is constant.
    Bounds are NaN with fewer than three pairs.
    """
    _check(n_boot, alpha)
    units = _finite_units(np.c_[np.asarray(x, dtype=float), np.asarray(y, dtype=float)])
    if len(units) < 2:
        return _NAN
    estimate = float(_corr(units[:, 0], units[:, 1]))
    if len(units) < 3 or math.isnan(estimate):
        return Estimate(estimate, math.nan, math.nan)
    return _interval(
        estimate,
        (units[:, 0], units[:, 1]),
        _corr,
        paired=True,
        vectorized=True,
        n_boot=n_boot,
        alpha=alpha,
        seed=seed,
        method=method,
    )


def sign_flip_p_value(differences: Sequence[float] | np.ndarray, n_resamples: int = 9999, seed: int = 0) -> float:
    """Two-sided p-value of a paired sign-flip permutation test that the mean difference is 0
    (exact when 2^n ≤ ``n_resamples``); NaN without differences, 1 when all are 0."""
    d = _finite_units(differences)
    if len(d) == 0:
        return math.nan
    if not d.any():
        return 1.0
    result = stats.permutation_test(
        (d,),
        lambda x, axis=-1: x.mean(axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(result.pvalue)


def paired_difference(
    a_by_key: Mapping[Any, float],
    b_by_key: Mapping[Any, float],
    n_boot: int = N_BOOT,
    alpha: float = ALPHA,
    seed: int = 0,
    method: Method = METHOD,
) -> dict[str, Any]:
    """Mean of ``b - a`` over the keys both sides measured (same sampling and seed), with its CI.

    Pairs where either side is NaN are dropped. Returns ``delta``/``low``/``high`` (the mean
    paired difference and its bootstrap interval over pairs), ``p_value`` (two-sided sign-flip
    permutation test), ``n_pairs``, ``share_b_greater`` (share of pairs where b > a, NaN without
    pairs), ``mean_a``/``mean_b`` over the paired keys, and ``only_a``/``only_b``: how many keys
    had no partner.
    """
    common = [k for k in a_by_key if k in b_by_key]
    a = np.array([a_by_key[k] for k in common], dtype=float)
    b = np.array([b_by_key[k] for k in common], dtype=float)
    ok = ~np.isnan(a) & ~np.isnan(b)
    a, b = a[ok], b[ok]
    diff = bootstrap_ci(b - a, n_boot=n_boot, alpha=alpha, seed=seed, method=method)
    n = len(a)
    return {
        "delta": diff.estimate,
        "low": diff.low,
        "high": diff.high,
        "p_value": sign_flip_p_value(b - a, seed=seed) if n >= 2 else math.nan,
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
    method: Method = METHOD,
) -> Estimate:
    """``mean(b) - mean(a)`` for two independent samples, resampling each side separately."""
    _check(n_boot, alpha)
    xa, xb = _finite_units(a), _finite_units(b)
    if len(xa) == 0 or len(xb) == 0:
        return _NAN
    estimate = float(xb.mean() - xa.mean())
    if len(xa) < 2 or len(xb) < 2:
        return Estimate(estimate, math.nan, math.nan)
    if (xa == xa[0]).all() and (xb == xb[0]).all():
        return Estimate(estimate, estimate, estimate)

    def shift(sa: np.ndarray, sb: np.ndarray, axis: int = -1) -> np.ndarray:
        return sb.mean(axis=axis) - sa.mean(axis=axis)

    return _interval(
        estimate, (xa, xb), shift, paired=False, vectorized=True, n_boot=n_boot, alpha=alpha, seed=seed, method=method
    )
