"""Seeded sampling: reproducibility, independence of seeds, disjointness, splits and argument errors."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from raysem.data.facts import Fact
from raysem.data.sampling import sample_fact_sets, sample_facts, train_test_split

FACTS = [Fact(id=f"f{i}", prompt=f"q{i}?", target=f"a{i}") for i in range(60)]


def ids(sets: list[list[Fact]]) -> list[list[str]]:
    return [[f.id for f in s] for s in sets]


def test_same_seed_same_sets_other_seed_other_sets():
    first = ids(sample_fact_sets(FACTS, 10, 5, seed=7))
    assert first == ids(sample_fact_sets(list(FACTS), 10, 5, seed=7))
    assert first != ids(sample_fact_sets(FACTS, 10, 5, seed=8))


def test_draws_follow_the_guaranteed_random_stream():
    # Python guarantees Random(seed).random() across versions and platforms; the first draw is built on it alone.
    for seed in (0, 1, 12345):
        expected = FACTS[int(random.Random(seed).random() * len(FACTS))]
        assert sample_fact_sets(FACTS, 1, 1, seed)[0][0] is expected


def test_sets_have_distinct_members_and_right_sizes():
    sets = sample_fact_sets(FACTS, 12, 20, seed=1)
    assert len(sets) == 20
    assert all(len(s) == 12 and len({f.id for f in s}) == 12 for s in sets)
    assert len({tuple(s) for s in ids(sets)}) == 20


def test_more_samplings_extend_fewer():
    assert ids(sample_fact_sets(FACTS, 5, 8, seed=3))[:3] == ids(sample_fact_sets(FACTS, 5, 3, seed=3))


def test_disjoint_sets_do_not_overlap():
    sets = sample_fact_sets(FACTS, 15, 4, seed=2, disjoint=True)
    members = [f.id for s in sets for f in s]
    assert len(members) == 60 and len(set(members)) == 60


def test_draws_are_roughly_uniform():
    counts = Counter(sample_facts(FACTS[:10], 1, seed)[0].id for seed in range(3000))
    assert len(counts) == 10 and min(counts.values()) > 200 and max(counts.values()) < 400


def test_sample_facts_is_one_set():
    picked = sample_facts(FACTS, 7, seed=4)
    assert [f.id for f in picked] == ids(sample_fact_sets(FACTS, 7, 1, seed=4))[0]


@pytest.mark.parametrize(
    ("k", "n", "disjoint", "message"),
    [
        (61, 1, False, "k=61"),
        (0, 1, False, "k must be"),
        (5, 0, False, "n_samplings"),
        (20, 4, True, "need 80 facts"),
    ],
)
def test_impossible_requests_fail_clearly(k, n, disjoint, message):
    with pytest.raises(ValueError, match=message):
        sample_fact_sets(FACTS, k, n, seed=0, disjoint=disjoint)


@pytest.mark.parametrize("seed", [-1, 1.5, "7", True])
def test_seed_must_be_a_non_negative_int(seed):
    with pytest.raises(ValueError, match="seed"):
        sample_fact_sets(FACTS, 1, 1, seed=seed)


def test_train_test_split():
    train, test = train_test_split(FACTS, 0.25, seed=5)
    assert len(test) == 15 and len(train) == 45
    assert {f.id for f in train}.isdisjoint({f.id for f in test})
    assert sorted(train + test, key=FACTS.index) == FACTS
    assert train == sorted(train, key=FACTS.index) and test == sorted(test, key=FACTS.index)
    assert train_test_split(FACTS, 0.25, seed=5) == (train, test)
    assert train_test_split(FACTS, 0.25, seed=6)[1] != test


def test_split_edges_and_errors():
    assert train_test_split(FACTS, 0.0, seed=0) == (FACTS, [])
    assert train_test_split(FACTS, 1.0, seed=0) == ([], FACTS)
    with pytest.raises(ValueError, match="test_share"):
        train_test_split(FACTS, 1.5, seed=0)
    with pytest.raises(ValueError, match="empty"):
        train_test_split([], 0.5, seed=0)
