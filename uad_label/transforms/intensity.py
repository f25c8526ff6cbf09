"""Intensity transforms inside a brain mask, one operation per function (statistics inside the
brain only; the background is set to 0)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from skimage.exposure import cumulative_distribution

from ..errors import InputError

if TYPE_CHECKING:
    import torch
# torch and scipy.stats are imported by the functions that need them: importing them here cost 2.2 s of CPU
# in every `uad evaluate flair_threshold` (benchmarks/evaluation/README.md), which uses neither


def _check_brain(brain: np.ndarray, what: str = "scan") -> None:
    if not brain.any():
        raise InputError(f"brain mask: expected brain voxels, received an empty mask (is the {what} all zero?)")


def equalise_in_brain(volume: np.ndarray, brain: np.ndarray, nbins: int = 256) -> np.ndarray:
    """scikit-image's ``equalize_hist(volume, nbins, mask=brain)`` evaluated at brain voxels only, 0 outside
    (float32). skimage interpolates every voxel and the background would be zeroed again: same values at the
    brain, a fraction of the time."""
    _check_brain(brain)
    cdf, centres = cumulative_distribution(volume[brain], nbins)
    out = np.zeros(volume.shape, np.float32)
    out[brain] = np.interp(volume[brain], centres, cdf)
    return out


def brain_quantile(values: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Each brain voxel's mid-rank quantile among the brain's voxels ((rank - 0.5) / n, ties share their
    mean rank: scipy.stats.rankdata), 0 outside the brain (float32). The exact-rank twin of
    equalise_in_brain (which bins, as the published baseline does): the fusion's common scale."""
    from scipy.stats import rankdata

    out = np.zeros(brain.shape, np.float32)
    inside = np.asarray(values)[brain]
    if inside.size:
        out[brain] = ((rankdata(inside, method="average") - 0.5) / inside.size).astype(np.float32)
    return out


def percentile_scale(array: np.ndarray, mask: np.ndarray, low: float = 1.0, high: float = 99.0,
                     clip: bool = True) -> np.ndarray:
    """Linear map of the mask's ``low`` / ``high`` percentiles to 0 / 1 (float32), clipped to [0, 1] when
    ``clip``; every voxel is transformed."""
    a, m = np.asarray(array), np.asarray(mask, dtype=bool)
    if a.shape != m.shape:
        raise ValueError(f"array shape {a.shape} != mask shape {m.shape}")
    _check_brain(m)
    lo, hi = np.percentile(a[m], [low, high])
    out = (a.astype(np.float64) - lo) / max(hi - lo, 1e-8)
    if clip:
        out = np.clip(out, 0.0, 1.0)
    return out.astype(np.float32)


def median_normalise(volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Intensities divided by twice the brain median (median -> 0.5), clipped to [0, 2], zero outside
    the brain. The median, unlike a high percentile, does not move with the lesion load."""
    if volume.ndim != 3:
        raise ValueError(f"volume: expected a 3D array, received {volume.ndim}D")
    if not brain.any():
        raise InputError("brain mask: expected brain voxels, received an empty mask (is the scan all zero?)")
    if not np.isfinite(volume[brain]).all():
        raise InputError("volume: expected finite intensities inside the brain, received NaN or infinity")
    med = float(np.median(volume[brain]))
    if med <= 0:
        raise InputError(f"volume: expected positive brain intensities, received a brain median of {med:g}")
    out = np.clip(volume.astype(np.float32) * (0.5 / med), 0.0, 2.0)
    out[~brain] = 0.0
    return out


def scale_modalities(case, modalities) -> np.ndarray:
    """(C, X, Y, Z) float32: each modality mapped 0.5 -> 99.5 brain percentile to 0 -> 1, 0 outside the brain."""
    missing = [m for m in modalities if m not in case.arrays]
    if missing:
        raise InputError(f"images: patchddm needs modalities {list(modalities)}, missing {missing}")
    if not case.brain.any():
        raise InputError("brain mask: expected brain voxels, received an empty mask")
    out = np.stack([percentile_scale(case.arrays[m], case.brain, 0.5, 99.5, clip=False) for m in modalities])
    out = np.clip(out, -0.5, 2.0)
    out[:, ~case.brain] = 0.0
    return out.astype(np.float32)


def normalise_slices(v: torch.Tensor, b: torch.Tensor, percentile: float, clip: float) -> torch.Tensor:
    """Per slice: the brain's `percentile` -> 1, clipped to [0, clip], 0 outside the brain."""
    import torch

    out = torch.zeros_like(v)
    for i in range(v.shape[0]):
        vals = v[i][b[i]]
        if vals.numel() == 0:
            continue
        p = torch.quantile(vals.float(), percentile / 100.0) if vals.numel() > 1 else vals.max()
        p = p.clamp_min(1e-6)
        out[i] = torch.where(b[i], (v[i] / p).clamp(0, clip), torch.zeros_like(v[i]))
    return out


