"""Tuning methods attached to a resident base model and removed again without a trace.

``attach(model, cfg)`` returns an :class:`Attachment` that holds the trainable parameters, the
method's per-step hooks (AdaLoRA's rank allocation and orthogonal regulariser) and what is needed
to remove it: peft tuners are unloaded without merging, Houlsby adapters are unhooked, and full
fine-tuning restores a snapshot of every weight. After ``remove()`` the model's state dict is
bit-identical to what it was and every parameter's ``requires_grad`` flag is as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from peft import AdaLoraConfig, AdaLoraModel, IA3Config, IA3Model, LoraConfig, LoraModel
from torch import nn

from raysem.training.adapters import HoulsbyAdapters
from raysem.training.config import TrialConfig

ADAPTER_NAME = "default"
ADALORA_ORTH_REG_WEIGHT = 0.5
"""AdaLoRA's orthogonal regularisation coefficient (the method's published default)."""


def adalora_schedule(steps: int) -> dict[str, int]:
    """AdaLoRA's budget schedule for ``steps`` optimizer steps: a fifth of warm-up at the initial rank,
    a fifth of final fine-tuning at the target rank, and a cubic budget decrease in between."""
    return {"total_step": steps, "tinit": steps // 5, "tfinal": steps // 5, "deltaT": 1}


def adalora_initial_rank(rank: int) -> int:
    """Initial rank from which AdaLoRA prunes down to ``rank`` (peft's 12 → 8 ratio)."""
    return max(rank + 1, (3 * rank + 1) // 2)


class Attachment:
    """A method attached to a model: its trainable parameters, per-step hooks and how to remove it.

    Usable as a context manager that removes the method on exit.
    """

    def __init__(self, model: nn.Module, method: str) -> None:
        self.model = model
        self.method = method
        self._requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        self._removed = False

    def parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def regularization(self) -> torch.Tensor | None:
        """A method-specific term added to each step's loss (None when the method has none)."""
        return None

    def after_step(self, step: int) -> None:
        """Called after each optimizer step (0-based), while the step's gradients are still present."""

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def remove(self) -> None:
        """Remove the method and restore the model's weights and ``requires_grad`` flags; idempotent."""
        if self._removed:
            return
        self._detach()
        for name, param in self.model.named_parameters():
            param.requires_grad_(self._requires_grad[name])
        self.model.eval()
        self._removed = True

    def _detach(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


class PeftAttachment(Attachment):
    """LoRA, AdaLoRA or IA³ injected in place by the peft tuner; removed with ``unload()`` (no merge)."""

    def __init__(self, model: nn.Module, cfg: TrialConfig) -> None:
        super().__init__(model, cfg.method)
        if cfg.method == "lora":
            self.tuner = LoraModel(model, lora_config(cfg, model), ADAPTER_NAME)
        elif cfg.method == "adalora":
            self.tuner = AdaLoraModel(model, adalora_config(cfg, model), ADAPTER_NAME)
        elif cfg.method == "ia3":
            self.tuner = IA3Model(model, ia3_config(), ADAPTER_NAME)
        else:
            raise ValueError(f"{cfg.method!r} is not a peft method")
        self._factors = [
            (name, p)
            for name, p in model.named_parameters()
            if cfg.method == "adalora" and (".lora_A." in name or ".lora_B." in name)
        ]

    def regularization(self) -> torch.Tensor | None:
        """AdaLoRA's orthogonal regulariser: mean over factors of ‖AAᵀ − I‖_F and ‖BᵀB − I‖_F."""
        if not self._factors:
            return None
        total = torch.zeros((), device=self._factors[0][1].device)
        for name, p in self._factors:
            cov = p @ p.T if ".lora_A." in name else p.T @ p
            total = total + torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype))
        return ADALORA_ORTH_REG_WEIGHT * total / len(self._factors)

    def after_step(self, step: int) -> None:
        if isinstance(self.tuner, AdaLoraModel):
            self.tuner.update_and_allocate(step)

    def _detach(self) -> None:
        self.tuner.unload()


class AdapterAttachment(Attachment):
    """Houlsby bottleneck adapters after every attention and feed-forward sublayer; base weights frozen."""

    def __init__(self, model: nn.Module, cfg: TrialConfig) -> None:
        super().__init__(model, cfg.method)
        for param in model.parameters():
            param.requires_grad_(False)
        self.adapters = HoulsbyAdapters(model, cfg.adapter_size)

    def parameters(self) -> list[nn.Parameter]:
        return self.adapters.parameters()

    def train(self, mode: bool = True) -> None:
        super().train(mode)
        self.adapters.train(mode)

    def _detach(self) -> None:
        self.adapters.remove()


class FullAttachment(Attachment):
    """Full fine-tuning: every weight trainable; a snapshot (on the CPU) is copied back on removal."""

    def __init__(self, model: nn.Module, cfg: TrialConfig) -> None:
        super().__init__(model, cfg.method)
        self._snapshot = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        for param in model.parameters():
            param.requires_grad_(True)

    @torch.no_grad()
    def _detach(self) -> None:
        for key, tensor in self.model.state_dict().items():
            tensor.copy_(self._snapshot[key])
        self._snapshot.clear()


def lora_config(cfg: TrialConfig, model: nn.Module) -> LoraConfig:
    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.targets(model)),
        bias="none",
    )


def adalora_config(cfg: TrialConfig, model: nn.Module) -> AdaLoraConfig:
    return AdaLoraConfig(
        target_r=cfg.rank,
        init_r=adalora_initial_rank(cfg.rank),
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.targets(model)),
        orth_reg_weight=ADALORA_ORTH_REG_WEIGHT,
        **adalora_schedule(cfg.steps),
    )


def ia3_config() -> IA3Config:
    """IA³ on peft's per-architecture defaults (for Llama: k_proj, v_proj and the feed-forward down_proj)."""
    return IA3Config()


_ATTACHMENTS: dict[str, Callable[[nn.Module, TrialConfig], Attachment]] = {
    "lora": PeftAttachment,
    "adalora": PeftAttachment,
    "ia3": PeftAttachment,
    "adapter": AdapterAttachment,
    "full": FullAttachment,
}


def attach(model: nn.Module, cfg: TrialConfig) -> Attachment:
    """Attach ``cfg.method`` to ``model`` in place; call ``remove()`` (or leave the ``with`` block) to undo it."""
    return _ATTACHMENTS[cfg.method](model, cfg)
