"""The semantic-distance data filter (Eq. 4) and its random-replacement baseline.

For a training set K drawn from a pool S, the filter minimises ``μ(K) - λ·σ²(K)`` of the target
distances (σ² the population variance; ``sigma="std"`` reads the paper's σ as the standard deviation
instead: ``μ(K) - λ·σ(K)``) subject to ``Mean_min < μ(K) < Mean_max`` by greedy swaps:
each step removes one original member of K and adds one unused pool fact, choosing the pair that
gives the best objective for the resulting set, until ``round(ρ·|K|)`` members have been replaced
(halves round up). A replaced member never comes back and an added fact is never removed again.

The swap search is exact and cheap. With running sums ``S1 = Σd`` and ``S2 = Σd²`` over the n
members, swapping out ``d_r`` and in ``x`` gives ``μ' = (S1 - d_r + x)/n`` and
``σ²' = (S2 - d_r² + x²)/n - μ'²``, so for a fixed removal the objective is a quadratic in ``x``
with leading coefficient ``-λ(n-1)/n² ≤ 0``: concave (and with σ, ``-λ·sqrt`` of a non-negative
convex quadratic, the negated norm of an affine map: concave too). Its minimum over the pool facts allowed by
the bounds (a contiguous run of the sorted pool, since μ' is increasing in x) lies at the run's
smallest or largest value, and when no pool fact is allowed the least violation lies at the value
nearest the allowed interval. Each step therefore evaluates a handful of candidates per member
(found by binary search in the sorted pool) instead of the full |K|×|S| matrix.

With bounds, swaps are ranked first by whether the bounds can still be met after the remaining
swaps (the reachable range of final means is again a contiguous run of the sorted pool, found the
same way), then by whether the resulting set meets them, then by how far it misses them, then by
the objective. The final set is checked; a set that misses the bounds raises ``ValueError``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import numpy as np

Sigma = Literal["variance", "std"]
"""How Eq. 4 reads σ: the set's variance (σ², the default) or its standard deviation."""


@dataclass(frozen=True)
class FilterResult:
    """The filtered training set and how it got there.

    ``trace`` has one entry per swap (step, removed, added, and the set's mean, var and objective
    after it); ``before``/``after`` hold mean, var and objective of the original and final set;
    ``excluded_pool`` lists pool facts left out because their distance is undefined (empty answers);
    ``kept_undefined`` lists members of K without one, which ``replace_training_set`` keeps in the
    training set untouched, outside the filter.
    """

    train_ids: list[str]
    trace: list[dict[str, Any]]
    before: dict[str, float]
    after: dict[str, float]
    method: str
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    excluded_pool: list[str] = field(default_factory=list)
    kept_undefined: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def replacement_count(size: int, replace: float) -> int:
    """``round(ρ·|K|)`` with halves rounded up (ρ validated to lie in [0, 1])."""
    if not isinstance(replace, numbers.Real) or not 0.0 <= replace <= 1.0:
        raise ValueError(f"replace (ρ) must be in [0, 1], got {replace!r}")
    return int(math.floor(replace * size + 0.5))


def spread(var: np.ndarray | float, sigma: Sigma) -> np.ndarray | float:
    """The term λ multiplies: the variance itself, or its square root."""
    return var if _check_sigma(sigma) == "variance" else np.sqrt(var)


def set_stats(dist: Sequence[float] | np.ndarray, lam: float = 0.0, sigma: Sigma = "variance") -> dict[str, float]:
    """Mean, population variance and the objective ``mean - λ·var`` (``mean - λ·std``) of a set's target distances."""
    values = np.asarray(dist, dtype=np.float64)
    mean, var = float(values.mean()), float(values.var())
    return {"mean": mean, "var": var, "objective": mean - lam * float(spread(var, sigma))}


def _bounds_text(mean_min: float | None, mean_max: float | None) -> str:
    low = "" if mean_min is None else f"Mean_min={mean_min} < "
    high = "" if mean_max is None else f" < Mean_max={mean_max}"
    return f"{low}μ{high}"


def _check_lambda(lam: float) -> float:
    if not isinstance(lam, numbers.Real) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lambda (λ) must be a finite number >= 0, got {lam!r}")
    return float(lam)


def _check_sigma(sigma: str) -> str:
    if sigma not in get_args(Sigma):
        raise ValueError(f"sigma must be 'variance' or 'std', got {sigma!r}")
    return sigma


