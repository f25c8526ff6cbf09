"""Connected components, thresholding, findings and slice scores on numpy arrays (no scipy).

Same semantics as the server (uad_label.postprocess.components): a voxel is flagged when its
score is strictly above the threshold (inside the brain when a brain mask is given); components of
AT MOST `min_component_mm3` mm^3 are removed; 6-, 18- or 26-connectivity; findings are sorted by
maximum score (then size), ids from 1. Arrays are indexed (i, j, k).

Labelling is a vectorised union-find over the flagged voxels of the mask's bounding box: edges to
the forward half of the neighbourhood, hooking of roots to the smaller root, pointer jumping.
It takes well under a second for the few thousand voxels of typical findings, seconds for a mask of
millions of voxels; where scipy is importable (Slicer ships it in recent versions) its labelling
is used instead (`USE_SCIPY`), with the same components.
"""
from __future__ import annotations

from itertools import product
from typing import Callable, Optional

import numpy as np

USE_SCIPY = True  # use scipy.ndimage.label when importable (an accelerator; numpy is the reference)
_NDI: list = []


def _scipy_ndimage():
    """scipy.ndimage or None, imported on first use (guarded: not every Python has scipy)."""
    if not _NDI:
        try:
            from scipy import ndimage
        except Exception:
            ndimage = None
        _NDI.append(ndimage)
    return _NDI[0]

def neighbour_offsets(connectivity: int = 26) -> list[tuple[int, int, int]]:
    """The forward half of the neighbourhood (each undirected edge once)."""
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity: expected 6, 18 or 26, received {connectivity}")
    out = []
    for off in product((-1, 0, 1), repeat=3):
        n = sum(abs(o) for o in off)
        if n == 0 or off <= (0, 0, 0):  # lexicographic: keep one of each +/- pair
            continue
        if (connectivity == 6 and n > 1) or (connectivity == 18 and n > 2):
            continue
        out.append(off)
    return out


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    sl = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        hit = np.flatnonzero(mask.any(axis=other))
        sl.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(sl)


def label(mask: np.ndarray, connectivity: int = 26, use_scipy: Optional[bool] = None) -> tuple[np.ndarray, int]:
    """(labels int32 of the mask's shape, number of components), labels numbered 1..n."""
    mask = np.asarray(mask, bool)
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity: expected 6, 18 or 26, received {connectivity}")
    ndi = _scipy_ndimage() if (USE_SCIPY if use_scipy is None else use_scipy) and mask.ndim == 3 else None
    if ndi is not None:
        rank = {6: 1, 18: 2, 26: 3}[connectivity]
        labels, n = ndi.label(mask, structure=ndi.generate_binary_structure(3, rank))
        return labels.astype(np.int32, copy=False), int(n)
    return label_numpy(mask, connectivity)


