"""Per-fact evaluation: one batched decode of every question equals answering each question alone."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from raysem.data.facts import Fact, Probe
from raysem.models.generate import greedy_answers, target_token_count
from raysem.semantics import metrics
from raysem.semantics.embedding import AnswerEmbedder
from raysem.semantics.evaluate import base_records, evaluate_facts

QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "Name a prime number.", "Where is Kyoto?"]


@pytest.fixture()
def lively(tiny):
    """The tiny Llama with large random weights, so that different questions get different answers."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in tiny.model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
    return tiny


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _alone(lm, question: str, budget: int) -> str:
    return greedy_answers(lm, [question], [budget], batch_size=1)[0].text


def _facts(lm) -> list[Fact]:
    """Facts whose targets and probe answers are the model's own answers, with 0–3 questions of each kind."""
    own = [_alone(lm, q, 3) for q in QUESTIONS]
    return [
        Fact(id="a", prompt=QUESTIONS[0], target=own[0], rephrasings=(QUESTIONS[0], QUESTIONS[1]),
             locality=(Probe(QUESTIONS[2], own[2]),), portability=(Probe(QUESTIONS[3], own[3]), Probe(QUESTIONS[1], "no"))),
        Fact(id="b", prompt=QUESTIONS[1], target="surely not this", locality=(Probe(QUESTIONS[0], own[0]), Probe(QUESTIONS[3], "z"))),
        Fact(id="c", prompt=QUESTIONS[2], target=own[2], rephrasings=(QUESTIONS[3], QUESTIONS[2], QUESTIONS[0])),
    ]  # fmt: skip


def test_records_equal_answering_each_question_alone(lively):
    tiny = lively
    facts = _facts(tiny)
    base = {r["fact_id"]: r for r in base_records(tiny, facts, batch_size=2)}
    seen: list[list[int]] = []
    records = evaluate_facts(tiny, facts, base, AnswerEmbedder.from_model(tiny), batch_size=3, before_batch=seen.append)

    for fact, record in zip(facts, records):
        budget = target_token_count(tiny, fact.target)
        y_new = _alone(tiny, fact.prompt, budget)
        rephrased = [_alone(tiny, q, budget) for q in fact.rephrasings]
        local = [_alone(tiny, p.prompt, target_token_count(tiny, p.answer)) for p in fact.locality]
        ported = [_alone(tiny, p.prompt, target_token_count(tiny, p.answer)) for p in fact.portability]
        assert record["fact_id"] == fact.id and record["y_new"] == y_new
        assert record["exact_match"] == metrics.exact_match(y_new, fact.target)
        assert _same(record["generality"], metrics.mean_exact_match(rephrased, fact.target))
        assert _same(record["locality"], metrics.locality(local, list(base[fact.id]["locality_base"])))
        assert _same(record["locality"], 1.0 if local else math.nan), "the untouched model keeps its own answers"
        portability = [metrics.exact_match(o, p.answer) for o, p in zip(ported, fact.portability)]
        assert _same(record["portability"], sum(portability) / len(portability) if portability else math.nan)
    assert len({r["y_new"] for r in records}) == 3, "the questions should get different answers"
    assert records[0]["portability"] == 0.5, "the first probe asks for the model's own answer, the second not"

    # Every model batch names the fact of each row: one row per question, then all facts for token accuracy.
    asked = Counter(i for rows in seen[:-1] for i in rows)
    assert asked == {0: 1 + 2 + 1 + 2, 1: 1 + 0 + 2, 2: 1 + 3}
    assert seen[-1] == [0, 1, 2] and all(len(rows) <= 3 for rows in seen[:-1])
