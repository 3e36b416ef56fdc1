"""The semantic-distance re-weighted loss (Eqs. 5–6): L' = Σ_i (1 + γ·λ_i)·L_i."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from raysem.models.encoding import IGNORE_INDEX
from raysem.semantics.embedding import reweight_coefficient


def check_gamma(gamma: float) -> float:
    """γ must be a finite number ≥ 0 (γ = 0 is plain training)."""
    if not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    return float(gamma)


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, check: bool = True) -> torch.Tensor:
    """L_i: mean token cross-entropy of each row over its target tokens (labels != -100).

    ``logits[:, t]`` predicts ``labels[:, t]`` (labels already shifted to align), so callers
    can pass logits computed only at the positions the loss needs. ``check`` refuses a row with
    no target token; it reads a flag back from the device, so a GPU loop whose targets were
    checked when encoded passes False.
    """
    mask = labels != IGNORE_INDEX
    # half precision is upcast to float32; float64 stays float64
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    tokens = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.masked_fill(~mask, 0).reshape(-1),
        reduction="none",
    ).view(labels.shape)
    counts = mask.sum(dim=1)
    if check and bool((counts == 0).any()):
        raise ValueError("a row has no target tokens: every example needs a non-empty target")
    return (tokens * mask).sum(dim=1) / counts


def loss_weights(distances: Sequence[float] | torch.Tensor, gamma: float) -> torch.Tensor:
    """1 + γ·λ_i for each example's target distance dist(y_t, y_old)."""
    gamma = check_gamma(gamma)
    values = distances.tolist() if isinstance(distances, torch.Tensor) else list(distances)
    return torch.tensor([1.0 + gamma * reweight_coefficient(d) for d in values], dtype=torch.float32)


def reweighted_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    distances: Sequence[float] | torch.Tensor,
    gamma: float,
    reduction: Literal["sum", "mean"] = "sum",
) -> torch.Tensor:
    """Σ_i (1 + γ·λ_i)·L_i over the batch ("mean" divides by the batch size).

    ``logits`` is (batch, seq, vocab) and ``labels`` (batch, seq), aligned so that
    ``logits[:, t]`` predicts ``labels[:, t]``. With γ = 0 this is exactly the plain loss.
    """
    losses = per_example_loss(logits, labels)
    if len(distances) != losses.shape[0]:
        raise ValueError(f"{losses.shape[0]} examples but {len(distances)} distances")
    weights = loss_weights(distances, gamma).to(losses.device)
    total = (weights * losses).sum()
    return total / losses.shape[0] if reduction == "mean" else total
