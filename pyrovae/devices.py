"""Which torch device a run uses, and how it is named in a run's tags and in benchmark output.

Kept apart from :mod:`pyrovae.run.pipeline` so that code which trains without a logger (the
benchmarks, :class:`pyrovae.infer.trainer.Trainer` users) picks a device without importing MLflow.
"""

from __future__ import annotations

import torch

from pyrovae.errors import UserError


def select_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; ``"cuda"`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device '{name}' is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device = '{name}' but no CUDA GPU is available; use 'auto' or 'cpu'")
    return device


def describe(device: torch.device) -> str:
    """``"cpu"``, or ``"cuda:0 (NVIDIA H100 80GB HBM3)"``: a GPU named, so runs on different cards differ."""
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
