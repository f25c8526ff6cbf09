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

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..networks.inpainting_maps import ENGINES, exact_slice_map, fast_slice_map
from .base import Detector
from .params import Param

MIN_BRAIN_FRACTION_TRAIN = 0.02  # training drops slices whose brain covers less than this of the network slice
CPU_STRIDE = 8  # default stride on a CPU (the published 4 on CUDA); see docs/inpainting.md


# ----------------------------------------------------------------------------- slices <-> volume
class SliceMapper:
    """Cuts a (X, Y, Z) work volume into network slices along `axis` and puts slice maps back."""

    def __init__(self, shape, cfg, axis: int = 2):
        if len(shape) != 3:
            raise ValueError(f"volume: expected 3 dimensions (x, y, z), received shape {tuple(shape)}")
        self.shape = tuple(int(s) for s in shape)
        self.axis = axis
        self.cfg = cfg
        moved = [self.shape[a] for a in range(3) if a != axis] + [self.shape[axis]]
        self.moved = tuple(moved)
        s = cfg.scale
        self.down = tuple(max(1, math.ceil(n / s)) for n in moved)
        S = cfg.slice_size
        fit = min(1.0, S / max(self.down[0], self.down[1]))
        self.inplane = (max(1, int(round(self.down[0] * fit))), max(1, int(round(self.down[1] * fit))))
        self.pad0 = ((S - self.inplane[0]) // 2, (S - self.inplane[1]) // 2)

    def _to_moved(self, vol: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol, self.axis, -1), np.float32))

    def to_slices(self, vol: np.ndarray, brain: np.ndarray, device="cpu"):
        """(images (N, S, S) float32 normalised, brains (N, S, S) bool, slice indices (N,) of the
        downsampled stack that hold brain)."""
        cfg = self.cfg
        v = self._to_moved(np.where(brain, vol, 0)).to(device)
        b = self._to_moved(brain.astype(np.float32)).to(device)
        if self.down != self.moved:
            v = F.interpolate(v[None, None], size=self.down, mode="area")[0, 0]
            bb = F.interpolate(b[None, None], size=self.down, mode="area")[0, 0]
            v = v / bb.clamp_min(1e-6) * (bb > 0)  # mean over the brain part of each block
            b = bb >= 0.5
        else:
            b = b > 0
        v = v.permute(2, 0, 1)  # (Z', X', Y')
        b = b.permute(2, 0, 1)
        keep = torch.nonzero(b.flatten(1).any(1)).flatten()
        v, b = v[keep], b[keep]
        if self.inplane != tuple(self.down[:2]):
            v = F.interpolate(v[:, None], size=self.inplane, mode="bilinear", align_corners=False)[:, 0]
            b = F.interpolate(b[:, None].float(), size=self.inplane, mode="nearest")[:, 0] > 0
        v = normalise_slices(v, b, cfg.percentile, cfg.clip)
        S = cfg.slice_size
        img = torch.zeros((v.shape[0], S, S), dtype=torch.float32, device=device)
        msk = torch.zeros((v.shape[0], S, S), dtype=torch.bool, device=device)
        x0, y0 = self.pad0
        img[:, x0:x0 + self.inplane[0], y0:y0 + self.inplane[1]] = v
        msk[:, x0:x0 + self.inplane[0], y0:y0 + self.inplane[1]] = b
        return img, msk, keep

    def to_volume(self, maps: torch.Tensor, keep: torch.Tensor) -> np.ndarray:
        """(N, S, S) slice maps of the kept slices -> (X, Y, Z) float32 map in the work grid."""
        x0, y0 = self.pad0
        m = maps[:, x0:x0 + self.inplane[0], y0:y0 + self.inplane[1]].float()
        if self.inplane != tuple(self.down[:2]):
            m = F.interpolate(m[:, None], size=self.down[:2], mode="bilinear", align_corners=False)[:, 0]
        stack = torch.zeros((self.down[2], *self.down[:2]), dtype=torch.float32, device=m.device)
        stack[keep] = m
        stack = stack.permute(1, 2, 0)
        if self.down != self.moved:
            stack = F.interpolate(stack[None, None], size=self.moved, mode="trilinear", align_corners=False)[0, 0]
        return np.moveaxis(stack.cpu().numpy(), -1, self.axis).astype(np.float32)


