"""Connected components and thresholding on numpy arrays (no scipy needed); the findings table, the
size rule and the slice scores come from .findings, a copy of the server's uad_label/postprocess/findings.py
(one source: the module's CMakeLists copies it at build time, a test keeps the two identical).

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

from .findings import component_rows, keep_large, min_voxels, slice_centres, slice_scores, superior_axis

__all__ = ["label", "label_numpy", "neighbour_offsets", "threshold_mask", "component_table", "slice_scores",
           "slice_centres", "superior_axis"]

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
        labels, n = keep_large(*label(mask, connectivity, use_scipy), min_voxels(min_component_mm3, voxel_volume_mm3))
        mask = labels > 0
    return mask


def component_table(mask: np.ndarray, score_map: np.ndarray, voxel_volume_mm3: float,
                    index_to_ras: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                    connectivity: int = 26, use_scipy: Optional[bool] = None) -> tuple[list[dict], np.ndarray]:
    """(rows, labels): one row per component of `mask`, largest maximum score first, and the
    label array whose values are the rows' ids (rows as the server's JSON; see findings.component_rows)."""
    return component_rows(*label(mask, connectivity, use_scipy), score_map, voxel_volume_mm3, index_to_ras)
