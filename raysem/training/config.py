"""Validated hyperparameters of one knowledge-learning trial (method, optimisation, γ, seed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Method = Literal["lora", "adalora", "adapter", "ia3", "full"]
Optimizer = Literal["adamw", "sgd"]
METHODS: tuple[str, ...] = ("lora", "adalora", "adapter", "ia3", "full")

DEFAULT_LR: dict[str, float] = {"lora": 5e-3, "adalora": 3e-2, "adapter": 1e-3, "ia3": 3e-2, "full": 3e-5}
"""Each method's default AdamW learning rate, used when a trial gives none (see README, "Defaults")."""


class TrialConfig(BaseModel):
    """Everything that decides what a trial trains; defaults are the documented study defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = Field("lora", description="lora, adalora, adapter (Houlsby), ia3 or full (DeepSpeed)")
    rank: int = Field(8, ge=1, description="LoRA / AdaLoRA final rank")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / rank)")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout (0 keeps packed and unpacked trials identical)")
    target_modules: tuple[str, ...] | None = Field(
        None, description="modules LoRA / AdaLoRA wrap; None: peft's default for the model's architecture"
    )
    adapter_size: int = Field(64, ge=1, description="Houlsby adapter bottleneck width")
    optimizer: Optimizer = Field(
        "adamw",
        description="adamw (default) or sgd (plain, no momentum); AdamW cancels a constant loss factor, so γ "
        "acts on a single-fact trial only under sgd",
    )
    lr: float = Field(
        DEFAULT_LR["lora"], gt=0, description="learning rate; omitted or None: DEFAULT_LR[method] (tuned for AdamW)"
    )
    steps: int = Field(21, ge=1, description="optimizer steps (each over one batch)")
    batch_size: int = Field(16, ge=1, description="facts per optimizer step for k-fact trials")
    weight_decay: float = Field(0.0, ge=0, description="decoupled weight decay (AdamW) / L2 (SGD)")
    max_grad_norm: float | None = Field(None, gt=0, description="per-trial gradient clipping; None = off")
    gamma: float = Field(0.0, ge=0, description="semantic-distance re-weighting strength (Eq. 5); 0 = plain loss")
    seed: int = Field(0, description="initialisation and data-order seed; a study adds the sampling index")
    zero_stage: int = Field(2, ge=0, le=3, description="DeepSpeed ZeRO stage for full fine-tuning")
    num_workers: int = Field(2, ge=1, description="Ray Train workers for full fine-tuning")
    ignore_case: bool = Field(False, description="exact match ignores case (after strip and space collapsing)")

    @field_validator("gamma", "lr", "weight_decay")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"must be finite, got {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _method_default_lr(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("lr") is None:
            method = data.get("method", "lora")
            if method in DEFAULT_LR:
                return {**data, "lr": DEFAULT_LR[method]}
        return data

    def targets(self, model: Any) -> tuple[str, ...]:
        """The modules LoRA / AdaLoRA wrap in ``model``: ``target_modules``, or peft's default for its family."""
        from raysem.models.architectures import ArchitectureError, architecture_of, peft_targets

        if self.target_modules:
            return self.target_modules
        family = architecture_of(model).family
        if self.method == "adalora":
            try:
                return peft_targets(family, "adalora")
            except ArchitectureError:  # peft's AdaLoRA mapping lacks families its LoRA mapping has (Mistral)
                pass
        return peft_targets(family, "lora")


PACK_SHARED_EXEMPT = ("seed", "gamma")
"""The only config fields that may differ between the trials of one pack."""


def check_packable(cfgs: Sequence[TrialConfig]) -> TrialConfig:
    """The pack's shared config; ValueError naming the field where two trials differ, or a non-LoRA method."""
    if not cfgs:
        raise ValueError("a pack needs at least one trial config")
    first = cfgs[0].model_dump(exclude=set(PACK_SHARED_EXEMPT))
    for i, cfg in enumerate(cfgs[1:], start=1):
        other = cfg.model_dump(exclude=set(PACK_SHARED_EXEMPT))
        for key, value in first.items():
            if other[key] != value:
                raise ValueError(
                    f"packed trials must share every setting but seed and gamma: "
                    f"{key!r} is {value!r} in trial 0 but {other[key]!r} in trial {i}"
                )
    if cfgs[0].method != "lora":
        raise ValueError(f"packed trials run LoRA only, not method {cfgs[0].method!r}")
    if cfgs[0].dropout:
        raise ValueError(
            f"packed trials need dropout 0 (per-trial dropout masks cannot match unpacked ones), got {cfgs[0].dropout}"
        )
    return cfgs[0]
