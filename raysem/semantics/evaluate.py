"""Base-model answers (y_old, target distance, locality references) and per-fact evaluation of a tuned model."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from raysem.data.facts import Fact
from raysem.models.encoding import encode_targets, token_accuracy
from raysem.models.generate import Answer, greedy_answers
from raysem.models.loader import LoadedModel
from raysem.semantics import metrics
from raysem.semantics.embedding import AnswerEmbedder

ANSWER_KINDS = ("prompt", "rephrasing", "locality", "portability")
"""The questions asked of a tuned model for each fact."""

BaseRecord = dict[str, Any]
"""One fact's base-model row: fact_id, y_old, y_old_raw, dist_old, target_tokens, prompt_tokens, y_old_empty, locality_base."""


def check_base(facts: Sequence[Fact], base: dict[str, BaseRecord]) -> None:
    """Raise a KeyError naming the facts (up to 5) that have no base-model record in ``base``."""
    missing = sorted({f.id for f in facts if f.id not in base})
    if missing:
        raise KeyError(f"no base-model record for facts {missing[:5]} ({len(missing)} missing)")


def base_records(lm: LoadedModel, facts: Sequence[Fact], batch_size: int = 32) -> list[BaseRecord]:
    """Greedy y_old for each fact (budget: ``LoadedModel.answer_budget``, by default the target's token
    count), its target distance, and the base model's greedy outputs on the locality prompts."""
    budgets = [lm.answer_budget(f.prompt, f.target) for f in facts]
    answers = _answers_by_kind(lm, facts, budgets, batch_size, None, kinds=("prompt", "locality"))
    old = [a["prompt"][0] for a in answers]
    dist = AnswerEmbedder.from_model(lm).distance([a.text for a in old], [f.target for f in facts])
    return [
        {
            "fact_id": f.id,
            "y_old": a.text,
            "y_old_raw": a.raw,
            "dist_old": float(d),
            "target_tokens": budget,
            "prompt_tokens": len(lm.prompt_and_answer_ids(f.prompt, f.target)[0]),
            "y_old_empty": not a.text,
            "locality_base": [probe.text for probe in answers_of["locality"]],
        }
        for f, a, d, budget, answers_of in zip(facts, old, dist, budgets, answers)
    ]


