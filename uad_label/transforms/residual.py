"""The reconstruction detectors' residual and its post-filter (shared by inference and training, whose
threshold calibration must see exactly the maps inference makes)."""
from __future__ import annotations

import torch

from uad_kernels import error_map, grey_erosion, median_filter

from ..errors import InputError


def canvas_filter_size(size_mm: int, factor: int) -> int:
    """A filter of `size_mm` work (1 mm) voxels on a canvas downsampled by `factor`: the nearest odd size."""
    return max(1, int(round(size_mm / factor)) | 1)


def residual_map(image: torch.Tensor, recon: torch.Tensor, brain: torch.Tensor, mode: str = "abs",
                 healthy_mean: torch.Tensor | None = None, filter: str = "none", filter_size: int = 5):
    """Residual of `image` (..., X, Y, Z) vs its reconstruction through uad_kernels.error_map (in-brain,
    optionally minus the healthy mean residual, floored at 0), then a median filter or grey-scale
    erosion (uad_kernels) of size `filter_size` (in the voxels of `image`). Returns (map (X, Y, Z),
    per-axial-slice mean)."""

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
        raise InputError(f"filter: expected one of ['none', 'median', 'erosion'], received {filter!r}")
    m = torch.where(mask.bool(), m, torch.zeros((), device=m.device))
    return m, em.slice_scores


def threshold_key(params) -> str:
    """The key of a residual/filter/mean-subtraction combination in a model card's calibrated thresholds."""
    return (f"{params['residual']}/{params['filter']}{params['filter_size'] if params['filter'] != 'none' else ''}"
            f"/{'minus_mean' if params.get('subtract_healthy_mean') else 'raw'}")
