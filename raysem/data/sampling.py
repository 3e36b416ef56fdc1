"""Seeded sampling of facts, fact sets and train/test splits.

Only ``random.Random(seed).random()`` drives the draws: Python guarantees that stream across
versions and platforms, whereas ``random.sample``/``shuffle`` and numpy's samplers may change their
algorithms. Results depend on the order of the input facts, which loaders keep as in the file.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from raysem.data.facts import Fact


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _draw(rng: random.Random, n: int, k: int) -> list[int]:
    """``k`` distinct indices from ``range(n)`` in random order (partial Fisher-Yates)."""
    pool = list(range(n))
    for i in range(k):
        j = i + int(rng.random() * (n - i))
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:k]


def sample_facts(facts: Sequence[Fact], n: int, seed: int) -> list[Fact]:
    """``n`` distinct facts (e.g. the facts of single-fact trials)."""
    return sample_fact_sets(facts, n, 1, seed)[0]


def sample_fact_sets(
    facts: Sequence[Fact], k: int, n_samplings: int, seed: int, *, disjoint: bool = False
) -> list[list[Fact]]:
    """``n_samplings`` sets of ``k`` distinct facts each.

    Sets are drawn independently (they may share facts) unless ``disjoint``, in which case no fact
    is in two sets. The first m sets do not depend on ``n_samplings`` >= m.
    """
    _check_seed(seed)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n_samplings < 1:
        raise ValueError(f"n_samplings must be >= 1, got {n_samplings}")
    if k > len(facts):
        raise ValueError(f"cannot draw sets of k={k} facts from {len(facts)} facts")
    if disjoint and k * n_samplings > len(facts):
        raise ValueError(
            f"{n_samplings} disjoint sets of {k} facts need {k * n_samplings} facts; only {len(facts)} given"
        )
    rng = random.Random(seed)
    if disjoint:
        order = _draw(rng, len(facts), k * n_samplings)
        return [[facts[i] for i in order[s * k : (s + 1) * k]] for s in range(n_samplings)]
    return [[facts[i] for i in _draw(rng, len(facts), k)] for _ in range(n_samplings)]


def train_test_split(facts: Sequence[Fact], test_share: float, seed: int) -> tuple[list[Fact], list[Fact]]:
    """Split into (train, test); the test part has ``round(test_share * len(facts))`` facts.

    Both parts keep the input order.
    """
    _check_seed(seed)
    if not 0.0 <= test_share <= 1.0:
        raise ValueError(f"test_share must be in [0, 1], got {test_share}")
    if not facts:
        raise ValueError("cannot split an empty list of facts")
    n_test = round(test_share * len(facts))
    test_idx = set(_draw(random.Random(seed), len(facts), n_test))
    train = [f for i, f in enumerate(facts) if i not in test_idx]
    test = [f for i, f in enumerate(facts) if i in test_idx]
    return train, test
