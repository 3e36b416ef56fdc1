"""Per-fact metrics: exact match (Eq. 2), generality (Eq. 7), locality (Eq. 8), deviation, RD (Eq. 3), bad case."""

from __future__ import annotations

import math

import pytest

from raysem.semantics.metrics import (
    DIST_EPS,
    bad_case,
    deviation,
    exact_match,
    is_sentence_preface,
    locality,
    mean_exact_match,
    normalize_answer,
    relative_distance,
    soft_locality,
)


def test_normalisation_strips_and_collapses_spaces_but_keeps_case():
    assert normalize_answer("  New \t York\n") == "New York"
    assert normalize_answer("New York", ignore_case=True) == "new york"
    assert exact_match(" New  York ", "New York") == 1.0
    assert exact_match("new york", "New York") == 0.0
    assert exact_match("new york", "New York", ignore_case=True) == 1.0
    assert exact_match("New York City", "New York") == 0.0
    assert exact_match("NewYork", "New York") == 0.0


def test_generality_is_the_mean_over_rephrasings():
    assert mean_exact_match(["Paris", "paris", " Paris", "Lyon"], "Paris") == 0.5
    assert mean_exact_match(["Paris", "paris"], "Paris", ignore_case=True) == 1.0
    assert math.isnan(mean_exact_match([], "Paris"))


def test_locality_compares_tuned_with_base_outputs():
    assert locality(["a", "b  c", "d"], ["a", "b c", "x"]) == pytest.approx(2 / 3)
    assert locality(["A"], ["a"]) == 0.0
    assert math.isnan(locality([], []))
    with pytest.raises(ValueError, match="2 tuned outputs but 1 base outputs"):
        locality(["a", "b"], ["a"])


def test_deviation_means_moving_away_from_the_target():
    assert deviation(0.5, 0.3) is True
    assert deviation(0.3, 0.5) is False
    assert deviation(0.3, 0.3) is False
    assert deviation(0.3 + DIST_EPS / 2, 0.3) is False  # rounding noise is not a move
    assert deviation(math.nan, 0.3) is False and deviation(0.3, math.nan) is False


def test_relative_distance():
    assert relative_distance(0.6, 0.4) == pytest.approx(0.5)
    assert relative_distance(0.1, 0.4) == pytest.approx(-0.75)
    assert relative_distance(0.0, 0.4) == pytest.approx(-1.0)
    # Undefined where dist_old == 0 (identical answers give ~1e-16, not 0) or unknown.
    assert math.isnan(relative_distance(0.3, 0.0))
    assert math.isnan(relative_distance(0.3, 1e-16))
    assert math.isnan(relative_distance(0.3, math.nan))
    assert math.isnan(relative_distance(math.nan, 0.4))
    undefined = sum(math.isnan(relative_distance(0.5, old)) for old in (0.0, 0.2, 1e-17, 0.4))
    assert undefined == 2


def test_bad_case():
    assert bad_case(1.0, 0.0) is False
    assert bad_case(1.0, 1e-16) is False
    assert bad_case(0.0, 0.0) is True  # wrong answer
    assert bad_case(1.0, 0.2) is True  # distance left
    assert bad_case(1.0, math.nan) is True  # empty answer


def test_soft_locality_by_hand():
    # equal answers count 1 whatever their distance; one empty answer (NaN distance) counts 0;
    # otherwise 1 - dist, clipped to [0, 1]
    tuned = ["John Adams", "Paris", "", "x"]
    base = ["John  Adams", "The capital is Paris", "something", "y"]
    assert soft_locality(tuned, base, [0.3, 0.25, math.nan, 1.4]) == pytest.approx((1 + 0.75 + 0 + 0) / 4)
    assert soft_locality(["a"], ["b"], [-0.1]) == 1.0
    assert math.isnan(soft_locality([], [], []))
    with pytest.raises(ValueError, match="2 tuned outputs, 2 base outputs, 1 distances"):
        soft_locality(["a", "b"], ["a", "b"], [0.0])


def test_sentence_preface():
    assert is_sentence_preface("The artist who created", "Picasso") and is_sentence_preface(
        "The genus Platy", "Mammalia"
    )
    assert (
        is_sentence_preface("According to", "Paris")
        and is_sentence_preface("It,", "x")
        and is_sentence_preface("The", "CBS")
    )
    assert is_sentence_preface("He was born in", "1950") and is_sentence_preface("a female", "mezzo-soprano")
    assert not is_sentence_preface("John Williams", "Hans Zimmer") and not is_sentence_preface("1999", "2006")
    assert not is_sentence_preface("The Danube River", "Wollondilly River") and not is_sentence_preface(
        "The 1990s", "1995"
    )
    assert not is_sentence_preface("the hague", "The Hague Convention"), "the target starts with the same word"
    assert not is_sentence_preface("", "Paris")
