"""Thresholding, size filtering and the findings table, on a map in a given voxel grid.

Sizes are in mm^3 so the same filter means the same thing on a 1 mm template grid (where the
published 'components of 20 voxels or fewer' is 20 mm^3) and on an anisotropic scanner grid.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage as ndi

_STRUCTURES = {6: 1, 18: 2, 26: 3}


def structure(connectivity: int = 26) -> np.ndarray:
    if connectivity not in _STRUCTURES:
        raise ValueError(f"connectivity: expected 6, 18 or 26, received {connectivity}")
    return ndi.generate_binary_structure(3, _STRUCTURES[connectivity])


def threshold_mask(score_map: np.ndarray, threshold: float, min_component_mm3: float = 20.0,
                   voxel_volume_mm3: float = 1.0, connectivity: int = 26,
                   brain: np.ndarray | None = None) -> np.ndarray:
    """score_map > threshold (inside `brain` if given), without components of at most
    `min_component_mm3` mm^3. Runs through uad_kernels' post-processing (scipy here, cupyx for
    CuPy arrays on a GPU)."""
    from uad_kernels import remove_small_components

    structure(connectivity)  # validates
    mask = np.asarray(score_map) > threshold
    if brain is not None:
        mask &= np.asarray(brain, bool)
    if min_component_mm3 > 0 and mask.any():
        # keep size * voxel volume > min  <=>  size >= floor(min / voxel volume) + 1
        min_voxels = int(np.floor(min_component_mm3 / voxel_volume_mm3 + 1e-9)) + 1
        mask = remove_small_components(mask, min_voxels, connectivity=_STRUCTURES[connectivity])
    return mask


def component_table(mask: np.ndarray, score_map: np.ndarray, voxel_volume_mm3: float,
                    index_to_ras: Callable[[np.ndarray], np.ndarray], connectivity: int = 26) -> list[dict]:
    """One row per connected component of `mask`, largest maximum score first.

    index_to_ras maps (N, 3) voxel indices (array axis order) to RAS millimetres. Statistics are
    gathered over the flagged voxels only (scipy's per-label measurements scan the whole volume
    once per statistic, seconds on a 7 M-voxel map with many components)."""
    labels, n = ndi.label(mask, structure=structure(connectivity))
    if n == 0:
        return []
    coords = np.nonzero(labels)
    lab = labels[coords]
    values = np.asarray(score_map)[coords].astype(np.float64)
    counts = np.bincount(lab, minlength=n + 1)[1:]
    sums = np.bincount(lab, weights=values, minlength=n + 1)[1:]
    maxima = np.full(n + 1, -np.inf)
    np.maximum.at(maxima, lab, values)
    centres = np.stack([np.bincount(lab, weights=c, minlength=n + 1)[1:] for c in coords], axis=1) / counts[:, None]
    lo = np.stack([_reduce_at(np.minimum, c, lab, n, np.iinfo(np.int64).max) for c in coords], axis=1)
    hi = np.stack([_reduce_at(np.maximum, c, lab, n, -1) for c in coords], axis=1)
    centres_ras = index_to_ras(centres)
    rows = []
    for i in range(n):
        rows.append({
            "voxels": int(counts[i]),
            "volume_ml": float(counts[i] * voxel_volume_mm3 / 1000.0),
            "max_score": float(maxima[i + 1]),
            "mean_score": float(sums[i] / counts[i]),
            "centroid_ras": [round(float(c), 3) for c in centres_ras[i]],
            "centroid_index": [round(float(c), 3) for c in centres[i]],
            "bbox_index": [lo[i].tolist(), hi[i].tolist()],
        })
    rows.sort(key=lambda r: (-r["max_score"], -r["voxels"]))
    return [{"id": k, **r} for k, r in enumerate(rows, start=1)]


def _reduce_at(ufunc, values: np.ndarray, labels: np.ndarray, n: int, init) -> np.ndarray:
    out = np.full(n + 1, init, np.int64)
    ufunc.at(out, labels, values.astype(np.int64))
    return out[1:]


def slice_scores(score_map: np.ndarray, mask: np.ndarray, brain: np.ndarray, axis: int) -> np.ndarray:
    """Per-slice anomaly score of Oliinyk et al.: the thresholded map summed over the slice,
    divided by the number of non-anomalous (brain, not flagged) pixels of that slice."""
    thresholded = np.where(mask, score_map, 0.0).astype(np.float64)
    other = tuple(a for a in range(3) if a != axis)
    total = thresholded.sum(axis=other)
    normal = np.logical_and(brain, ~mask).sum(axis=other)
    return np.where(normal > 0, total / np.maximum(normal, 1), 0.0)


def image_score(score_map: np.ndarray, mask: np.ndarray, brain: np.ndarray) -> float:
    """The slice score's formula over the whole volume: one number to rank cases by."""
    normal = int(np.logical_and(brain, ~mask).sum())
    return float(np.where(mask, score_map, 0.0).sum() / normal) if normal else 0.0
