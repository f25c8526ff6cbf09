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
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .base import Detector
from .params import Param

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- normalisation
def normalise(volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Intensities divided by twice the brain median (median -> 0.5), clipped to [0, 2], zero outside
    the brain. The median, unlike a high percentile, does not move with the lesion load."""
    if volume.ndim != 3:
        raise ValueError(f"volume: expected a 3D array, received {volume.ndim}D")
    if not brain.any():
        raise ValueError("brain mask: expected brain voxels, received an empty mask (is the scan all zero?)")
    if not np.isfinite(volume[brain]).all():
        raise ValueError("volume: expected finite intensities inside the brain, received NaN or infinity")
    med = float(np.median(volume[brain]))
    if med <= 0:
        raise ValueError(f"volume: expected positive brain intensities, received a brain median of {med:g}")
    out = np.clip(volume.astype(np.float32) * (0.5 / med), 0.0, 2.0)
    out[~brain] = 0.0
    return out


# --------------------------------------------------------------------------- canvas
@dataclass
class Canvas:
    """A fixed-size network input: the region of `shape * factor` work voxels centred on the brain's
    bounding box, average-pooled by `factor`. `to_canvas` / `to_work` are each other's inverse up to
    the resampling (zero padding where the region leaves the volume)."""

    work_shape: tuple
    start: tuple  # region start in work voxels (may be negative)
    shape: tuple  # canvas shape (network resolution)
    factor: int

    @classmethod
    def around(cls, brain: np.ndarray, shape, factor: int) -> "Canvas":
        idx = np.nonzero(brain)
        lo = np.array([i.min() for i in idx])
        hi = np.array([i.max() + 1 for i in idx])
        centre = (lo + hi) // 2
        size = np.asarray(shape) * factor
        return cls(tuple(brain.shape), tuple(int(v) for v in centre - size // 2), tuple(int(s) for s in shape),
                   int(factor))

    def _slices(self):
        size = np.asarray(self.shape) * self.factor
        src, dst = [], []
        for s, n, w in zip(self.start, size, self.work_shape):
            a, b = max(s, 0), min(s + n, w)
            src.append(slice(a, b))
            dst.append(slice(a - s, b - s))
        return tuple(src), tuple(dst)

    def coverage(self, brain: np.ndarray) -> float:
        """Fraction of brain voxels inside the region."""
        src, _ = self._slices()
        return float(brain[src].sum() / max(brain.sum(), 1))

    def to_canvas(self, array: np.ndarray) -> torch.Tensor:
        """(X, Y, Z) work array -> (1, 1, *shape) float32 tensor."""
        size = tuple(int(s) for s in np.asarray(self.shape) * self.factor)
        region = np.zeros(size, np.float32)
        src, dst = self._slices()
        region[dst] = array[src]
        t = torch.from_numpy(region)[None, None]
        return F.avg_pool3d(t, self.factor) if self.factor > 1 else t

    def to_work(self, canvas: torch.Tensor) -> np.ndarray:
        """(…, *shape) tensor -> (X, Y, Z) float32 work array (trilinear upsampling by `factor`)."""
        t = canvas.reshape(1, 1, *self.shape).float()
        if self.factor > 1:
            t = F.interpolate(t, scale_factor=self.factor, mode="trilinear", align_corners=False)
        region = t[0, 0].cpu().numpy()
        out = np.zeros(self.work_shape, np.float32)
        src, dst = self._slices()
        out[src] = region[dst]
        return out


# --------------------------------------------------------------------------- residual + post-processing
def canvas_filter_size(size_mm: int, factor: int) -> int:
    """A filter of `size_mm` work (1 mm) voxels on a canvas downsampled by `factor`: the nearest odd size."""
    return max(1, int(round(size_mm / factor)) | 1)


def residual_map(image: torch.Tensor, recon: torch.Tensor, brain: torch.Tensor, mode: str = "abs",
                 healthy_mean: torch.Tensor | None = None, filter: str = "none", filter_size: int = 5):
    """Residual of `image` (..., X, Y, Z) vs its reconstruction through uad_kernels.error_map (in-brain,
    optionally minus the healthy mean residual, floored at 0), then a median filter or grey-scale
    erosion (uad_kernels) of size `filter_size` (in the voxels of `image`). Returns (map (X, Y, Z),
    per-axial-slice mean)."""
    from uad_kernels import error_map, grey_erosion, median_filter

    img = image.reshape(1, *image.shape[-3:]).float()
    rec = recon.reshape(1, *image.shape[-3:]).float().to(img.device)
    mask = brain.reshape(image.shape[-3:]).to(img.device)
    mean = None if healthy_mean is None else healthy_mean.reshape(image.shape[-3:]).float().to(img.device)
    em = error_map(img, rec, mode=mode, brain_mask=mask, mean=mean, clamp=(0.0, None) if mean is not None else None)
    m = em.map[0]
    if filter == "median":
        m = median_filter(m, size=filter_size)
    elif filter == "erosion":
        m = grey_erosion(m, size=filter_size)
    elif filter != "none":
        raise ValueError(f"filter: expected one of ['none', 'median', 'erosion'], received {filter!r}")
    m = torch.where(mask.bool(), m, torch.zeros((), device=m.device))
    return m, em.slice_scores


def pad_to_multiple(shape, multiple: int) -> tuple:
    return tuple(int(-(-s // multiple) * multiple) for s in shape)


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

    def _device(self, params) -> str:
        dev = params.get("device", "auto")
        if dev == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if dev == "cuda" and not torch.cuda.is_available():
            raise ValueError("parameter 'device': expected 'cpu' or 'auto' on a machine without CUDA, received 'cuda'")
        return dev

    def model(self, device: str = "cpu"):
        """(network in eval mode, model card); rebuilt when the weights file changes."""
        import importlib

        state, card = self.load_weights()
        key = (id(state), device)
        cached = getattr(self, "_model_cache", None)
        if cached is None or cached[0] != key:
            if card.get("detector") not in (None, self.name):
                raise ValueError(f"weights of '{self.weights_name}': model card is for detector "
                                 f"{card.get('detector')!r}, expected {self.name!r}")
            net_cfg = card.get("network")
            if not isinstance(net_cfg, dict):
                raise ValueError(f"weights of '{self.weights_name}': model card has no 'network' configuration")
            net = importlib.import_module(self.network_module).build(**net_cfg)
            weights = {k: v for k, v in state.items() if not k.startswith("extra.")}
            net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
            net.eval().to(device)
            self._model_cache = (key, net)
        return self._model_cache[1], card

    def check_modality(self, case, card):
        mod = card.get("modality", self.modalities[0])
        if mod not in case.arrays:
            raise ValueError(f"images: weights of '{self.name}' were trained on {mod}, received {sorted(case.arrays)}")
        return mod

    @torch.no_grad()
    def reconstruct_canvas(self, case, params, progress):
        """(input canvas, reconstruction, brain canvas, Canvas, card) on the network's device."""
        device = self._device(params)
        progress(0.0, "loading the network")
        net, card = self.model(device)
        mod = self.check_modality(case, card)
        x = normalise(case.arrays[mod], case.brain)
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
            raise ValueError(f"parameter 'subtract_healthy_mean': the weights of '{self.name}' hold no healthy mean")
        m, _ = residual_map(xt, rec, bt, params["residual"], mean, params["filter"],
                            canvas_filter_size(params["filter_size"], card["factor"]))
        work = cv.to_work(m)
        work[~case.brain] = 0.0
        return work

    def default_threshold(self, work_map, case, params):
        _, card = self.load_weights()
        key = _threshold_key(params)
        table = card.get("thresholds", {})
        if key in table:
            return float(table[key]), (f"default: the {card.get('threshold_percentile', 99.5)}th percentile of the "
                                       f"in-brain map on the healthy validation volumes ({key})")
        from uad_kernels import otsu_threshold

        return float(otsu_threshold(work_map, mask=case.brain)), (
            f"default: Otsu threshold of this map (no healthy calibration stored for {key})")


def _threshold_key(params) -> str:
    return (f"{params['residual']}/{params['filter']}{params['filter_size'] if params['filter'] != 'none' else ''}"
            f"/{'minus_mean' if params.get('subtract_healthy_mean') else 'raw'}")
