"""Batched greedy decoding with per-prompt answer lengths, the prompts' shared prefix computed once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from raysem.models.kv_cache import CACHE_ARGUMENT, prefix_cache, select_rows, shared_prefix_length
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
    share_prefix: bool = True,
    row_groups: Sequence[int] | None = None,
) -> list[Answer]:
    """Greedy answers to zero-shot questions, ``max_new_tokens[i]`` tokens for question i.

    Rows of one batch are decoded to the batch's longest budget and each is cut at its own;
    greedy decoding makes that equal to decoding each question alone with its own budget.
    Questions are sorted by answer budget, then length, so batches decode and pad little;
    answers come back in input order.

    The prompts' shared token prefix (the few-shot exemplars: ~90 of ~105 tokens) runs through the
    model once per call, and every batch continues from its KV cache; rows are padded between that
    prefix and their own tokens, and the attention mask and positions skip the padding.
    ``before_batch``, when given, is called before each batch is decoded with the input indices
    of its rows (in row order), so per-row state such as a packed-adapter map can be set. Rows under
    per-row state share no cache unless ``row_groups`` says which rows get the same state (rows
    with equal numbers): the prefix then runs once per group, under the state ``before_batch`` sets
    for the group's first row, and each row continues from its group's cache. Without groups such
    rows decode from their whole prompts, left-padded, as with ``share_prefix=False``
    (``benchmarks/shared_prefix.py`` compares the two).
    """
    if len(questions) != len(max_new_tokens):
        raise ValueError(f"{len(questions)} questions but {len(max_new_tokens)} answer lengths")
    tokenizer = lm.tokenizer
    ids = [tokenizer(lm.format_prompt(q), add_special_tokens=False)["input_ids"] for q in questions]
    if row_groups is not None and len(row_groups) != len(ids):
        raise ValueError(f"{len(ids)} questions but {len(row_groups)} row groups")
    shareable = before_batch is None or row_groups is not None
    shared = shared_prefix_length(ids) if share_prefix and shareable else 0
    prefix = torch.tensor([ids[0][:shared]] if ids else [[]], dtype=torch.long, device=lm.device)
    groups = [0] * len(ids) if before_batch is None or row_groups is None else list(row_groups)
    leaders: dict[int, int] = {}  # group → its first row
    for i, g in enumerate(groups):
        leaders.setdefault(g, i)
    cache_row = {g: j for j, g in enumerate(leaders)}
    shared_cache = None
    if shared:
        if before_batch is not None:
            before_batch(list(leaders.values()))
        shared_cache = prefix_cache(lm.model, prefix.expand(len(leaders), -1))
    order = sorted(range(len(ids)), key=lambda i: (int(max_new_tokens[i]), len(ids[i])))
    answers: list[Answer | None] = [None] * len(ids)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        budget = max(max(1, int(max_new_tokens[i])) for i in rows)
        input_ids, mask = _padded_after_prefix(prefix, [ids[i][shared:] for i in rows], tokenizer.pad_token_id)
        if before_batch is not None:
            before_batch(rows)
        cache = None
        if shared_cache is not None:
            index = torch.tensor([cache_row[groups[i]] for i in rows], dtype=torch.long, device=lm.device)
            cache = select_rows(shared_cache, index, lm.model.config)
        output = lm.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            **{CACHE_ARGUMENT: cache},
            max_new_tokens=budget,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        new_tokens = output[:, input_ids.shape[1] :]
        for row, i in enumerate(rows):
            tokens = new_tokens[row, : max(1, int(max_new_tokens[i]))].tolist()
            if tokenizer.eos_token_id in tokens:
                tokens = tokens[: tokens.index(tokenizer.eos_token_id) + 1]
            raw = tokenizer.decode(tokens, skip_special_tokens=False)
            text = lm.clean_answer(tokenizer.decode(tokens, skip_special_tokens=True))
            answers[i] = Answer(text=text, raw=raw, n_tokens=len(tokens))
    return [a for a in answers if a is not None]


def _padded_after_prefix(
    prefix: torch.Tensor, tails: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``prefix + padding + tail`` per row, right-aligned so every row's next token is generated at the
    same column, and the attention mask (0 on the padding)."""
    shared, width = prefix.shape[1], max(len(t) for t in tails)
    input_ids = torch.full((len(tails), shared + width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    input_ids[:, :shared], mask[:, :shared] = prefix.cpu(), 1
    for row, tail in enumerate(tails):
        input_ids[row, shared + width - len(tail) :] = torch.tensor(tail, dtype=torch.long)
        mask[row, shared + width - len(tail) :] = 1
    return input_ids.to(prefix.device), mask.to(prefix.device)
