"""`uad train baur_ae`: Baur et al.'s basic 3D autoencoder, L1 loss, Adam 1e-3 (Bieder et al.'s baseline)."""
from __future__ import annotations

from ..networks import baur
from . import TrainRequest
from .recon_common import overridable_keys, train_volume_autoencoder

DEFAULTS = {
    "common": {"modality": "FLAIR", "loss": "l1", "lr": 1e-3, "val_fraction": 0.17, "threshold_percentile": 99.5},
    # demo: 2x-downsampled volumes, reduced channels, about 5 minutes on 2 CPU cores
    "cpu": {"network": baur.CPU, "canvas": (80, 96, 80), "factor": 2, "epochs": 30, "batch_size": 2,
            "max_minutes": 5.0},
    # published size at 1 mm (GPU)
    "full": {"network": baur.FULL, "canvas": (160, 192, 160), "factor": 1, "epochs": 200, "batch_size": 2,
             "max_minutes": 600.0},
}


DISTRIBUTED = True  # `uad train baur_ae --nproc N` (recon_common through uad_label.training.distributed)


def overridable(config: str) -> set[str]:
    return overridable_keys(DEFAULTS, config)


def train(request: TrainRequest) -> dict:
    return train_volume_autoencoder("baur_ae", request, baur, DEFAULTS)
