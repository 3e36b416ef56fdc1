"""Target semantic distance (Eq. 1) and the re-weighting coefficient (Eq. 6)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from raysem.models.loader import LoadedModel


@dataclass(frozen=True)
class AnswerEmbedder:
    """EMB(y) with the *base* model's input embeddings, so distances stay comparable after tuning."""

    table: torch.Tensor
    tokenizer: PreTrainedTokenizerBase

    @classmethod
    def from_model(cls, lm: LoadedModel, copy: bool = False) -> AnswerEmbedder:
        """Use the model's embedding rows; ``copy=True`` snapshots them (needed when training changes them)."""
        table = lm.model.get_input_embeddings().weight.detach()
        return cls(table.clone() if copy else table, lm.tokenizer)

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> tuple[torch.Tensor, np.ndarray]:
        """Mean of the input-embedding rows of each text's tokens (no special tokens).

        Returns the embeddings (n × d, float32; zero rows for empty answers) and a boolean mask
        of answers that have no tokens and therefore no embedding.
        """
        out = torch.zeros(len(texts), self.table.shape[1], dtype=torch.float32)
        empty = np.zeros(len(texts), dtype=bool)
        for i, text in enumerate(texts):
            ids = self.tokenizer(text, add_special_tokens=False).input_ids if text.strip() else []
            if not ids:
                empty[i] = True
                continue
            out[i] = self.table[torch.tensor(ids, device=self.table.device)].float().mean(dim=0).cpu()
        return out, empty

    def distance(self, answers: Sequence[str], targets: Sequence[str]) -> np.ndarray:
        """dist(a_i, t_i) = 1 - cos(EMB(a_i), EMB(t_i)); NaN where either side is empty."""
        if len(answers) != len(targets):
            raise ValueError(f"{len(answers)} answers but {len(targets)} targets")
        emb_a, empty_a = self.embed(answers)
        emb_t, empty_t = self.embed(targets)
        dist = cosine_distance(emb_a, emb_t)
        dist[empty_a | empty_t] = np.nan
        return dist


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Row-wise ``1 - cos(a_i, b_i)`` in float64."""
    a64, b64 = a.double(), b.double()
    cos = (a64 * b64).sum(-1) / (a64.norm(dim=-1) * b64.norm(dim=-1))
    return (1.0 - cos).numpy()


def clip_distance(dist: float) -> float:
    """Distance clipped to [0, 1], as used wherever a weight is derived from it; NaN stays NaN."""
    dist = float(dist)
    return dist if math.isnan(dist) else min(1.0, max(0.0, dist))


def reweight_coefficient(dist: float) -> float:
    """λ_i = 1 - cos(dist·π - π/2) (Eq. 6), with dist clipped to [0, 1].

    An undefined distance (the base model gave an empty answer) counts as the farthest, dist = 1.
    """
    clipped = clip_distance(dist)
    return 1.0 - math.cos((1.0 if math.isnan(clipped) else clipped) * math.pi - math.pi / 2)


def distance_band(dist: float) -> str:
    """Table 5's bands: short [0.1, 0.3), medium [0.3, 0.6), long [0.6, 1.0]; 'none' outside them."""
    if math.isnan(dist):
        return "none"
    if 0.1 <= dist < 0.3:
        return "short"
    if 0.3 <= dist < 0.6:
        return "medium"
    if 0.6 <= dist <= 1.0:
        return "long"
    return "none"