def label_numpy(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Pure numpy labelling (labels 1..n in the C order of each component's first voxel)."""
    mask = np.asarray(mask, bool)
    labels = np.zeros(mask.shape, np.int32)
    if mask.ndim != 3:
        raise ValueError(f"mask: expected a 3D array, received {mask.ndim}D")
    if not mask.any():
        return labels, 0
    box = _bbox(mask)
    m = np.pad(mask[box], 1)  # a border of zeros: flat neighbour offsets never wrap into a voxel
    flat = m.ravel()
    pos = np.flatnonzero(flat)
    n = int(pos.size)
    ids = np.full(flat.size, -1, np.int32 if n < 2**31 - 1 else np.int64)
    ids[pos] = np.arange(n, dtype=ids.dtype)
    strides = np.array([m.shape[1] * m.shape[2], m.shape[2], 1])
    us, vs = [], []
    for off in neighbour_offsets(connectivity):
        nb = ids[pos + int(np.dot(off, strides))]
        hit = nb >= 0
        if hit.any():
            us.append(np.flatnonzero(hit).astype(ids.dtype))
            vs.append(nb[hit])
    parent = np.arange(n, dtype=ids.dtype)
    if us:
        u = np.concatenate(us)
        v = np.concatenate(vs)
        while True:
            pu, pv = parent[u], parent[v]
            differ = pu != pv
            if not differ.any():
                break
            u, v, pu, pv = u[differ], v[differ], pu[differ], pv[differ]  # settled edges drop out
            lo, hi = np.minimum(pu, pv), np.maximum(pu, pv)
            parent[hi] = lo  # hi is a root (parent is a star): hook it under a smaller root (any one)
            while True:  # pointer jumping until every voxel points at its root
                grand = parent[parent]
                if np.array_equal(grand, parent):
                    break
                parent = grand
    roots, compact = np.unique(parent, return_inverse=True)  # roots are the smallest C-order id
    sub = np.zeros(flat.size, np.int32)
    sub[pos] = compact.reshape(-1).astype(np.int32) + 1
    labels[box] = sub.reshape(m.shape)[1:-1, 1:-1, 1:-1]
    return labels, int(roots.size)


def threshold_mask(score_map: np.ndarray, threshold: float, min_component_mm3: float = 20.0,
                   voxel_volume_mm3: float = 1.0, connectivity: int = 26,
                   brain: Optional[np.ndarray] = None, use_scipy: Optional[bool] = None) -> np.ndarray:
    """score_map > threshold (inside `brain` if given), without components of at most
    `min_component_mm3` mm^3."""
    mask = np.asarray(score_map) > threshold
    if brain is not None:
        mask &= np.asarray(brain, bool)
    if min_component_mm3 > 0 and mask.any():
        labels, n = label(mask, connectivity, use_scipy)
        sizes = np.bincount(labels.ravel(), minlength=n + 1) * voxel_volume_mm3
        keep = sizes > min_component_mm3
        keep[0] = False
        mask = keep[labels]
    return mask


def component_table(mask: np.ndarray, score_map: np.ndarray, voxel_volume_mm3: float,
                    index_to_ras: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                    connectivity: int = 26, use_scipy: Optional[bool] = None) -> tuple[list[dict], np.ndarray]:
    """(rows, labels): one row per component of `mask`, largest maximum score first, and the
    label array whose values are the rows' ids. Row keys as the server's JSON: id, voxels,
    volume_ml, max_score, mean_score, centroid_index, centroid_ras, bbox_index, peak_index."""
    raw, n = label(mask, connectivity, use_scipy)
    if n == 0:
        return [], raw
    coords = np.nonzero(raw)
    lab = raw[coords]
    values = np.asarray(score_map)[coords].astype(np.float64)
    counts = np.bincount(lab, minlength=n + 1)[1:]
    sums = np.bincount(lab, weights=values, minlength=n + 1)[1:]
    maxima = np.full(n + 1, -np.inf)
    np.maximum.at(maxima, lab, values)
    centres = np.stack([np.bincount(lab, weights=c, minlength=n + 1)[1:] for c in coords], axis=1) / counts[:, None]
    lo = np.stack([_reduce(np.minimum, c, lab, n, np.iinfo(np.int64).max) for c in coords], axis=1)
    hi = np.stack([_reduce(np.maximum, c, lab, n, -1) for c in coords], axis=1)
    # the voxel holding each component's maximum: a stable identity across re-thresholds
    order = np.lexsort((-values, lab))
    first = order[np.searchsorted(lab[order], np.arange(1, n + 1))]
    peaks = np.stack([c[first] for c in coords], axis=1)
    ras = index_to_ras(centres) if index_to_ras is not None else np.full((n, 3), np.nan)
    rows = []
    for i in range(n):
        rows.append({
            "raw": i + 1,
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
    relabel = np.zeros(n + 1, np.int32)
    for k, r in enumerate(rows, start=1):
        relabel[r.pop("raw")] = k
    return [{"id": k, **r} for k, r in enumerate(rows, start=1)], relabel[raw]


def _reduce(ufunc, values: np.ndarray, labels: np.ndarray, n: int, init) -> np.ndarray:
    out = np.full(n + 1, init, np.int64)
    ufunc.at(out, labels, values.astype(np.int64))
    return out[1:]


def slice_scores(score_map: np.ndarray, mask: np.ndarray, brain: np.ndarray, axis: int) -> np.ndarray:
    """Per-slice anomaly score of Oliinyk et al.: the thresholded map summed over the slice,
    divided by the number of non-anomalous (brain, not flagged) voxels of that slice."""
    thresholded = np.where(mask, score_map, 0.0).astype(np.float64)
    other = tuple(a for a in range(3) if a != axis)
    total = thresholded.sum(axis=other)
    normal = np.logical_and(brain, ~np.asarray(mask, bool)).sum(axis=other)
    return np.where(normal > 0, total / np.maximum(normal, 1), 0.0)


def superior_axis(affine: np.ndarray) -> int:
    """The voxel axis closest to inferior-superior (the axis axial slices are taken along)."""
    m = np.asarray(affine)[:3, :3]
    return int(np.argmax(np.abs(m[2, :]) / np.maximum(np.sqrt((m ** 2).sum(axis=0)), 1e-12)))


def slice_centres(shape, axis: int) -> np.ndarray:
    """(n, 3) voxel indices of the centre of every slice along `axis`."""
    size = np.asarray(shape[:3], np.float64)
    centres = np.zeros((int(size[axis]), 3))
    centres[:] = (size - 1) / 2.0
    centres[:, axis] = np.arange(size[axis])
    return centres