def evaluate_facts(
    lm: LoadedModel,
    facts: Sequence[Fact],
    base: dict[str, BaseRecord],
    embedder: AnswerEmbedder,
    batch_size: int = 32,
    ignore_case: bool = False,
    before_batch: Callable[[list[int]], None] | None = None,
) -> list[dict[str, Any]]:
    """Per-fact records for the (tuned) model in ``lm`` against the base rows in ``base`` (keyed by fact id).

    ``embedder`` holds the base model's input embeddings, so dist_new and dist_old share one space.
    ``before_batch``, when given, is called before every model batch with, for each of its rows,
    the index in ``facts`` of the fact that row belongs to (its prompt, a rephrasing or a probe).
    The state it sets must depend on that fact only: a fact's questions continue from one KV cache
    of the prompt prefix, computed in a batch with one row per fact.
    """
    check_base(facts, base)
    budgets = [base[f.id]["target_tokens"] for f in facts]
    answers = _answers_by_kind(lm, facts, budgets, batch_size, before_batch)
    new = [answers[i]["prompt"][0] for i in range(len(facts))]
    dist_new = embedder.distance([a.text for a in new], [f.target for f in facts])
    if before_batch is not None:
        before_batch(list(range(len(facts))))
    # per-row state (a packed-adapter map) needs every row's whole prompt; otherwise the prefix runs once
    batch = encode_targets(lm, [f.prompt for f in facts], [f.target for f in facts], share_prefix=before_batch is None)
    tok_acc = token_accuracy(lm.model, batch.to(lm.device))

    def texts(i: int, kind: str) -> list[str]:
        return [a.text for a in answers[i][kind]]

    pairs = [(i, t, b) for i, f in enumerate(facts) for t, b in zip(texts(i, "locality"), base[f.id]["locality_base"])]
    local_dist: Any = embedder.distance([t for _, t, _ in pairs], [b for _, _, b in pairs]) if pairs else []
    by_fact: list[list[float]] = [[] for _ in facts]
    for (i, _, _), d in zip(pairs, local_dist):
        by_fact[i].append(float(d))

    records = []
    for i, f in enumerate(facts):
        b = base[f.id]
        accuracy = metrics.exact_match(new[i].text, f.target, ignore_case)
        d_new, d_old = float(dist_new[i]), float(b["dist_old"])
        portability = [
            metrics.exact_match(o, p.answer, ignore_case) for o, p in zip(texts(i, "portability"), f.portability)
        ]
        records.append(
            {
                "fact_id": f.id,
                "prompt": f.prompt,
                "target": f.target,
                "y_old": b["y_old"],
                "y_old_raw": b["y_old_raw"],
                "y_new": new[i].text,
                "y_new_raw": new[i].raw,
                "exact_match": accuracy,
                "token_accuracy": tok_acc[i],
                "generality": metrics.mean_exact_match(texts(i, "rephrasing"), f.target, ignore_case),
                "locality": metrics.locality(texts(i, "locality"), list(b["locality_base"])),
                "locality_soft": metrics.soft_locality(texts(i, "locality"), list(b["locality_base"]), by_fact[i]),
                "portability": sum(portability) / len(portability) if portability else math.nan,
                "dist_old": d_old,
                "dist_new": d_new,
                "deviation": metrics.deviation(d_new, d_old),
                "rd": metrics.relative_distance(d_new, d_old),
                "bad_case": metrics.bad_case(accuracy, d_new),
                "y_new_empty": not new[i].text,
            }
        )
    return records


def _answers_by_kind(
    lm: LoadedModel,
    facts: Sequence[Fact],
    budgets: Sequence[int],
    batch_size: int,
    before_batch: Callable[[list[int]], None] | None,
    kinds: Sequence[str] = ANSWER_KINDS,
) -> list[dict[str, list[Answer]]]:
    """Greedy answers to each fact's questions of the given ``kinds`` (prompt, rephrasings, locality
    and portability probes), decoded together in one ``greedy_answers`` call (so batches stay full);
    per fact, a list for each kind (budgets as in :func:`fact_questions`).
    ``before_batch`` is called with, for each row of a model batch, the index of the fact it belongs to;
    the state it sets may depend on that fact only, so a fact's questions share one prompt-prefix cache.
    """
    owners: list[int] = []
    questions: list[str] = []
    lengths: list[int] = []
    row_kinds: list[str] = []
    for i, f in enumerate(facts):
        for kind in kinds:
            for question, length in fact_questions(lm, f, budgets[i], kind):
                owners.append(i)
                row_kinds.append(kind)
                questions.append(question)
                lengths.append(length)
    hook = None if before_batch is None else (lambda rows: before_batch([owners[r] for r in rows]))
    grouped: list[dict[str, list[Answer]]] = [{k: [] for k in kinds} for _ in facts]
    answers = greedy_answers(lm, questions, lengths, batch_size, hook, row_groups=owners)
    for owner, kind, answer in zip(owners, row_kinds, answers):
        grouped[owner][kind].append(answer)
    return grouped


def fact_questions(lm: LoadedModel, fact: Fact, budget: int, kind: str) -> list[tuple[str, int]]:
    """A fact's questions of one kind with their answer budgets: ``budget`` (the fact's) for the prompt
    and rephrasings, ``LoadedModel.answer_budget`` of the reference answer for a probe."""
    if kind == "prompt":
        return [(fact.prompt, budget)]
    if kind == "rephrasing":
        return [(q, budget) for q in fact.rephrasings]
    probes = fact.locality if kind == "locality" else fact.portability
    return [(p.prompt, lm.answer_budget(p.prompt, p.answer)) for p in probes]
