"""What raysem must know of a model family beyond what transformers and peft already say.

LoRA, AdaLoRA and IA³ targets come from peft's per-architecture mappings (``peft_targets``). For each
supported family this table names where its decoder blocks are, its query projection (Table 2: a fused
``query_key_value`` weight gives the query's rows), the final norm whose output is the Figure 5 feature
(``get_decoder()``'s ``last_hidden_state``), and the two sublayer outputs the Houlsby adapters follow.
A model of another family is refused by :func:`architecture_of`, naming what raysem would need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from raysem.models.catalog import ModelError


class ArchitectureError(ModelError):
    """A model family raysem has no entry for."""


@dataclass(frozen=True)
class Architecture:
    family: str
    """The config's ``model_type``."""
    blocks: str
    """Attribute of ``model.get_decoder()`` holding the decoder blocks."""
    query: str
    """The query projection, relative to a block."""
    fused_qkv: bool
    """``query`` is a fused query/key/value projection whose output rows are ``[heads, 3, head_dim]``."""
    attention_output: str
    """The attention sublayer's output projection (before the residual addition), relative to a block."""
    mlp_output: str
    """The feed-forward sublayer's output projection (before the residual addition), relative to a block."""
    final_norm: str
    """The norm after the last block, relative to the model: its output is the Figure 5 feature."""


def _llama_like(family: str) -> Architecture:
    return Architecture(family, "layers", "self_attn.q_proj", False, "self_attn.o_proj", "mlp.down_proj", "model.norm")


ARCHITECTURES: dict[str, Architecture] = {
    "llama": _llama_like("llama"),
    "mistral": _llama_like("mistral"),
    "qwen2": _llama_like("qwen2"),
    "bloom": Architecture(
        "bloom",
        blocks="h",
        query="self_attention.query_key_value",
        fused_qkv=True,
        attention_output="self_attention.dense",
        mlp_output="mlp.dense_4h_to_h",
        final_norm="transformer.ln_f",
    ),
    "gpt_neox": Architecture(
        "gpt_neox",
        blocks="layers",
        query="attention.query_key_value",
        fused_qkv=True,
        attention_output="attention.dense",
        mlp_output="mlp.dense_4h_to_h",
        final_norm="gpt_neox.final_layer_norm",
    ),
}
"""The supported families: Llama (LLaMA2-chat), Mistral, Qwen2, BLOOM (BLOOMZ) and GPT-NeoX."""


def architecture_of(model_or_config: Any) -> Architecture:
    """The table entry of a model (or its config); ``ArchitectureError`` for a family without one."""
    config = getattr(model_or_config, "config", model_or_config)
    family = getattr(config, "model_type", None)
    if family not in ARCHITECTURES:
        raise ArchitectureError(
            f"model type {family!r} is not supported: raysem knows {', '.join(ARCHITECTURES)}. A new family needs "
            "an entry in raysem/models/architectures.py: its decoder blocks, query projection (fused or not), "
            "final norm and the attention and feed-forward output projections"
        )
    return ARCHITECTURES[family]


def peft_targets(family: str, method: str) -> tuple[str, ...]:
    """peft's default target modules of ``method`` (lora, adalora, ia3; ia3_feedforward: which of IA³'s targets
    scale their inputs) for a model family."""
    from peft.utils import constants

    mapping = {
        "lora": constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
        "adalora": constants.TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING,
        "ia3": constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
        "ia3_feedforward": constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
    }[method]
    if family not in mapping:
        raise ArchitectureError(
            f"peft has no default {method} targets for model type {family!r}: set trial.target_modules"
        )
    return tuple(mapping[family])


def query_rows(weight: torch.Tensor, arch: Architecture, heads: int) -> torch.Tensor:
    """The query projection's rows of ``weight`` (the query projection's weight, or a LoRA update of it):
    all of them, or for a fused ``[heads, 3, head_dim]`` projection the first of each head's three slices."""
    if not arch.fused_qkv:
        return weight
    rows, columns = weight.shape
    return weight.reshape(heads, 3, rows // (3 * heads), columns)[:, 0].reshape(-1, columns)
