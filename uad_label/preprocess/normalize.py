"""Intensity normalisation, one operation per function; detectors compose what they need.

All functions take a work array and a boolean brain mask of the same shape, compute their
statistics inside the mask only, and return a new array for all voxels (outside-brain voxels
are transformed too; use :func:`zero_outside` to blank them).
"""
from __future__ import annotations

import numpy as np

__all__ = ["zscore", "percentile_scale", "equalize_hist", "zero_outside"]


def _check(array: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(array)
    m = np.asarray(mask, dtype=bool)
    if a.shape != m.shape:
        raise ValueError(f"array shape {a.shape} != mask shape {m.shape}")
    if not m.any():
        raise ValueError("the brain mask is empty: cannot compute intensity statistics")
    return a, m


def zscore(array: np.ndarray, mask: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """(array - mean) / std with mean and std over the mask (float32)."""
    a, m = _check(array, mask)
    vals = a[m].astype(np.float64)
    mu, sd = vals.mean(), vals.std()
    return ((a - mu) / max(sd, eps)).astype(np.float32)


def percentile_scale(array: np.ndarray, mask: np.ndarray, low: float = 1.0, high: float = 99.0,
                     clip: bool = True) -> np.ndarray:
    """Linear map of the mask's ``low`` / ``high`` percentiles to 0 / 1 (float32), clipped to
    [0, 1] when ``clip``."""
    a, m = _check(array, mask)
    lo, hi = np.percentile(a[m], [low, high])
    out = (a.astype(np.float64) - lo) / max(hi - lo, 1e-8)
    if clip:
        out = np.clip(out, 0.0, 1.0)
    return out.astype(np.float32)


def equalize_hist(array: np.ndarray, mask: np.ndarray, nbins: int = 256) -> np.ndarray:
    """Histogram equalisation with scikit-image semantics: exactly
    ``skimage.exposure.equalize_hist(array, nbins=nbins, mask=mask)`` — the histogram is
    computed inside the mask, values are returned for every voxel (float64, as skimage)."""
    from skimage.exposure import equalize_hist as _eq

    a, m = _check(array, mask)
    return _eq(a, nbins=nbins, mask=m)


def zero_outside(array: np.ndarray, mask: np.ndarray, value: float = 0.0) -> np.ndarray:
    """Copy of ``array`` with voxels outside the mask set to ``value``."""
    a = np.array(array, copy=True)
    m = np.asarray(mask, dtype=bool)
    if a.shape != m.shape:
        raise ValueError(f"array shape {a.shape} != mask shape {m.shape}")
    a[~m] = value
    return a
