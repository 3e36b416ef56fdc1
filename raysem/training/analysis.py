"""The paper's §2.3 analyses: Frobenius projections of a LoRA update (Table 2) and feature PCA (Figure 5)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from raysem.models.architectures import architecture_of, query_rows
from raysem.models.loader import LoadedModel
from raysem.training.adapters import decoder_blocks


def lora_query_layers(model: nn.Module) -> dict[int, LoraLayer]:
    """The LoRA-wrapped query projections of a model (peft-injected or a PeftModel), by layer index: its
    architecture's ``query`` module (``self_attn.q_proj``, or a fused ``query_key_value``)."""
    pattern = re.compile(rf"(?:^|\.)(\d+)\.{re.escape(architecture_of(model).query)}$")
    found = {}
    for name, module in model.named_modules():
        match = pattern.search(name)
        if match and isinstance(module, LoraLayer):
            found[int(match.group(1))] = module
    return found


def has_lora_layers(model: nn.Module) -> bool:
    return bool(lora_query_layers(model))


def _top_singular(matrix: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :r], vh[:r].T


def _random_orthonormal(rows: int, r: int, generator: torch.Generator) -> torch.Tensor:
    q, upper = torch.linalg.qr(torch.randn(rows, r, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(upper))


def frobenius_analysis(model_with_lora: nn.Module, layer: int = -1, seed: int = 0) -> dict[str, float]:
    """Table 2's norms for ``W_q`` of one layer (negative indices count from the last decoder block).

    ``ΔW`` is the LoRA update (``B·A·scale``); ``U, V`` are top-r left/right singular vectors of ΔW,
    of W itself, or a random orthonormal pair (seeded); ``proj_*_fro`` are ``‖Uᵀ W V‖_F`` for each
    pair and ``amplification = ‖ΔW‖_F / ‖Uᵀ W V‖_F`` with ΔW's own directions. Computed in float64.
    """
    arch = architecture_of(model_with_lora)
    layers = lora_query_layers(model_with_lora)
    if not layers:
        raise ValueError(f"the model has no LoRA-wrapped {arch.query} layers")
    index = layer + len(decoder_blocks(model_with_lora)) if layer < 0 else layer
    if index not in layers:
        raise ValueError(f"layer {layer} has no LoRA-wrapped q_proj; wrapped layers: {sorted(layers)}")
    module = layers[index]
    adapter = module.active_adapters[0]
    rank = int(module.r[adapter])
    with torch.no_grad():
        heads = model_with_lora.config.num_attention_heads
        delta = query_rows(module.get_delta_weight(adapter).detach().double().cpu(), arch, heads)
        weight = query_rows(module.get_base_layer().weight.detach().double().cpu(), arch, heads)
    u_d, v_d = _top_singular(delta, rank)
    u_w, v_w = _top_singular(weight, rank)
    generator = torch.Generator().manual_seed(seed)
    u_r = _random_orthonormal(weight.shape[0], rank, generator)
    v_r = _random_orthonormal(weight.shape[1], rank, generator)
    dw_fro = float(torch.linalg.matrix_norm(delta))
    proj_dw = float(torch.linalg.matrix_norm(u_d.T @ weight @ v_d))
    return {
        "layer": float(index),
        "rank": float(rank),
        "dW_fro": dw_fro,
        "W_fro": float(torch.linalg.matrix_norm(weight)),
        "proj_dW_fro": proj_dw,
        "proj_W_fro": float(torch.linalg.matrix_norm(u_w.T @ weight @ v_w)),
        "proj_random_fro": float(torch.linalg.matrix_norm(u_r.T @ weight @ v_r)),
        "amplification": dw_fro / proj_dw if proj_dw > 0 else float("nan"),
    }


@torch.no_grad()
def last_token_features(lm: LoadedModel, prompts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Last-layer hidden state (after the final norm) of each prompt's final token, shape (n, hidden).

    Prompts are formatted as for answering and left-padded; position ids follow the attention mask,
    so a prompt's features do not depend on the batch it is in.
    """
    tokenizer = lm.tokenizer
    rows = []
    for start in range(0, len(prompts), batch_size):
        texts = [lm.format_prompt(p) for p in prompts[start : start + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        hidden = lm.model.get_decoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=positions
        ).last_hidden_state
        rows.append(hidden[:, -1, :].float().cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, lm.model.config.hidden_size), dtype=np.float32)


@dataclass(frozen=True)
class PCAResult:
    """Projections onto the first principal components, and the variance (ddof 1) along each."""

    scores: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray


def pca(features: np.ndarray, n_components: int = 15, seed: int = 0, solver: str = "auto") -> PCAResult:
    """The first ``n_components`` principal components (at most min(n_samples, n_features)).

    ``sklearn.decomposition.PCA``: an exact SVD for small matrices, a seeded randomized SVD for
    large ones (``solver="auto"``; ``"full"`` / ``"randomized"`` force one). Each component's
    sign is fixed so that its largest-magnitude score is positive; ratios are shares of the
    total variance.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"PCA needs a 2-D matrix with at least 2 rows, got shape {x.shape}")
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    from sklearn.decomposition import PCA  # here, not at import: the GPU check runs trials without scikit-learn

    k = min(n_components, *x.shape)
    model = PCA(n_components=k, svd_solver=solver, random_state=seed)
    scores = model.fit_transform(x)
    scores = scores * np.sign(scores[np.abs(scores).argmax(axis=0), np.arange(k)])
    return PCAResult(
        scores=scores,
        explained_variance=model.explained_variance_,
        explained_variance_ratio=model.explained_variance_ratio_,
    )
