"""The device and precision a unit runs in: resolved from what Ray assigned, never a silent CPU fall-back."""

from __future__ import annotations

import pytest
import torch

from raysem.models.device import DeviceError, assigned_device, device_params, resolve_dtype


@pytest.mark.parametrize(
    ("precision", "device", "dtype"),
    [
        ("auto", "cpu", torch.float32),
        ("auto", "cuda", torch.bfloat16),
        ("auto", "cuda:1", torch.bfloat16),
        ("float32", "cuda", torch.float32),
        ("bfloat16", "cpu", torch.bfloat16),
        ("float16", "cuda", torch.float16),
    ],
)
def test_precision_resolves_per_device(precision, device, dtype):
    assert resolve_dtype(precision, device) is dtype


def test_an_unknown_precision_is_named():
    with pytest.raises(ValueError, match=r"unknown precision 'fp8'.*auto, float32, bfloat16, float16"):
        resolve_dtype("fp8", "cpu")


def test_a_worker_runs_where_ray_put_it(monkeypatch):
    assert assigned_device([]) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert assigned_device([0]) == "cuda"


def test_a_reserved_gpu_that_cuda_cannot_see_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(DeviceError, match=r"reserved GPU \[3\] \(CUDA_VISIBLE_DEVICES='3'\).*resources\.gpu: 0"):
        assigned_device([3])


def test_device_params_name_the_dtype():
    assert device_params("cpu", torch.bfloat16) == {"device": "cpu", "gpu_name": "none", "precision": "bfloat16"}
