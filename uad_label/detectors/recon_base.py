"""The pipeline the reconstruction detectors share (baur_ae, ae3d, strega):

    work volume --normalise--> --canvas (brain-centred crop, downsample)--> network --> reconstruction
    residual = uad_kernels.error_map(input, reconstruction)  (abs or positive part; optionally minus
               the mean residual of healthy references)
    post-processing = uad_kernels.median_filter / grey_erosion (volumes) or Otsu + area opening (slices)
    --canvas inverse (upsample, paste back)--> work grid --> the base class maps it to the native grid

The same functions serve training (uad_label.training.recon_common) so that the training data go
through exactly the preprocessing inference uses.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from uad_kernels import otsu_threshold

from ..device import resolve_device
from ..errors import InputError
from ..transforms.canvas import Canvas
from ..transforms.intensity import median_normalise
from ..transforms.residual import canvas_filter_size, residual_map, threshold_key
from .base import Detector
from .params import Param

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- detector
RECON_PARAMS = (
    Param("residual", "abs", str, "residual: |input - reconstruction| (abs) or its positive part (positive)",
          choices=("abs", "positive")),
    Param("filter", "median", str, "post-filter of the residual: median filter, grey-scale erosion or none",
          choices=("median", "erosion", "none")),
    Param("filter_size", 5, int, "filter size in 1 mm voxels (on a canvas downsampled k times: the nearest odd "
          "size / k)", minimum=1, maximum=15),
    Param("subtract_healthy_mean", False, bool,
          "subtract the mean residual of the healthy validation references (stored with the weights)"),
    Param("device", "auto", str, "where the network runs (auto = CUDA when available)",
          choices=("auto", "cpu", "cuda")),
)


class VolumeReconDetector(Detector):
    """A 3D autoencoder on the brain-centred canvas; subclasses say which network (`network_module`)."""

    modalities = ("FLAIR",)
    params = RECON_PARAMS
    network_module = ""  # "uad_label.networks.baur"

    def model(self, device: str = "cpu"):
        """(network in eval mode, model card); rebuilt when the weights file changes."""
        return self.cached_model(device, self._build)

    def _build(self, state, card, device):
        import importlib

        if card.get("detector") not in (None, self.name):
            raise ValueError(f"weights of '{self.weights_name}': model card is for detector "
                             f"{card.get('detector')!r}, expected {self.name!r}")
        net_cfg = card.get("network")
        if not isinstance(net_cfg, dict):
            raise ValueError(f"weights of '{self.weights_name}': model card has no 'network' configuration")
        net = importlib.import_module(self.network_module).build(**net_cfg)
        weights = {k: v for k, v in state.items() if not k.startswith("extra.")}
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
        return net.eval().to(device)

    def check_modality(self, case, card):
        mod = card.get("modality", self.modalities[0])
        if mod not in case.arrays:
            raise InputError(f"images: weights of '{self.name}' were trained on {mod}, received {sorted(case.arrays)}")
        return mod

    @torch.no_grad()
    def reconstruct_canvas(self, case, params, progress):
        """(input canvas, reconstruction, brain canvas, Canvas, card) on the network's device."""
        device = resolve_device(params["device"])
        progress(0.0, "loading the network")
        net, card = self.model(device)
        mod = self.check_modality(case, card)
        x = median_normalise(case.arrays[mod], case.brain)
        cv = Canvas.around(case.brain, card["canvas"], card["factor"])
        cover = cv.coverage(case.brain)
        if cover < 0.98:
            log.warning("%s: %.1f%% of the brain lies outside the network canvas", self.name, 100 * (1 - cover))
        xt = cv.to_canvas(x).to(device)
        bt = (cv.to_canvas(case.brain.astype(np.float32)) > 0.5).to(device)
        progress(0.2, "reconstructing")
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")):
            rec = net(xt)
        return xt, rec.float(), bt, cv, card

    def compute_map(self, case, params, progress):
        xt, rec, bt, cv, card = self.reconstruct_canvas(case, params, progress)
        progress(0.7, "residual")
        state, _ = self.load_weights()
        mean = state.get(f"extra.healthy_mean_{params['residual']}") if params["subtract_healthy_mean"] else None
        if params["subtract_healthy_mean"] and mean is None:
            raise InputError(f"parameter 'subtract_healthy_mean': the weights of '{self.name}' hold no healthy mean")
        m, _ = residual_map(xt, rec, bt, params["residual"], mean, params["filter"],
                            canvas_filter_size(params["filter_size"], card["factor"]))
        work = cv.to_work(m)
        work[~case.brain] = 0.0
        return work

    def default_threshold(self, work_map, case, params):
        _, card = self.load_weights()
        key = threshold_key(params)
        table = card.get("thresholds", {})
        if key in table:
            return float(table[key]), (f"default: the {card.get('threshold_percentile', 99.5)}th percentile of the "
                                       f"in-brain map on the healthy validation volumes ({key})")

        return float(otsu_threshold(work_map, mask=case.brain)), (
            f"default: Otsu threshold of this map (no healthy calibration stored for {key})")
