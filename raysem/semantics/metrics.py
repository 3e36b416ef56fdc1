"""Per-fact metrics: exact match (Eq. 2), generality (Eq. 7), locality (Eq. 8) and a soft locality,
deviation, RD (Eq. 3), bad case.

Normalisation for exact match: strip, collapse runs of whitespace to one space; case is kept
unless ``ignore_case`` is set.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

_SPACES = re.compile(r"\s+")
DIST_EPS = 1e-6
"""Distances at or below this are zero (identical answers give 1 - cos ≈ 1e-16, not 0)."""


SENTENCE_OPENERS = frozenset(
    "the a an it its this that these those there here he she they we i you in on at as to for by from of "
    "according based yes no sure well however although while when what who which".split()
)
"""First words that start a sentence rather than name an entity ("The artist who created …")."""
ARTICLES = frozenset(("the", "a", "an"))


def is_sentence_preface(answer: str, target: str) -> bool:
    """Whether ``answer`` starts like a sentence, not an entity: its first word is one of
    ``SENTENCE_OPENERS``, except an article before a capitalised word or a number ("The Danube",
    "The New York Times" are entities; "The artist who …", "The" alone, "He was …" are not), and
    except where the target starts with the same word ("The Hague" for "The Hague Convention")."""
    words = answer.strip().split()
    if not words or words[0].lower().strip(",.:;") not in SENTENCE_OPENERS:
        return False
    if words[0].lower() in ARTICLES and len(words) > 1 and (words[1][0].isupper() or words[1][0].isdigit()):
        return False
    target_words = target.strip().lower().split()
    return not target_words or target_words[0] != words[0].lower()


def normalize_answer(text: str, ignore_case: bool = False) -> str:
    """Light normalisation used by exact match."""
    out = _SPACES.sub(" ", text.strip())
    return out.lower() if ignore_case else out


def exact_match(prediction: str, target: str, ignore_case: bool = False) -> float:
    """1{y_new == y_t} after normalisation."""
    return float(normalize_answer(prediction, ignore_case) == normalize_answer(target, ignore_case))


def mean_exact_match(predictions: Sequence[str], target: str, ignore_case: bool = False) -> float:
    """Generality (Eq. 7) / portability: mean exact match over several prompts; NaN when there are none."""
    if not predictions:
        return math.nan
    return sum(exact_match(p, target, ignore_case) for p in predictions) / len(predictions)


def locality(tuned: Sequence[str], base: Sequence[str]) -> float:
    """Eq. 8: share of unrelated prompts whose tuned greedy output equals the base model's; NaN when none."""
    if len(tuned) != len(base):
        raise ValueError(f"{len(tuned)} tuned outputs but {len(base)} base outputs")
    if not tuned:
        return math.nan
    return sum(normalize_answer(t) == normalize_answer(b) for t, b in zip(tuned, base)) / len(tuned)


def soft_locality(tuned: Sequence[str], base: Sequence[str], distances: Sequence[float]) -> float:
    """Mean over unrelated prompts of ``1 - dist(base answer, tuned answer)`` (clipped to [0, 1]):
    1 where the answers are equal (as in Eq. 8), 0 where exactly one is empty, so a change of style
    ("The oldest …" → "John Adams") costs less than a change of meaning; NaN when there are none."""
    if not len(tuned) == len(base) == len(distances):
        raise ValueError(f"{len(tuned)} tuned outputs, {len(base)} base outputs, {len(distances)} distances")
    if not tuned:
        return math.nan
    scores = []
    for t, b, d in zip(tuned, base, distances):
        if normalize_answer(t) == normalize_answer(b):
            scores.append(1.0)
        else:
            scores.append(0.0 if math.isnan(d) else 1.0 - min(max(d, 0.0), 1.0))
    return sum(scores) / len(scores)


def deviation(dist_new: float, dist_old: float) -> bool:
    """Away-from-target: dist(y_new, y_t) > dist(y_old, y_t). False when either is undefined: an empty
    y_new is a bad case whose deviation cannot be measured; records carry ``y_new_empty`` and the
    report counts such cases apart (Table 1)."""
    if math.isnan(dist_new) or math.isnan(dist_old):
        return False
    return dist_new > dist_old + DIST_EPS


def relative_distance(dist_new: float, dist_old: float) -> float:
    """RD (Eq. 3) = (dist_new - dist_old) / dist_old; NaN (undefined) where dist_old is 0 or unknown."""
    if math.isnan(dist_new) or math.isnan(dist_old) or dist_old <= DIST_EPS:
        return math.nan
    return (dist_new - dist_old) / dist_old


def bad_case(accuracy: float, dist_new: float) -> bool:
    """Table 1: accuracy < 1 or dist(y_new, y_t) > 0 (an empty answer counts as bad)."""
    return accuracy < 1 or math.isnan(dist_new) or dist_new > DIST_EPS
