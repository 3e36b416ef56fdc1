"""Prompt + target batches for training and teacher-forced scoring, with logits only at target positions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from raysem.models.kv_cache import CACHE_ARGUMENT, prefix_cache, shared_prefix_length
from raysem.models.loader import LoadedModel

IGNORE_INDEX = -100
"""Label of positions that are not target tokens (ignored by the loss and token accuracy)."""


@dataclass
class TargetBatch:
    """Right-padded prompt+target sequences; ``positions[i, j]`` is the position whose output predicts ``labels[i, j]``.

    With a ``prefix`` (1 × n tokens every row starts with), the rows hold only what follows it, and
    positions count from the prefix's end."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    labels: torch.Tensor
    prefix: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> TargetBatch:
        return TargetBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.positions.to(device),
            self.labels.to(device),
            prefix=None if self.prefix is None else self.prefix.to(device),
        )

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def encode_targets(
    lm: LoadedModel, questions: Sequence[str], targets: Sequence[str], share_prefix: bool = False
) -> TargetBatch:
    """Tokenise each prompt and its target as ``LoadedModel.prompt_and_answer_ids`` joins them; the loss
    sees only target tokens. ``share_prefix`` splits off the tokens every prompt starts with (the few-shot
    exemplars), which :func:`target_logits` then runs once for the whole batch."""
    if len(questions) != len(targets):
        raise ValueError(f"{len(questions)} questions but {len(targets)} targets")
    tok = lm.tokenizer
    pairs = [lm.prompt_and_answer_ids(q, t) for q, t in zip(questions, targets)]
    prompts, answers = [p for p, _ in pairs], [a for _, a in pairs]
    for target, ids in zip(targets, answers):
        if not ids:
            raise ValueError(f"target {target!r} has no tokens")
    shared = shared_prefix_length(prompts) if share_prefix and len(prompts) > 1 else 0
    prefix = torch.tensor([prompts[0][:shared]], dtype=torch.long) if shared else None
    prompts = [p[shared:] for p in prompts]
    length = max(len(p) + len(a) for p, a in zip(prompts, answers))
    width = max(len(a) for a in answers)
    n = len(prompts)
    input_ids = torch.full((n, length), tok.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        seq = p + a
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention_mask[i, : len(seq)] = 1
        positions[i, : len(a)] = torch.arange(len(p) - 1, len(p) - 1 + len(a))
        labels[i, : len(a)] = torch.tensor(a)
    return TargetBatch(input_ids, attention_mask, positions, labels, prefix)


def target_logits(model: nn.Module, batch: TargetBatch) -> torch.Tensor:
    """Logits (batch, target width, vocab) computed only at the positions that predict target tokens.

    Runs the decoder stack, gathers the needed hidden states, and applies the output head to
    those alone: the full-vocabulary projection of prompt positions is never computed. A batch's
    ``prefix`` runs once; every row continues from its KV cache, and gradients flow back through it.
    """
    decoder = model.get_decoder()
    if batch.prefix is None:
        hidden = decoder(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).last_hidden_state
    else:
        cache = prefix_cache(decoder, batch.prefix)
        cache.batch_repeat_interleave(batch.input_ids.shape[0])
        mask = torch.cat(
            [batch.attention_mask.new_ones(batch.input_ids.shape[0], batch.prefix.shape[1]), batch.attention_mask], 1
        )
        hidden = decoder(
            input_ids=batch.input_ids, attention_mask=mask, use_cache=True, **{CACHE_ARGUMENT: cache}
        ).last_hidden_state
    index = batch.positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return model.get_output_embeddings()(hidden.gather(1, index))


@torch.no_grad()
def token_accuracy(model: nn.Module, batch: TargetBatch) -> list[float]:
    """EasyEdit's teacher-forced token accuracy: per row, mean of argmax == target token over target tokens."""
    predicted = target_logits(model, batch).argmax(-1)
    mask = batch.labels != IGNORE_INDEX
    hits = ((predicted == batch.labels) & mask).sum(1).float() / mask.sum(1).float()
    return hits.tolist()
