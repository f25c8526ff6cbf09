"""Baur et al.'s basic 3D autoencoder as Bieder et al. used it as baseline: an autoencoder trained
with an L1 loss on healthy FLAIR volumes; the residual, median-filtered (size 5) or grey-scale
eroded, is the anomaly map."""
from __future__ import annotations

from .recon_base import RECON_PARAMS, VolumeReconDetector


class BaurAE(VolumeReconDetector):
    name = "baur_ae"
    weights_name = "baur_ae"
    network_module = "uad_label.networks.baur"
    description = ("Baur et al. basic 3D autoencoder (baseline of Bieder et al.): L1-trained on healthy FLAIR; "
                   "|input - reconstruction| filtered with a size-5 median filter (or grey-scale erosion).")
    params = RECON_PARAMS
