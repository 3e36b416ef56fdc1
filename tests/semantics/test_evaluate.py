"""Per-fact evaluation: one batched decode of every question equals answering each question alone."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from raysem.data.facts import Fact, Probe
from raysem.models.generate import greedy_answers
from raysem.models.kv_cache import shared_prefix_length
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
        Fact(
            id="a",
            prompt=QUESTIONS[0],
            target=own[0],
            rephrasings=(QUESTIONS[0], QUESTIONS[1]),
            locality=(Probe(QUESTIONS[2], own[2]),),
            portability=(Probe(QUESTIONS[3], own[3]), Probe(QUESTIONS[1], "no")),
        ),
        Fact(
            id="b",
            prompt=QUESTIONS[1],
            target="surely not this",
            locality=(Probe(QUESTIONS[0], own[0]), Probe(QUESTIONS[3], "z")),
        ),
        Fact(id="c", prompt=QUESTIONS[2], target=own[2], rephrasings=(QUESTIONS[3], QUESTIONS[2], QUESTIONS[0])),
    ]


def test_records_equal_answering_each_question_alone(lively):
    tiny = lively
    facts = _facts(tiny)
    base = {r["fact_id"]: r for r in base_records(tiny, facts, batch_size=2)}
    seen: list[list[int]] = []
    records = evaluate_facts(tiny, facts, base, AnswerEmbedder.from_model(tiny), batch_size=3, before_batch=seen.append)

    for fact, record in zip(facts, records):
        budget = tiny.answer_budget(fact.prompt, fact.target)
        y_new = _alone(tiny, fact.prompt, budget)
        rephrased = [_alone(tiny, q, budget) for q in fact.rephrasings]
        local = [_alone(tiny, p.prompt, tiny.answer_budget(p.prompt, p.answer)) for p in fact.locality]
        ported = [_alone(tiny, p.prompt, tiny.answer_budget(p.prompt, p.answer)) for p in fact.portability]
        assert record["fact_id"] == fact.id and record["y_new"] == y_new
        assert record["exact_match"] == metrics.exact_match(y_new, fact.target)
        assert _same(record["generality"], metrics.mean_exact_match(rephrased, fact.target))
        assert _same(record["locality"], metrics.locality(local, list(base[fact.id]["locality_base"])))
        assert _same(record["locality"], 1.0 if local else math.nan), "the untouched model keeps its own answers"
        portability = [metrics.exact_match(o, p.answer) for o, p in zip(ported, fact.portability)]
        assert _same(record["portability"], sum(portability) / len(portability) if portability else math.nan)
    assert len({r["y_new"] for r in records}) == 3, "the questions should get different answers"
    assert records[0]["portability"] == 0.5, "the first probe asks for the model's own answer, the second not"

    # Every model batch names the fact of each row: the prompt prefix once per fact when the prompts share
    # one, then one row per question, then all facts for token accuracy.
    prefixed = (
        shared_prefix_length(
            [tiny.tokenizer(tiny.format_prompt(q), add_special_tokens=False)["input_ids"] for q in QUESTIONS]
        )
        > 0
    )
    assert not prefixed or seen[0] == [0, 1, 2]
    asked = Counter(i for rows in seen[int(prefixed) : -1] for i in rows)
    assert asked == {0: 1 + 2 + 1 + 2, 1: 1 + 0 + 2, 2: 1 + 3}
    assert seen[-1] == [0, 1, 2] and all(len(rows) <= 3 for rows in seen[:-1])


def _emb(lm, table: torch.Tensor, text: str) -> torch.Tensor | None:
    """EMB (Eq. 1) by hand: the mean of the input-embedding rows of the answer's tokens."""
    ids = lm.tokenizer(text, add_special_tokens=False).input_ids
    return table[ids].double().mean(0) if ids else None


def _dist(lm, table: torch.Tensor, a: str, b: str) -> float:
    ea, eb = _emb(lm, table, a), _emb(lm, table, b)
    if ea is None or eb is None:
        return math.nan
    return float(1 - torch.dot(ea, eb) / (ea.norm() * eb.norm()))


def _close(a: float, b: float, tol: float = 1e-5) -> bool:
    """Equal to float32 rounding of embeddings (raysem averages in float32, this test in float64), or both NaN."""
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


def test_records_match_values_computed_by_hand(lively):
    """dist_new, deviation, RD, bad case, token accuracy and both localities, recomputed here from their
    definitions (own embedding means, own forward pass) for a model changed after its base records."""
    lm = lively
    facts = _facts(lm)
    base = {r["fact_id"]: r for r in base_records(lm, facts)}
    table = lm.model.get_input_embeddings().weight.detach().clone()
    embedder = AnswerEmbedder.from_model(lm, copy=True)
    with torch.no_grad():  # "tune" the decoder layers only: the input embeddings (tied to the head) stay the base's
        for name, param in lm.model.named_parameters():
            if "layers." in name and param.dim() == 2:
                param.add_(torch.randn_like(param) * 0.2)
    records = evaluate_facts(lm, facts, base, embedder)
    for fact, r in zip(facts, records):
        b = base[fact.id]
        y_new = _alone(lm, fact.prompt, b["target_tokens"])
        d_old, d_new = _dist(lm, table, b["y_old"], fact.target), _dist(lm, table, y_new, fact.target)
        assert r["y_new"] == y_new and _close(r["dist_old"], d_old) and _close(r["dist_new"], d_new)
        assert r["deviation"] == (not math.isnan(d_new) and not math.isnan(d_old) and d_new > d_old + 1e-6)
        assert _close(r["rd"], (d_new - d_old) / d_old if d_old > 1e-6 and not math.isnan(d_new) else math.nan, 1e-4)
        assert r["bad_case"] == (y_new.strip() != fact.target.strip() or math.isnan(d_new) or d_new > 1e-6)
        prompt_ids, answer_ids = lm.prompt_and_answer_ids(fact.prompt, fact.target)
        with torch.no_grad():
            logits = lm.model(torch.tensor([prompt_ids + answer_ids])).logits[0]
        predicted = logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(answer_ids)].argmax(-1).tolist()
        assert r["token_accuracy"] == pytest.approx(
            sum(p == a for p, a in zip(predicted, answer_ids)) / len(answer_ids)
        )
        tuned = [_alone(lm, p.prompt, lm.answer_budget(p.prompt, p.answer)) for p in fact.locality]
        pairs = list(zip(tuned, b["locality_base"]))
        assert _same(r["locality"], sum(t == o for t, o in pairs) / len(pairs) if pairs else math.nan)
        soft = [
            1.0 if t == o else (0.0 if math.isnan(d := _dist(lm, table, t, o)) else 1 - min(max(d, 0.0), 1.0))
            for t, o in pairs
        ]
        assert _close(r["locality_soft"], sum(soft) / len(soft) if soft else math.nan)
    assert any(r["y_new"] != base[r["fact_id"]]["y_old"] for r in records), "the change should change some answers"
