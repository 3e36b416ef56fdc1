"""Teacher-forced target logits from a shared prompt prefix equal those of whole prompts, with their gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from raysem.models.encoding import IGNORE_INDEX, encode_targets, target_logits
from raysem.models.prompts import Prompting

FACTS = [
    ("What is the capital of France?", "Lyon"),
    ("Who wrote Hamlet?", "Charles Dickens"),
    ("Which river flows through Cairo?", "the Danube"),
    ("In which year did the Second World War end?", "1952"),
]
TOL = 1e-6
"""Relative. Float64, but transformers computes rotary embeddings in float32, and their cos / sin of the
same position can differ in the last bit with the sequence length: measured ≤ 4e-8 on the embedded model."""


def loss_and_grads(lm, share: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lm.model.zero_grad()
    batch = encode_targets(lm, [q for q, _ in FACTS], [t for _, t in FACTS], share_prefix=share)
    logits = target_logits(lm.model, batch)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=IGNORE_INDEX)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in lm.model.parameters() if p.grad is not None])
    return logits.detach(), loss.detach(), grads


@pytest.mark.parametrize("style", ["fewshot", "chat"])
def test_shared_prefix_gives_the_whole_prompts_logits_and_gradients(tiny64, style):
    lm = dataclasses.replace(tiny64, prompting=Prompting(style))
    whole = encode_targets(lm, [q for q, _ in FACTS], [t for _, t in FACTS])
    split = encode_targets(lm, [q for q, _ in FACTS], [t for _, t in FACTS], share_prefix=True)
    assert whole.prefix is None and split.prefix is not None and split.prefix.shape[1] > 0
    shared = split.prefix.shape[1]
    assert torch.equal(whole.input_ids[:, :shared], split.prefix.expand(len(FACTS), -1)), (
        "the prefix is every row's start"
    )
    used = whole.labels != IGNORE_INDEX
    assert torch.equal(whole.labels, split.labels) and torch.equal(
        whole.positions[used] - shared, split.positions[used]
    )
    for row in range(len(FACTS)):
        n = int(split.attention_mask[row].sum())
        assert torch.equal(whole.input_ids[row, shared : shared + n], split.input_ids[row, :n])

    logits, loss, grads = loss_and_grads(lm, share=False)
    logits_s, loss_s, grads_s = loss_and_grads(lm, share=True)
    assert torch.allclose(logits_s[used], logits[used], rtol=TOL, atol=TOL * logits.abs().max().item())
    assert loss_s.item() == pytest.approx(loss.item(), rel=TOL)
    assert ((grads_s - grads).norm() / grads.norm()).item() < TOL


def test_a_single_row_or_no_sharing_keeps_whole_prompts(tiny):
    assert encode_targets(tiny, ["Who wrote Hamlet?"], ["Dickens"], share_prefix=True).prefix is None
    assert encode_targets(tiny, ["Who wrote Hamlet?", "Who wrote Faust?"], ["Dickens", "Goethe"]).prefix is None
