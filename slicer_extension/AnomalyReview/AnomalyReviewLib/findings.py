"""Findings of a labelled anomaly mask, on numpy arrays only: the size rule, the findings table and the
slice and image scores. The one source for the server (uad_label.postprocess.components) and the Slicer
module, which must import without uad_label or scipy: slicer_extension/.../AnomalyReviewLib/findings.py
is a byte-for-byte copy made by the module's CMakeLists at build time (a test keeps them identical).

Arrays are indexed in the caller's axis order; `index_to_ras` maps (N, 3) indices of that order to RAS mm.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np


def min_voxels(min_component_mm3: float, voxel_volume_mm3: float) -> int:
    """The size rule: a component is kept when its volume exceeds `min_component_mm3`, i.e.
    size * voxel volume > min  <=>  size >= floor(min / voxel volume) + 1 voxels (0: keep all)."""
    if min_component_mm3 <= 0:
        return 0
    return int(np.floor(min_component_mm3 / voxel_volume_mm3 + 1e-9)) + 1


def keep_large(labels: np.ndarray, n: int, min_size: int) -> tuple[np.ndarray, int]:
    """(labels, n) without the components of fewer than `min_size` voxels, renumbered 1..n in label order."""
    if min_size <= 0 or n == 0:
        return labels, n
    keep = np.bincount(labels.ravel(), minlength=n + 1) >= min_size
    keep[0] = False
    new_ids = (np.cumsum(keep) * keep).astype(np.int32)
    return new_ids[labels], int(keep.sum())


def component_rows(labels: np.ndarray, n: int, score_map: np.ndarray, voxel_volume_mm3: float,
                   index_to_ras: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> tuple[list[dict], np.ndarray]:
    """(rows, id image) of components labelled 1..n. One row per component, largest maximum score first
    (then size), ids from 1: id, voxels, volume_ml, max_score, mean_score, centroid_ras, centroid_index,
    bbox_index, peak_index (the voxel of the maximum: a stable identity across re-thresholds). The id image
    is `labels` renumbered so that each voxel holds its row's id. Statistics are gathered over the flagged
    voxels only (per-label scans of the whole volume take seconds on a 7 M-voxel map)."""
    labels = np.asarray(labels)
    if n == 0:
        return [], np.zeros(labels.shape, np.int32)
    coords = np.nonzero(labels)
    lab = labels[coords]
    values = np.asarray(score_map)[coords].astype(np.float64)
    counts = np.bincount(lab, minlength=n + 1)[1:]
    sums = np.bincount(lab, weights=values, minlength=n + 1)[1:]
    maxima = np.full(n + 1, -np.inf)
    np.maximum.at(maxima, lab, values)
    centres = np.stack([np.bincount(lab, weights=c, minlength=n + 1)[1:] for c in coords], axis=1) / counts[:, None]
    lo = np.stack([_reduce(np.minimum, c, lab, n, np.iinfo(np.int64).max) for c in coords], axis=1)
    hi = np.stack([_reduce(np.maximum, c, lab, n, -1) for c in coords], axis=1)
    order = np.lexsort((-values, lab))
    first = order[np.searchsorted(lab[order], np.arange(1, n + 1))]
    peaks = np.stack([c[first] for c in coords], axis=1)
    ras = index_to_ras(centres) if index_to_ras is not None else np.full((n, 3), np.nan)
    rows = []
    for i in range(n):
        rows.append({
            "label": i + 1,
            "voxels": int(counts[i]),
            "volume_ml": float(counts[i] * voxel_volume_mm3 / 1000.0),
            "max_score": float(maxima[i + 1]),
            "mean_score": float(sums[i] / counts[i]),
            "centroid_ras": [round(float(c), 3) for c in ras[i]],
            "centroid_index": [round(float(c), 3) for c in centres[i]],
            "bbox_index": [lo[i].tolist(), hi[i].tolist()],
            "peak_index": [int(p) for p in peaks[i]],
        })
    rows.sort(key=lambda r: (-r["max_score"], -r["voxels"]))
    lut = np.zeros(n + 1, np.int32)
    for k, r in enumerate(rows, start=1):
        lut[r.pop("label")] = k
    return [{"id": k, **r} for k, r in enumerate(rows, start=1)], lut[labels]


def _reduce(ufunc, values: np.ndarray, labels: np.ndarray, n: int, init) -> np.ndarray:
    out = np.full(n + 1, init, np.int64)
    ufunc.at(out, labels, values.astype(np.int64))
    return out[1:]


def slice_scores(score_map: np.ndarray, mask: np.ndarray, brain: np.ndarray, axis: int) -> np.ndarray:
    """Per-slice anomaly score of Oliinyk et al.: the thresholded map summed over the slice,
    divided by the number of non-anomalous (brain, not flagged) voxels of that slice."""
    mask = np.asarray(mask, bool)
    thresholded = np.where(mask, score_map, 0.0).astype(np.float64)
    other = tuple(a for a in range(3) if a != axis)
    total = thresholded.sum(axis=other)
    normal = np.logical_and(brain, ~mask).sum(axis=other)
    return np.where(normal > 0, total / np.maximum(normal, 1), 0.0)


def image_score(score_map: np.ndarray, mask: np.ndarray, brain: np.ndarray) -> float:
    """The slice score's formula over the whole volume: one number to rank cases by."""
    mask = np.asarray(mask, bool)
    normal = int(np.logical_and(brain, ~mask).sum())
    return float(np.where(mask, score_map, 0.0).sum() / normal) if normal else 0.0


def superior_axis(affine: np.ndarray) -> int:
    """The voxel axis closest to inferior-superior (the axis axial slices are taken along) of a grid with
    this RAS (or LPS) affine."""
    m = np.asarray(affine)[:3, :3]
    return int(np.argmax(np.abs(m[2, :]) / np.maximum(np.sqrt((m ** 2).sum(axis=0)), 1e-12)))


def slice_centres(shape, axis: int) -> np.ndarray:
    """(n, 3) voxel indices of the centre of every slice along `axis`."""
    size = np.asarray(shape[:3], np.float64)
    centres = np.zeros((int(size[axis]), 3))
    centres[:] = (size - 1) / 2.0
    centres[:, axis] = np.arange(size[axis])
    return centres
