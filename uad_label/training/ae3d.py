"""`uad train ae3d`: Oliinyk et al.'s 3D residual autoencoder, MSE loss, Adam 1e-3, best checkpoint
by validation loss."""
from __future__ import annotations

from ..networks import ae3d
from . import TrainRequest
from .recon_common import overridable_keys, train_volume_autoencoder

DEFAULTS = {
    "common": {"modality": "FLAIR", "loss": "mse", "lr": 1e-3, "val_fraction": 0.17, "threshold_percentile": 99.5},
    # demo: 2x-downsampled volumes, reduced channels, about 5 minutes on 2 CPU cores
    "cpu": {"network": ae3d.CPU, "canvas": (96, 96, 96), "factor": 2, "epochs": 30, "batch_size": 2,
            "max_minutes": 5.0},
    # published size at 1 mm (GPU): five levels need sizes divisible by 32
    "full": {"network": ae3d.FULL, "canvas": (160, 192, 160), "factor": 1, "epochs": 200, "batch_size": 1,
             "max_minutes": 600.0},
}


DISTRIBUTED = True  # `uad train ae3d --nproc N` (recon_common through uad_label.training.distributed)


def overridable(config: str) -> set[str]:
    return overridable_keys(DEFAULTS, config)


def train(request: TrainRequest) -> dict:
    return train_volume_autoencoder("ae3d", request, ae3d, DEFAULTS)
