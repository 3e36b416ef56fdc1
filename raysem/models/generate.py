"""Batched greedy decoding (left-padded) with per-prompt answer lengths."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from raysem.models.loader import LoadedModel


@dataclass(frozen=True)
class Answer:
    """A greedy answer: ``text`` is decoded without special tokens and cleaned (``LoadedModel.clean_answer``:
    stripped, cut at the first newline where the prompting says so); ``raw`` is kept as generated."""

    text: str
    raw: str
    n_tokens: int


@torch.no_grad()
def greedy_answers(
    lm: LoadedModel,
    questions: Sequence[str],
    max_new_tokens: Sequence[int],
    batch_size: int = 32,
    before_batch: Callable[[list[int]], None] | None = None,
) -> list[Answer]:
    """Greedy answers to zero-shot questions, ``max_new_tokens[i]`` tokens for question i.

    Rows of one batch are decoded to the batch's longest budget and each is cut at its own;
    greedy decoding makes that equal to decoding each question alone with its own budget.
    Questions are sorted by answer budget, then length, so batches decode and pad little;
    answers come back in input order.
    ``before_batch``, when given, is called before each batch is decoded with the input indices
    of its rows (in row order), so per-row state such as a packed-adapter map can be set.
    """
    if len(questions) != len(max_new_tokens):
        raise ValueError(f"{len(questions)} questions but {len(max_new_tokens)} answer lengths")
    tokenizer = lm.tokenizer
    prompts = [lm.format_prompt(q) for q in questions]
    order = sorted(range(len(prompts)), key=lambda i: (int(max_new_tokens[i]), len(prompts[i])))
    answers: list[Answer | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        budget = max(max(1, int(max_new_tokens[i])) for i in rows)
        batch = tokenizer([prompts[i] for i in rows], return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(lm.device)
        if before_batch is not None:
            before_batch(rows)
        output = lm.model.generate(
            **batch,
            max_new_tokens=budget,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        for row, i in enumerate(rows):
            tokens = new_tokens[row, : max(1, int(max_new_tokens[i]))].tolist()
            if tokenizer.eos_token_id in tokens:
                tokens = tokens[: tokens.index(tokenizer.eos_token_id) + 1]
            raw = tokenizer.decode(tokens, skip_special_tokens=False)
            text = lm.clean_answer(tokenizer.decode(tokens, skip_special_tokens=True))
            answers[i] = Answer(text=text, raw=raw, n_tokens=len(tokens))
    return [a for a in answers if a is not None]
