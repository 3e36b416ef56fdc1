"""The embedded world-facts set: size, relations, probes, counterfactuals, determinism."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter

import pytest

from raysem.data import worldfacts
from raysem.data.datasets import load_facts
from raysem.data.worldfacts import build_worldfacts


@pytest.fixture(scope="module")
def real():
    return build_worldfacts(seed=0)


@pytest.fixture(scope="module")
def counterfactual():
    return build_worldfacts(seed=0, counterfactual=True)


def test_build_is_fast_from_scratch():
    worldfacts._build.cache_clear()
    worldfacts.load_countries.cache_clear()
    start = time.perf_counter()
    facts = build_worldfacts(seed=3)
    assert time.perf_counter() - start < 5.0
    assert facts


def test_size_and_relations(real):
    per_relation = Counter(f.relation for f in real)
    assert len(real) >= 1000
    assert len(per_relation) >= 6
    assert sum(1 for n in per_relation.values() if n >= 100) >= 6
    assert len({f.id for f in real}) == len(real)


def test_known_facts_are_right(real):
    by_id = {f.id: f for f in real}
    assert by_id["worldfacts:capital:FRA"].target == "Paris"
    assert by_id["worldfacts:capital:FRA"].prompt == "What is the capital of France?"
    assert by_id["worldfacts:capital:JPN"].target == "Tokyo"
    assert by_id["worldfacts:continent:BRA"].target == "South America"
    assert by_id["worldfacts:currency:JPN"].target == "Yen"
    assert by_id["worldfacts:official_language:DEU"].target == "German"
    assert by_id["worldfacts:calling_code:FRA"].target == "+33"
    assert by_id["worldfacts:tld:DEU"].target == ".de"
    assert by_id["worldfacts:largest_city:TUR"].target == "Istanbul"
    assert by_id["worldfacts:neighbour:PRT"].target == "Spain"
    assert by_id["worldfacts:capital:USA"].prompt == "What is the capital of the United States?"


def test_every_fact_has_rephrasings_and_foreign_locality(real):
    by_prompt = {f.prompt: f for f in real}
    for f in real:
        assert f.prompt.endswith("?") and f.prompt[0].isupper()
        assert f.target == f.true_answer and f.target
        assert len(set(f.rephrasings)) >= 2 and f.prompt not in f.rephrasings
        assert f.subject in f.prompt and all(f.subject in r for r in f.rephrasings)
        assert len(f.locality) >= 1
        for probe in f.locality:
            other = by_prompt[probe.prompt]
            assert other.subject != f.subject
            assert probe.answer == other.true_answer


def test_counterfactuals_are_wrong_answers_of_the_same_type(real, counterfactual):
    answers_of = {}
    for f in real:
        answers_of.setdefault(f.relation, set()).add(f.true_answer)
    countries = {f.subject for f in real}
    assert [f.id.replace("worldfacts-cf:", "worldfacts:") for f in counterfactual] == [f.id for f in real]
    for t, c in zip(real, counterfactual, strict=True):
        assert c.true_answer == t.target
        assert c.target.casefold() != t.target.casefold()
        assert c.prompt == t.prompt and c.rephrasings == t.rephrasings
        same_type = countries if t.relation == "neighbour" else answers_of[t.relation]
        assert c.target in same_type


def test_same_seed_same_facts_other_seed_other_choices(real, counterfactual):
    again = build_worldfacts(seed=0, counterfactual=True)
    assert [f.to_dict() for f in again] == [f.to_dict() for f in counterfactual]
    other = build_worldfacts(seed=1, counterfactual=True)
    assert [f.target for f in other] != [f.target for f in counterfactual]
    assert [f.locality for f in build_worldfacts(seed=1)] != [f.locality for f in real]
    assert [f.target for f in build_worldfacts(seed=1)] == [f.target for f in real]


def test_returned_list_is_a_copy(real):
    facts = build_worldfacts(seed=0)
    facts.clear()
    assert len(build_worldfacts(seed=0)) == len(real)


def test_load_facts_names(real):
    facts = load_facts("worldfacts")
    assert facts.format == "worldfacts" and len(facts) == len(real)
    canonical = json.dumps([f.to_dict() for f in real], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert facts.sha256 == hashlib.sha256(canonical.encode()).hexdigest()
    cf = load_facts("worldfacts-cf", limit=10)
    assert len(cf) == 10 and cf.sha256 != facts.sha256 and cf.facts[0].target != cf.facts[0].true_answer
