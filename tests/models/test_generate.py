"""Batched greedy decoding from a shared prompt prefix equals decoding each prompt alone."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from raysem.models.generate import greedy_answers
from raysem.models.kv_cache import shared_prefix_length
from raysem.models.prompts import Prompting

QUESTIONS = [
    "What is the capital of France?",
    "Who wrote Hamlet?",
    "Which river flows through Cairo?",
    "What is 2 + 2?",
    "Name the largest planet in the solar system.",
    "In which year did the Second World War end?",
    "Who painted the Mona Lisa?",
]
BUDGETS = [3, 7, 1, 5, 7, 2, 4]


_ALONE: dict[tuple[str, str, int], list[int]] = {}


def alone(lm, question: str, budget: int) -> list[int]:
    """The greedy tokens for one prompt, through ``generate`` on its full, unpadded prompt (no cache given);
    computed once per prompt style, question and budget (the batched variants compare against the same)."""
    key = (lm.prompting.style, question, budget)
    if key not in _ALONE:
        _ALONE[key] = _generate_alone(lm, question, budget)
    return _ALONE[key]


def _generate_alone(lm, question: str, budget: int) -> list[int]:
    ids = lm.tokenizer(lm.format_prompt(question), return_tensors="pt", add_special_tokens=False)
    out = lm.model.generate(
        **ids,
        max_new_tokens=budget,
        do_sample=False,
        pad_token_id=lm.tokenizer.pad_token_id,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    tokens = out[0, ids["input_ids"].shape[1] :].tolist()
    eos = lm.tokenizer.eos_token_id
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


@pytest.fixture(scope="module")
def smol64():
    """The embedded model in float64: real answers, and no near-tie between two logits to flip a token."""
    from raysem.models.loader import load_model

    return load_model("smollm2-135m-instruct", dtype=torch.float64)


def test_shared_prefix_length_leaves_every_row_a_token():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2, "identical rows keep their last token"
    assert shared_prefix_length([[1, 2, 3]]) == 2
    assert shared_prefix_length([[7, 1], [8, 1]]) == 0
    assert shared_prefix_length([]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("style, hook", [("fewshot", None), ("fewshot", "rows"), ("fewshot", "groups"), ("chat", None)])
def test_batched_answers_from_the_shared_prefix_equal_each_prompt_alone(smol64, style, hook):
    """The tokens must be identical. With a ``before_batch`` hook (per-row state) rows decode from their whole
    prompts, and the hook sees every row once; with ``row_groups`` too, the prefix runs first under each
    group's first row, and each row continues from its group's cache."""
    lm = dataclasses.replace(smol64, prompting=Prompting(style))
    seen: list[list[int]] = []
    groups = [i % 3 for i in range(len(QUESTIONS))] if hook == "groups" else None
    answers = greedy_answers(
        lm, QUESTIONS, BUDGETS, batch_size=3, before_batch=seen.append if hook else None, row_groups=groups
    )
    assert len(answers) == len(QUESTIONS)
    for question, budget, answer in zip(QUESTIONS, BUDGETS, answers):
        want = alone(lm, question, budget)
        assert answer.n_tokens == len(want) and answer.raw == lm.tokenizer.decode(want), (question, answer, want)
    if hook == "groups":
        assert seen[0] == [0, 1, 2], "the prefix runs once per group, under its first row's state"
        seen = seen[1:]
    assert not hook or sorted(i for rows in seen for i in rows) == list(range(len(QUESTIONS)))
    assert len({a.raw for a in answers}) > 1, "the model answers differently to different questions"