def normalise_slices(v: torch.Tensor, b: torch.Tensor, percentile: float, clip: float) -> torch.Tensor:
    """Per slice: the brain's `percentile` -> 1, clipped to [0, clip], 0 outside the brain."""
    out = torch.zeros_like(v)
    for i in range(v.shape[0]):
        vals = v[i][b[i]]
        if vals.numel() == 0:
            continue
        p = torch.quantile(vals.float(), percentile / 100.0) if vals.numel() > 1 else vals.max()
        p = p.clamp_min(1e-6)
        out[i] = torch.where(b[i], (v[i] / p).clamp(0, clip), torch.zeros_like(v[i]))
    return out


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
    network_label = ""

    def _device(self, params) -> torch.device:
        want = params["device"]
        if want == "cuda" and not torch.cuda.is_available():
            raise ValueError("parameter 'device': expected cpu or auto on a machine without CUDA, received 'cuda'")
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(want)

    def _config(self, card):
        from ..networks.inpainting import InpaintConfig

        if "config" not in card:
            raise ValueError(f"weights of '{self.weights_name}': the model card has no 'config' "
                             "(slice size, scale, width); retrain with `uad train`")
        return InpaintConfig.from_dict(card["config"])

    def _window_fn(self, net, cfg, params, device):
        """(copies -> scores or reconstructions) callable; subclasses."""
        raise NotImplementedError

    def compute_map(self, case, params, progress):
        state, card = self.load_weights()
        cfg = self._config(card)
        device = self._device(params)
        flair = np.asarray(case.arrays["FLAIR"], np.float32)
        brain = np.asarray(case.brain, bool)
        if flair.ndim != 3:
            raise ValueError(f"FLAIR: expected a 3D volume, received {flair.ndim} dimensions")
        if not np.isfinite(flair).all():
            raise ValueError("FLAIR: expected finite intensities, received NaN or infinity")
        if not brain.any():
            raise ValueError("brain mask: expected brain voxels, received an empty mask (is the FLAIR all zero?)")
        box = params["box"]
        if box > cfg.slice_size:
            raise ValueError(f"parameter 'box': the slice ({cfg.slice_size}x{cfg.slice_size}) is smaller than "
                             f"the box ({box})")
        stride = params["stride"] or (4 if device.type == "cuda" else CPU_STRIDE)
        batch = params["batch_size"] or (512 if device.type == "cuda" else 64)
        params["stride_used"], params["batch_size_used"] = stride, batch
        net = self._network(state, cfg, device)
        mapper = SliceMapper(flair.shape, cfg, params["slice_axis"])
        imgs, brains, keep = mapper.to_slices(flair, brain, device)
        progress(0.02, f"{imgs.shape[0]} slices with brain, {cfg.slice_size}x{cfg.slice_size}, box {box}, "
                       f"stride {stride}")
        maps = torch.zeros_like(imgs)
        for i in range(imgs.shape[0]):
            maps[i] = self._slice_map(net, cfg, params, imgs[i], brains[i], box, stride, batch)
            progress(0.02 + 0.95 * (i + 1) / imgs.shape[0], f"slice {i + 1}/{imgs.shape[0]}")
        work = mapper.to_volume(maps, keep.to(maps.device))
        return np.where(brain, work, 0).astype(np.float32)

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
              "output from the clean slice's features; about a tenth of the arithmetic), 'batched' runs G on every whole "
              "masked copy (uad_kernels); auto = local on a CPU, batched on CUDA",
              choices=ENGINES),
    )

    def _network(self, state, cfg, device):
        from ..networks.inpainting import build_generator

        g = build_generator(cfg)
        g.load_state_dict(state)
        return g.to(device).eval()

    def _slice_map(self, net, cfg, params, img, brain, box, stride, batch):
        heat, params["engine_used"] = exact_slice_map(
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

    def _slice_map(self, net, cfg, params, img, brain, box, stride, batch):
        return fast_slice_map(net, img, brain, box=box, stride=stride, fill=cfg.fill, err_scale=cfg.err_scale,
                              batch_size=batch)
