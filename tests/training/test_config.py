"""Trial settings: per-method default learning rates and validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from raysem.service.spec import StudySpec
from raysem.training.config import DEFAULT_LR, METHODS, TrialConfig


@pytest.mark.parametrize("method", METHODS)
def test_each_method_gets_its_own_default_lr(method):
    assert TrialConfig(method=method).lr == DEFAULT_LR[method]
    assert TrialConfig(method=method, lr=None).lr == DEFAULT_LR[method]
    assert TrialConfig(method=method, lr=2e-4).lr == 2e-4


def test_a_method_sweep_without_lr_uses_each_methods_default():
    spec = StudySpec(name="s", trial={"steps": 3}, sweep={"method": {"grid": ["lora", "ia3"]}})
    assert [spec.trial_config(method=m).lr for m in ("lora", "ia3", "full")] == [
        DEFAULT_LR["lora"],
        DEFAULT_LR["ia3"],
        DEFAULT_LR["full"],
    ]
    fixed = StudySpec(name="s", trial={"lr": 1e-3}, sweep={"method": {"grid": ["lora", "ia3"]}})
    assert fixed.trial_config(method="ia3").lr == 1e-3


@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan"), float("inf")])
def test_bad_learning_rates_are_refused_with_the_value(lr):
    with pytest.raises(ValidationError, match="lr"):
        TrialConfig(method="adapter", lr=lr)
