"""KV caches of a shared prompt prefix: the few-shot exemplars run through the model once, not once per row."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import transformers
from packaging.version import Version
from torch import nn
from transformers import Cache, DynamicCache, PreTrainedConfig

CACHE_ARGUMENT = "cache" if Version(transformers.__version__) >= Version("5.24") else "past_key_values"
"""The KV cache's name in ``forward`` / ``generate`` arguments and in model outputs: ``past_key_values``
before transformers 5.24, ``cache`` since."""


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own."""
    if not rows:
        return 0
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n


def prefix_cache(model: nn.Module, prefix: torch.Tensor) -> Cache:
    """The KV cache of ``prefix`` (1 × n tokens) under ``model``'s current weights (a causal LM or its
    decoder stack); it carries autograd history when gradients are enabled."""
    return getattr(model(input_ids=prefix, use_cache=True), CACHE_ARGUMENT)


def select_rows(cache: Cache, index: torch.Tensor, config: PreTrainedConfig) -> DynamicCache:
    """A new cache whose row i is row ``index[i]`` of ``cache`` (``config``: the model's); ``cache`` is left as it is."""
    return DynamicCache(
        [(layer.keys.index_select(0, index), layer.values.index_select(0, index)) for layer in cache.layers],
        config=config,
    )
