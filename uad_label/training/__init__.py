"""Training entry points of the learned detectors, shared by `uad train NAME` and the MONAI Label
train tasks. Each trainer is `train(request: TrainRequest) -> dict` (a summary: where the weights
went, losses, seconds) registered here by name and imported on use."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

_TRAINERS: dict[str, str] = {}


@dataclass
class TrainRequest:
    data: list[Path]  # datastores or folders of healthy scans (see uad_label.training.data)
    config: str = "cpu"  # "cpu": small, minutes on a laptop CPU (the demo weights); "full": the GPU run
    out_dir: Path | None = None  # where <name>.pt goes (default: $UAD_WEIGHTS_DIR or the package weights)
    device: str = "auto"
    overrides: dict = field(default_factory=dict)  # e.g. {"epochs": 3, "lr": 1e-4}
    progress: Callable[[float, str], None] | None = None
    seed: int = 0


def register_trainer(name: str, target: str) -> None:
    _TRAINERS[name] = target


def trainers() -> list[str]:
    return sorted(_TRAINERS)


def get_trainer(name: str):
    if name not in _TRAINERS:
        raise ValueError(f"model: expected one of {trainers()} (trainable detectors), received {name!r}")
    module, func = _TRAINERS[name].split(":")
    return getattr(importlib.import_module(module), func)


def train(name: str, request: TrainRequest) -> dict:
    return get_trainer(name)(request)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: expected 'cpu' or 'auto' on a machine without CUDA, received {device!r}")
    return device