def _check_bounds(mean_min: float | None, mean_max: float | None) -> tuple[float, float]:
    lo = -math.inf if mean_min is None else float(mean_min)
    hi = math.inf if mean_max is None else float(mean_max)
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"mean bounds must be numbers, got Mean_min={mean_min!r}, Mean_max={mean_max!r}")
    if lo >= hi:
        raise ValueError(f"Mean_min must be < Mean_max, got Mean_min={mean_min!r} >= Mean_max={mean_max!r}")
    return lo, hi


def _prepare(
    train_ids: Sequence[str],
    train_dist: Sequence[float],
    pool_ids: Sequence[str],
    pool_dist: Sequence[float],
    replace: float,
) -> tuple[list[str], np.ndarray, list[str], np.ndarray, list[str], int]:
    """Validate inputs; drop pool facts with undefined distances; return the number of swaps."""
    train_ids, pool_ids = [str(i) for i in train_ids], [str(i) for i in pool_ids]
    k_dist = np.asarray(train_dist, dtype=np.float64).reshape(-1)
    p_dist = np.asarray(pool_dist, dtype=np.float64).reshape(-1)
    if len(train_ids) != len(k_dist):
        raise ValueError(f"{len(train_ids)} training ids but {len(k_dist)} training distances")
    if len(pool_ids) != len(p_dist):
        raise ValueError(f"{len(pool_ids)} pool ids but {len(p_dist)} pool distances")
    if not train_ids:
        raise ValueError("the training set K is empty")
    if len(set(train_ids)) != len(train_ids) or len(set(pool_ids)) != len(pool_ids):
        raise ValueError("fact ids must be unique within the training set and within the pool")
    shared = sorted(set(train_ids) & set(pool_ids))
    if shared:
        raise ValueError(f"the pool must not contain training facts; shared ids: {shared[:5]} ({len(shared)} in all)")
    undefined = [i for i, d in zip(train_ids, k_dist) if not math.isfinite(d)]
    if undefined:
        raise ValueError(
            f"training facts without a finite target distance (empty answers): {undefined[:5]} "
            f"({len(undefined)} in all); leave them out of K"
        )
    count = replacement_count(len(train_ids), replace)
    usable = np.isfinite(p_dist)
    excluded = [i for i, ok in zip(pool_ids, usable) if not ok]
    if count > int(usable.sum()):
        raise ValueError(
            f"ρ={replace} of |K|={len(train_ids)} asks for {count} replacements but the pool has only "
            f"{int(usable.sum())} usable facts ({len(excluded)} excluded for undefined distances)"
        )
    kept_ids = [i for i, ok in zip(pool_ids, usable) if ok]
    return train_ids, k_dist, kept_ids, p_dist[usable], excluded, count


def _reachable_means(k_dist: np.ndarray, p_dist: np.ndarray, count: int) -> tuple[float, float]:
    """Smallest and largest mean of any set made of |K|-count members of K and count pool facts."""
    n = len(k_dist)
    k_sorted, p_sorted = np.sort(k_dist), np.sort(p_dist)
    low = (k_sorted[: n - count].sum() + p_sorted[:count].sum()) / n
    high = (k_sorted[count:].sum() + p_sorted[len(p_sorted) - count :].sum()) / n
    return float(low), float(high)


def _sum_largest(prefix: np.ndarray, k: int) -> float:
    """Sum of the k largest values, from the prefix sums of the sorted values (leading 0)."""
    return float(prefix[-1] - prefix[len(prefix) - 1 - k])


