"""Sliding-window inpainting detector (issue 4) and its fast mode.

`inpainting` (exact): a box slides over every slice with brain; G inpaints each masked copy and the
error inside the box is that window's score; scores averaged over overlapping boxes give the heat
map. Built on uad_kernels: masked copies made on the device one chunk at a time, G in large
batches (bf16 autocast on CUDA), box errors and heat-map accumulation fused.

`inpainting_fast`: R predicts G's box error from the masked copy alone (one small network, no
reconstruction), same windows, same heat-map assembly.

Slices: the work volume (template space, axial = last axis) is downsampled by the weights'
`scale`, cut along `slice_axis`, each slice normalised (brain 99th percentile -> 1, clipped to
[0, 2], background 0), shrunk only if larger than the network slice and zero-padded to it
(centred); the heat maps go back the same way (crop, resize, trilinear upsampling).
See docs/inpainting.md.
"""
from __future__ import annotations

import numpy as np
import torch

from ..device import resolve_device
from ..errors import InputError
from ..networks.inpainting_maps import ENGINES, exact_slice_map, fast_slice_map
from ..transforms.slices import SliceMapper
from .base import Detector, MapOutput
from .params import Param

CPU_STRIDE = 8  # default stride on a CPU (the published 4 on CUDA); see docs/inpainting.md


# ----------------------------------------------------------------------------- detectors
COMMON = (
    Param("box", 16, int, "box side in network-slice pixels (published 16)", minimum=2, maximum=128),
    Param("stride", None, int, "window stride in network-slice pixels; null = the published 4 on CUDA, "
          f"{CPU_STRIDE} on a CPU (time)", minimum=1, maximum=128, nullable=True),
    Param("slice_axis", 2, int, "axis of the work grid the slices are cut along (2 = axial)", choices=(0, 1, 2)),
    Param("batch_size", None, int, "windows per network batch; null = 512 on CUDA, 64 on a CPU", minimum=1,
          maximum=8192, nullable=True),
    Param("device", "auto", str, "auto (CUDA when available), cpu or cuda", choices=("auto", "cpu", "cuda")),
)


class _SlidingWindowDetector(Detector):
    modalities = ("FLAIR",)

    def _config(self, card):
        from ..networks.inpainting import InpaintConfig

        if "config" not in card:
            raise ValueError(f"weights of '{self.weights_name}': the model card has no 'config' "
                             "(slice size, scale, width); retrain with `uad train`")
        return InpaintConfig.from_dict(card["config"])

    def compute_map(self, case, params, progress):
        _, card = self.load_weights()
        cfg = self._config(card)
        device = torch.device(resolve_device(params["device"]))
        flair = np.asarray(case.arrays["FLAIR"], np.float32)
        brain = np.asarray(case.brain, bool)
        box = params["box"]
        if box > cfg.slice_size:
            raise InputError(f"parameter 'box': the slice ({cfg.slice_size}x{cfg.slice_size}) is smaller than "
                             f"the box ({box})")
        stride = params["stride"] or (4 if device.type == "cuda" else CPU_STRIDE)
        batch = params["batch_size"] or (512 if device.type == "cuda" else 64)
        used = {"stride_used": stride, "batch_size_used": batch}
        net, _ = self.cached_model(device, lambda st, cd, dev: self._network(st, self._config(cd), dev))
        mapper = SliceMapper(flair.shape, cfg, params["slice_axis"])
        imgs, brains, keep = mapper.to_slices(flair, brain, device)
        progress(0.02, f"{imgs.shape[0]} slices with brain, {cfg.slice_size}x{cfg.slice_size}, box {box}, "
                       f"stride {stride}")
        maps = torch.zeros_like(imgs)
        for i in range(imgs.shape[0]):
            maps[i] = self._slice_map(net, cfg, params, imgs[i], brains[i], box, stride, batch, used)
            progress(0.02 + 0.95 * (i + 1) / imgs.shape[0], f"slice {i + 1}/{imgs.shape[0]}")
        work = mapper.to_volume(maps, keep.to(maps.device))
        return MapOutput(np.where(brain, work, 0).astype(np.float32), info=used)

    def default_threshold(self, work_map, case, params):
        _, card = self.load_weights()
        q = card.get("healthy_window_score_q99")
        box_ok = params["box"] == card.get("config", {}).get("box")
        if q is not None and box_ok and params.get("metric", "l1") == "l1":
            return float(q), ("default: 99th percentile of window scores on held-out healthy training slices "
                              "(model card)")
        inside = work_map[case.brain]
        return float(np.quantile(inside, 0.99)), ("default: the case's in-brain 99th percentile (the request's "
                                                  "box/metric differ from the calibration in the model card)")


class InpaintingDetector(_SlidingWindowDetector):
    name = "inpainting"
    weights_name = "inpainting"
    description = ("Sliding-window inpainting (exact): a box slides over every slice with brain, an adversarially "
                   "trained pix2pix generator G fills it, and the error inside the box is averaged over windows "
                   "into the heat map. Batched uad_kernels windows; G over every window.")
    params = COMMON + (
        Param("metric", "l1", str, "box error norm", choices=("l1", "l2")),
        Param("score_in_brain", False, bool, "box error over brain pixels only"),
        Param("reduce", "mean", str, "overlapping windows: mean (published) or max", choices=("mean", "max")),
        Param("engine", "auto", str,
              "how G runs over the windows, both exact: 'local' recomputes only what each box changes (G's box "
              "output from the clean slice's features; about a tenth of the arithmetic), 'batched' runs G on every "
              "whole masked copy (uad_kernels); auto = local on a CPU, batched on CUDA",
              choices=ENGINES),
    )

    def _network(self, state, cfg, device):
        from ..networks.inpainting import build_generator

        g = build_generator(cfg)
        g.load_state_dict(state)
        return g.to(device).eval()

    def _slice_map(self, net, cfg, params, img, brain, box, stride, batch, used):
        heat, used["engine_used"] = exact_slice_map(
            net, img, brain, box=box, stride=stride, fill=cfg.fill, batch_size=batch, metric=params["metric"],
            score_in_brain=params["score_in_brain"], reduce=params["reduce"], engine=params["engine"])
        return heat


class InpaintingFastDetector(_SlidingWindowDetector):
    name = "inpainting_fast"
    weights_name = "inpainting_fast"
    description = ("Sliding-window inpainting, fast mode: the error regressor R predicts G's box error from each "
                   "masked slice (no reconstruction); same windows and heat-map assembly as 'inpainting'.")
    params = COMMON

    def _network(self, state, cfg, device):
        from ..networks.inpainting import ErrorRegressor

        r = ErrorRegressor()
        r.load_state_dict(state)
        return r.to(device).eval()

    def _slice_map(self, net, cfg, params, img, brain, box, stride, batch, used):
        return fast_slice_map(net, img, brain, box=box, stride=stride, fill=cfg.fill, err_scale=cfg.err_scale,
                              batch_size=batch)
