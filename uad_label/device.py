"""The one rule for where torch work runs (detectors' `device` parameter, trainers' --device)."""
from __future__ import annotations

import torch

from .errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cuda' (or 'cuda:N') on a machine without CUDA is refused."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"parameter 'device': expected 'cpu' or 'auto' on a machine without CUDA, received {device!r}")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"parameter 'device': expected one of {list(DEVICE_CHOICES)}, received {device!r}")
    return device
