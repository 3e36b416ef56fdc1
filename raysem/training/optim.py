"""The trial optimizer a config names, over the parameters a trial trains."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from raysem.training.config import TrialConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrialConfig) -> torch.optim.Optimizer:
    """AdamW or plain SGD (no momentum) with the config's learning rate and weight decay.

    Both are element-wise, so packed trials (stacked per-trial tensors) train as if alone.
    """
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
