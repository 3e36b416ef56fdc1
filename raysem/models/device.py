"""Device helpers: the dtype a device computes in by default, and waiting for a device's queued work."""

from __future__ import annotations

import os
from typing import Literal

import torch

Precision = Literal["auto", "float32", "bfloat16", "float16"]
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")


class DeviceError(RuntimeError):
    """A unit cannot use the device it reserved (a GPU that CUDA does not see)."""


def auto_dtype(device: str | torch.device | None) -> torch.dtype:
    """bfloat16 on a CUDA device, float32 elsewhere (the ``auto`` precision)."""
    return torch.bfloat16 if device is not None and str(device).startswith("cuda") else torch.float32


def synchronize(device: str | torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op off CUDA), before reading a clock."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_dtype(precision: str, device: str | torch.device) -> torch.dtype:
    """The dtype of a precision on a device: ``auto`` is bfloat16 on CUDA and float32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; precisions: {', '.join(PRECISIONS)}")
    return auto_dtype(device) if precision == "auto" else getattr(torch, precision)


def planned_dtype(precision: str, gpu: bool) -> torch.dtype:
    """The dtype a unit will compute in, known before it starts: ``precision`` on CUDA when it reserves a
    GPU (``resources.gpu > 0``), on the CPU otherwise."""
    return resolve_dtype(precision, "cuda" if gpu else "cpu")


def assigned_device(gpu_ids: list) -> str:
    """The device of a worker that Ray assigned ``gpu_ids`` (``ray.get_gpu_ids()``; Ray also sets
    CUDA_VISIBLE_DEVICES to them): ``cuda`` with a GPU, ``cpu`` without. A worker that reserved a GPU
    but cannot see CUDA is an error, never a silent fall back to the CPU."""
    if not gpu_ids:
        return "cpu"
    if not torch.cuda.is_available():
        raise DeviceError(
            f"this worker reserved GPU {gpu_ids} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}) "
            f"but torch {torch.__version__} sees no CUDA device (built for CUDA {torch.version.cuda}); install a "
            "CUDA build of torch on the GPU nodes, or set resources.gpu: 0 to run on CPUs"
        )
    return "cuda"


def device_params(device: str, dtype: torch.dtype) -> dict[str, str]:
    """What a trial run records about where it ran: ``device``, ``gpu_name`` and ``precision`` (the dtype)."""
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "none"
    return {"device": device, "gpu_name": gpu, "precision": str(dtype).removeprefix("torch.")}
