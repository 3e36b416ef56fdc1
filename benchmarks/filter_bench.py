"""Time the greedy data filter (Eq. 4) against the random baseline on a large synthetic pool.

    python benchmarks/filter_bench.py [--size 100] [--replace 0.6] [--pool 20000] [--repeats 5]

Distances are drawn from a fixed-seed Beta(2, 3) distribution (mostly in 0.1–0.8, like real
target distances); the report gives the median wall time of each method (unbounded greedy, greedy with mean
bounds, random) and the objectives reached.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from raysem.semantics.filter import greedy_filter, random_filter


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100, help="|K|, the training set size")
    parser.add_argument("--replace", type=float, default=0.6, help="ρ, the share of K to replace")
    parser.add_argument("--pool", type=int, default=20_000, help="pool size |S|")
    parser.add_argument("--lam", type=float, default=1.0, help="λ, the variance weight")
    parser.add_argument("--mean-min", type=float, default=0.3, help="Mean_min of the bounded greedy run")
    parser.add_argument("--mean-max", type=float, default=0.35, help="Mean_max of the bounded greedy run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    train_dist = rng.beta(2.0, 3.0, size=args.size)
    pool_dist = rng.beta(2.0, 3.0, size=args.pool)
    train_ids = [f"k{i}" for i in range(args.size)]
    pool_ids = [f"s{i}" for i in range(args.pool)]
    common = dict(replace=args.replace, lam=args.lam)

    greedy_s, greedy = _median_time(
        lambda: greedy_filter(train_ids, train_dist, pool_ids, pool_dist, **common), args.repeats
    )
    bounds = dict(mean_min=args.mean_min, mean_max=args.mean_max)
    bounded_s, bounded = _median_time(
        lambda: greedy_filter(train_ids, train_dist, pool_ids, pool_dist, **common, **bounds), args.repeats
    )
    random_s, rand = _median_time(
        lambda: random_filter(train_ids, train_dist, pool_ids, pool_dist, seed=args.seed, **common), args.repeats
    )
    swaps = len(greedy.trace)
    print(f"|K|={args.size} ρ={args.replace} λ={args.lam} pool={args.pool:,} swaps={swaps} repeats={args.repeats}")
    print(f"{'method':<22} {'median s':>9} {'ms/swap':>8}  objective before → after (mean after)")
    runs = (
        ("greedy", greedy_s, greedy),
        (f"greedy {args.mean_min}<μ<{args.mean_max}", bounded_s, bounded),
        ("random", random_s, rand),
    )
    for name, seconds, result in runs:
        per_swap = 1000 * seconds / max(swaps, 1)
        change = f"{result.before['objective']:.4f} → {result.after['objective']:.4f} ({result.after['mean']:.4f})"
        print(f"{name:<22} {seconds:>9.4f} {per_swap:>8.3f}  {change}")


if __name__ == "__main__":
    main()
