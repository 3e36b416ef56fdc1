"""A tiny randomly initialised Llama with a real tokenizer, saved as a model folder: fast to load and train,
for the tests and the fault benchmarks (it answers nothing sensible; the embedded model does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

TINY_SHAPE: dict[str, int] = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
"""The tiny Llama's shape (the GPU check's dry run uses it too)."""


def tiny_llama(folder: Path, tokenizer: Any, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 64) over ``tokenizer``'s vocabulary, tied embeddings, saved with it in ``folder``."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **TINY_SHAPE,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