def _completion_sums(
    values: np.ndarray, removable: np.ndarray, pool: np.ndarray, remaining: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bounds on the final set's sum once a swap is made and ``remaining`` swaps are still to come.

    For removing the i-th removable member the smallest (largest) final sum is
    ``keep_low[i] + add_low[t]`` (``keep_high[i] + add_high[t]``) when the pool fact of sorted rank
    ``t`` is added: the kept members and the later additions are then the smallest (largest) ones.
    ``add_low`` and ``add_high`` are non-decreasing in ``t``.
    """
    out = values[removable]
    fixed = values[~removable].sum()
    m, size = len(out), len(pool)
    keep = m - 1 - remaining  # removable members that stay in K to the end
    rank = np.empty(m, dtype=np.int64)
    rank[np.argsort(out, kind="stable")] = np.arange(m)
    prefix = np.concatenate([[0.0], np.cumsum(np.sort(out))])
    keep_low = fixed + np.where(rank < keep, prefix[keep + 1] - out, prefix[keep])
    keep_high = fixed + np.where(rank >= m - keep, _sum_largest(prefix, keep + 1) - out, _sum_largest(prefix, keep))
    t = np.arange(size)
    pool_prefix = np.concatenate([[0.0], np.cumsum(pool)])
    add_low = np.where(t < remaining, pool_prefix[remaining + 1], pool + pool_prefix[remaining])
    add_high = np.where(
        t >= size - remaining, _sum_largest(pool_prefix, remaining + 1), pool + _sum_largest(pool_prefix, remaining)
    )
    return keep_low, keep_high, add_low, add_high


def _best_swap(
    values: np.ndarray,
    removable: np.ndarray,
    pool: np.ndarray,
    remaining: int,
    lam: float,
    lo: float,
    hi: float,
    sigma: Sigma,
) -> tuple[int, int]:
    """The (slot, sorted pool index) of the best swap, ranked by: the bounds can still be met after
    the ``remaining`` later swaps; the resulting set meets them; its violation; its objective."""
    n, size = len(values), len(pool)
    slots = np.flatnonzero(removable)
    out = values[slots]
    rest1 = values.sum() - out
    rest2 = np.square(values).sum() - np.square(out)
    # Per removal, the pool run whose addition meets the bounds is [first_in, first_out - 1].
    first_in = np.searchsorted(pool, n * lo - rest1, side="right")
    first_out = np.searchsorted(pool, n * hi - rest1, side="left")
    anchors = [np.zeros_like(first_in), np.full_like(first_in, size - 1), first_in, first_out - 1]
    bounded = math.isfinite(lo) or math.isfinite(hi)
    if bounded:
        keep_low, keep_high, add_low, add_high = _completion_sums(values, removable, pool, remaining)
        # Per removal, the pool run after which the bounds stay reachable is [first_ok, last_ok].
        anchors.append(np.searchsorted(add_low, n * hi - keep_low, side="left") - 1)
        anchors.append(np.searchsorted(add_high, n * lo - keep_high, side="right"))
    base = np.stack(anchors, axis=1)
    cand = np.clip(np.concatenate([base - 1, base, base + 1], axis=1), 0, size - 1)
    x = pool[cand]
    mean = (rest1[:, None] + x) / n
    var = np.maximum((rest2[:, None] + np.square(x)) / n - np.square(mean), 0.0)
    objective = mean - lam * spread(var, sigma)
    violation = np.maximum(np.maximum(lo - mean, mean - hi), 0.0)
    infeasible = ~((mean > lo) & (mean < hi))
    if bounded:
        stuck = ~(((keep_low[:, None] + add_low[cand]) / n < hi) & ((keep_high[:, None] + add_high[cand]) / n > lo))
    else:
        stuck = np.zeros_like(infeasible)
    best = int(np.lexsort((objective.ravel(), violation.ravel(), infeasible.ravel(), stuck.ravel()))[0])
    row, col = divmod(best, cand.shape[1])
    return int(slots[row]), int(cand[row, col])


def greedy_filter(
    train_ids: Sequence[str],
    train_dist: Sequence[float],
    pool_ids: Sequence[str],
    pool_dist: Sequence[float],
    *,
    replace: float,
    lam: float,
    mean_min: float | None = None,
    mean_max: float | None = None,
    sigma: Sigma = "variance",
) -> FilterResult:
    """Eq. 4 by greedy swaps: replace ``round(ρ·|K|)`` members of K by pool facts, minimising
    ``μ - λ·σ²`` (``μ - λ·σ`` with ``sigma="std"``) subject to ``Mean_min < μ < Mean_max`` (either
    bound may be omitted).

    Raises ``ValueError`` for λ < 0, Mean_min >= Mean_max, ρ outside [0, 1], more replacements than
    usable pool facts, bounds that no reachable set meets, or a final set outside the bounds.
    """
    lam = _check_lambda(lam)
    _check_sigma(sigma)
    lo, hi = _check_bounds(mean_min, mean_max)
    ids, k_dist, p_ids, p_dist, excluded, count = _prepare(train_ids, train_dist, pool_ids, pool_dist, replace)
    n = len(ids)
    reach_lo, reach_hi = _reachable_means(k_dist, p_dist, count)
    if reach_hi <= lo or reach_lo >= hi:
        raise ValueError(
            f"no training set reachable with {count} replacements meets "
            f"{_bounds_text(mean_min, mean_max)}: reachable means span [{reach_lo:.6g}, {reach_hi:.6g}]"
        )

    before = set_stats(k_dist, lam, sigma)
    values = k_dist.copy()
    slot_ids = list(ids)
    removable = np.ones(n, dtype=bool)
    order = np.argsort(p_dist, kind="stable")
    pool_sorted, pool_sorted_ids = p_dist[order], [p_ids[i] for i in order]
    trace: list[dict[str, Any]] = []
    removed: list[str] = []
    added: list[str] = []
    for step in range(1, count + 1):
        slot, pick = _best_swap(values, removable, pool_sorted, count - step, lam, lo, hi, sigma)
        removed.append(slot_ids[slot])
        added.append(pool_sorted_ids[pick])
        slot_ids[slot] = pool_sorted_ids[pick]
        values[slot] = pool_sorted[pick]
        removable[slot] = False
        pool_sorted = np.delete(pool_sorted, pick)
        del pool_sorted_ids[pick]
        trace.append({"step": step, "removed": removed[-1], "added": added[-1], **set_stats(values, lam, sigma)})

    after = set_stats(values, lam, sigma)
    if not lo < after["mean"] < hi:
        raise ValueError(
            f"the greedy swaps ended with mean {after['mean']:.6g}, which breaks "
            f"{_bounds_text(mean_min, mean_max)}; widen the bounds or change ρ"
        )
    return FilterResult(
        train_ids=slot_ids,
        trace=trace,
        before=before,
        after=after,
        method="greedy",
        removed=removed,
        added=added,
        excluded_pool=excluded,
    )


def random_filter(
    train_ids: Sequence[str],
    train_dist: Sequence[float],
    pool_ids: Sequence[str],
    pool_dist: Sequence[float],
    *,
    replace: float,
    seed: int,
    lam: float = 0.0,
    sigma: Sigma = "variance",
) -> FilterResult:
    """The baseline: replace ``round(ρ·|K|)`` random members of K by random unused pool facts.

    ``lam`` and ``sigma`` only set how the reported objective is computed, so it can be compared with the greedy one.
    """
    lam = _check_lambda(lam)
    ids, k_dist, p_ids, p_dist, excluded, count = _prepare(train_ids, train_dist, pool_ids, pool_dist, replace)
    rng = np.random.default_rng(seed)
    out_slots = rng.choice(len(ids), size=count, replace=False)
    in_picks = rng.choice(len(p_ids), size=count, replace=False)
    values = k_dist.copy()
    slot_ids = list(ids)
    trace: list[dict[str, Any]] = []
    for step, (slot, pick) in enumerate(zip(out_slots.tolist(), in_picks.tolist()), start=1):
        removed_id = slot_ids[slot]
        slot_ids[slot], values[slot] = p_ids[pick], p_dist[pick]
        trace.append({"step": step, "removed": removed_id, "added": p_ids[pick], **set_stats(values, lam, sigma)})
    return FilterResult(
        train_ids=slot_ids,
        trace=trace,
        before=set_stats(k_dist, lam, sigma),
        after=set_stats(values, lam, sigma),
        method="random",
        removed=[t["removed"] for t in trace],
        added=[t["added"] for t in trace],
        excluded_pool=excluded,
    )


def replace_training_set(
    mode: str,
    train_ids: Sequence[str],
    train_dist: Sequence[float],
    pool_ids: Sequence[str],
    pool_dist: Sequence[float],
    *,
    replace: float,
    lam: float = 0.0,
    mean_min: float | None = None,
    mean_max: float | None = None,
    seed: int = 0,
    sigma: Sigma = "variance",
) -> FilterResult:
    """A trial's training set: K filtered by Eq. 4 (``mode="filter"``) or with members replaced at random
    (``mode="random"``).

    Members of K without a finite distance (an empty y_old) cannot be scored: they stay in the
    training set as they are, outside the filter, and are listed in ``kept_undefined``; ρ applies to
    the other members. Pool facts without one are left out (``excluded_pool``). Both modes treat them
    alike, so filter and random trials stay paired.
    """
    if mode not in ("filter", "random"):
        raise ValueError(f"filter mode must be 'filter' or 'random', got {mode!r}")
    defined = [math.isfinite(d) for d in train_dist]
    kept = [str(i) for i, ok in zip(train_ids, defined) if not ok]
    ids = [i for i, ok in zip(train_ids, defined) if ok]
    dist = [d for d, ok in zip(train_dist, defined) if ok]
    if mode == "filter":
        result = greedy_filter(
            ids, dist, pool_ids, pool_dist, replace=replace, lam=lam, mean_min=mean_min, mean_max=mean_max, sigma=sigma
        )
    else:
        result = random_filter(ids, dist, pool_ids, pool_dist, replace=replace, seed=seed, lam=lam, sigma=sigma)
    return FilterResult(**{**asdict(result), "train_ids": [*result.train_ids, *kept], "kept_undefined": kept})
