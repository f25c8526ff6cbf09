"""Training entry points of the learned detectors, shared by `uad train NAME` and the MONAI Label
train tasks. Each trainer is `train(request: TrainRequest) -> dict` (a summary: where the weights
went, losses, seconds) registered here by name and imported on use; its module also says which
overrides each config accepts (`overridable(config) -> set`). `check_request` is the one validation
of config, overrides and the number of processes (`nproc`), for the CLI and the server alike, run before any
data is read; `train` with nproc > 1 runs the trainer in a child torchrun (training.distributed.run_request)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..device import resolve_device
from ..errors import InputError

# learned detectors: name -> "module:function" of their trainer (TrainRequest -> summary dict)
_TRAINERS: dict[str, str] = {
    "inpainting": "uad_label.training.inpainting:train_generator",
    "inpainting_fast": "uad_label.training.inpainting:train_regressor",
    "patchddm": "uad_label.training.patchddm:train",
    "ppr": "uad_label.training.ppr:train",
    "segresnet": "uad_label.training.segresnet:train",
    "baur_ae": "uad_label.training.baur_ae:train",
    "ae3d": "uad_label.training.ae3d:train",
    "strega": "uad_label.training.strega:train",
}


@dataclass
class TrainRequest:
    data: list[Path]  # datastores or folders of healthy scans (see uad_label.training.data)
    config: str = "cpu"  # "cpu": small, minutes on a laptop CPU (the demo weights); "full": the GPU run
    out_dir: Path | None = None  # where <name>.pt goes (default: $UAD_WEIGHTS_DIR or the package weights)
    device: str = "auto"
    overrides: dict = field(default_factory=dict)  # e.g. {"epochs": 3, "lr": 1e-4}
    progress: Callable[[float, str], None] | None = None
    seed: int = 0
    nproc: int = 1  # processes (torchrun, DistributedDataParallel); > 1 for the trainers with DISTRIBUTED = True


def trainers() -> list[str]:
    return sorted(_TRAINERS)


def get_trainer(name: str):
    module, func = _target(name)
    return getattr(importlib.import_module(module), func)


# keys MONAI Label (or its client) puts into a train request that are neither a TrainRequest field nor an override
MONAILABEL_TRAIN_KEYS = frozenset({"model", "bundle_path", "client_id", "run_sync", "enqueue"})


def check_config(config: str, choices) -> None:
    if config not in choices:
        raise InputError(f"config: expected one of {sorted(choices)}, received {config!r}")


def check_overrides(request: TrainRequest, allowed) -> None:
    unknown = sorted(set(request.overrides) - set(allowed))
    if unknown:
        raise InputError(f"overrides: unknown setting(s) {unknown}: expected some of {sorted(allowed)}")


def check_request(name: str, request: TrainRequest) -> None:
    """Config, overrides and nproc of a training request, checked against what the trainer accepts."""
    from .distributed import check_nproc

    module = importlib.import_module(_target(name)[0])
    check_overrides(request, module.overridable(request.config))
    resolve_device(request.device)
    check_nproc(request.nproc, name, request.device)


def request_from_params(name: str, params: dict, data: list[Path], out_dir: Path | None) -> TrainRequest:
    """A TrainRequest from a MONAI Label train request (`config`, `device` and `nproc` are fields, MONAI
    Label's own keys are dropped, everything else is an override), validated."""
    rest = {k: v for k, v in params.items() if k not in MONAILABEL_TRAIN_KEYS}
    request = TrainRequest(list(data), str(rest.pop("config", "cpu")), out_dir, str(rest.pop("device", "auto")), rest,
                           nproc=rest.pop("nproc", 1))
    check_request(name, request)
    return request


def _target(name: str) -> tuple[str, str]:
    if name not in _TRAINERS:
        raise InputError(f"model: expected one of {trainers()} (trainable detectors), received {name!r}")
    module, func = _TRAINERS[name].split(":")
    return module, func


def train(name: str, request: TrainRequest) -> dict:
    check_request(name, request)
    if request.nproc > 1:
        from .distributed import launched, run_request

        if not launched():
            return run_request(name, request)
    return get_trainer(name)(request)
