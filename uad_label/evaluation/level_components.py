"""Component-filtered confusion counts at many thresholds in one pass.

The published protocol (Meissen et al.) thresholds the anomaly map at 100 levels and removes
26-connected components of 20 voxels or fewer at each level before scoring. Labelling each level
with scipy costs about 35 s per volume; scikit-image's area_opening (a max-tree) is slower still
(about 70 s measured here). Written by hand because neither library does this in one pass: a
union-find over voxels added from the highest level to the lowest tracks, for every level, how many
voxels (and ground-truth voxels) sit in components that are still small.
"""
from __future__ import annotations

import numpy as np

try:  # numba compiles the union-find; without it a (slow) scipy fallback keeps results identical
    import numba
except ImportError:  # pragma: no cover - numba is a declared dependency
    numba = None


def _offsets(shape: tuple[int, ...], connectivity: int) -> np.ndarray:
    """Half of the neighbourhood offsets (13 of 26, 9 of 18, 3 of 6), one of each +/- pair."""
    offs = []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dz in (-1, 0, 1):
                n = abs(dx) + abs(dy) + abs(dz)
                if n == 0 or (connectivity == 6 and n > 1) or (connectivity == 18 and n > 2):
                    continue
                if (dx, dy, dz) > (0, 0, 0):  # one of each +/- pair; the caller adds the negation
                    offs.append((dx, dy, dz))
    return np.array(offs, dtype=np.int64)


def _counts_python_fallback(levels, gt, n_levels, max_small, connectivity):  # pragma: no cover
    from scipy import ndimage as ndi

    structure = ndi.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    small = np.zeros(n_levels, np.int64)
    small_gt = np.zeros(n_levels, np.int64)
    for k in range(n_levels):
        lab, n = ndi.label(levels > k, structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())
        is_small = sizes <= max_small
        is_small[0] = False
        small[k] = sizes[is_small].sum()
        small_gt[k] = np.bincount(lab[gt], minlength=n + 1)[is_small].sum()
    return small, small_gt


if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def _find(parent, i):
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression
            nxt = parent[i]
            parent[i] = root
            i = nxt
        return root

    @numba.njit(cache=True, nogil=True)  # nogil: PooledEvaluation.add_many sweeps volumes in threads
    def _sweep(parent, gt_flat, order, level_starts, flat_offsets, max_small):
        # parent: -1 everywhere (inactive), over the padded volume raveled; the zero border means
        # neighbours never leave it. Only small components (<= max_small voxels) are kept in the
        # union-find: a component that grows past max_small, or touches one that did, is marked BIG
        # voxel by voxel (each voxel once, through the component's member list) and never looked up
        # again; most neighbours of a new voxel are then one read of `parent` instead of a find.
        # int32 bookkeeping halves the random-access traffic on large volumes.
        big = -2
        n = parent.size
        size = np.zeros(n, parent.dtype)
        gsize = np.zeros(n, parent.dtype)
        nxt = np.full(n, -1, parent.dtype)  # member list of each small component, from its root
        tail = np.zeros(n, parent.dtype)
        n_levels = level_starts.size - 1
        small = np.zeros(n_levels, np.int64)
        small_gt = np.zeros(n_levels, np.int64)
        cur_small = 0
        cur_small_gt = 0
        n_off = flat_offsets.size
        # levels are visited from the highest down; level k holds voxels with value > k
        for k in range(n_levels - 1, -1, -1):
            for p in range(level_starts[k], level_starts[k + 1]):
                v = order[p]
                parent[v] = v
                size[v] = 1
                gsize[v] = 1 if gt_flat[v] else 0
                tail[v] = v
                ra = v
                touches_big = False
                for j in range(n_off):
                    w = v + flat_offsets[j]
                    pw = parent[w]
                    if pw == -1:
                        continue
                    if pw == big:
                        touches_big = True
                        continue
                    rb = _find(parent, w)
                    if ra == rb:
                        continue
                    cur_small -= size[rb]  # rb was a small component, counted
                    cur_small_gt -= gsize[rb]
                    if size[ra] < size[rb]:
                        ra, rb = rb, ra
                    parent[rb] = ra
                    size[ra] += size[rb]
                    gsize[ra] += gsize[rb]
                    nxt[tail[ra]] = rb
                    tail[ra] = tail[rb]
                if touches_big or size[ra] > max_small:
                    u = ra
                    while u != -1:
                        parent[u] = big
                        u = nxt[u]
                else:
                    cur_small += size[ra]
                    cur_small_gt += gsize[ra]
            small[k] = cur_small
            small_gt[k] = cur_small_gt
        return small, small_gt


def _box(mask: np.ndarray) -> tuple | None:
    """Bounding box of a 3D mask from its projections (np.nonzero would build index arrays of every voxel)."""
    spans = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        spans.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(spans)


def quantize(score_map: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Level of each voxel: the number of thresholds strictly below it (score > t_k  <=>  level > k).

    Thresholds are compared in the map's own float type, as `score_map > t` does for a float32
    map and a scalar threshold in NumPy 1.x (the reference implementation's semantics)."""
    dtype = score_map.dtype if np.issubdtype(score_map.dtype, np.floating) else np.float64
    th = np.asarray(thresholds, np.float64).astype(dtype)
    levels = np.zeros(score_map.shape, np.int32)
    above = score_map > th[0]  # the rest (background, usually) is level 0: no need to search it
    levels[above] = np.searchsorted(th, score_map[above], side="left")
    return levels


def filtered_counts(
    score_map: np.ndarray,
    gt: np.ndarray,
    thresholds: np.ndarray,
    max_removed_size: int = 20,
    connectivity: int = 26,
) -> dict[str, np.ndarray]:
    """For every threshold t_k: predicted = score_map > t_k with connected components of at most
    `max_removed_size` voxels removed. Returns arrays `pred` (predicted voxels) and `tp` (predicted
    voxels inside gt), each of length len(thresholds)."""
    if score_map.ndim != 3:
        raise ValueError(f"score_map: expected a 3D array, received {score_map.ndim}D shape {score_map.shape}")
    if gt.shape != score_map.shape:
        raise ValueError(f"gt: expected shape {score_map.shape} (the score map's), received {gt.shape}")
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity: expected 6, 18 or 26, received {connectivity}")
    thresholds = np.asarray(thresholds, np.float64)
    n_levels = thresholds.size
    gt = gt.astype(bool)
    levels = quantize(score_map, thresholds)
    # level-0 voxels are below every threshold: crop to the box of the others (the brain, usually)
    box = _box(levels > 0)
    if box is not None and levels[box].size < levels.size:
        levels, gt = levels[box], gt[box]  # outside voxels are never predicted: no effect on pred or tp
    if n_levels < 255:
        levels = levels.astype(np.uint8)  # NumPy sorts 8-bit keys by radix sort
    flat = levels.ravel()
    gt_flat = gt.ravel()
    raw_pred = np.bincount(flat, minlength=n_levels + 1)
    raw_tp = np.bincount(flat[gt_flat], minlength=n_levels + 1)
    # voxels with level > k are predicted at threshold k: suffix sums
    pred = np.cumsum(raw_pred[::-1])[::-1][1:]
    tp = np.cumsum(raw_tp[::-1])[::-1][1:]
    if max_removed_size <= 0:
        return {"pred": pred.astype(np.int64), "tp": tp.astype(np.int64)}
    if numba is None:  # pragma: no cover
        small, small_gt = _counts_python_fallback(levels, gt, n_levels, max_removed_size, connectivity)
    else:
        padded = np.pad(levels, 1)
        pflat = padded.ravel()
        pgt = np.pad(gt, 1).ravel()
        active = np.flatnonzero(pflat > 0)
        # sort active voxels by level; level_starts[k] .. level_starts[k+1] are voxels of level k+1
        order = active[np.argsort(pflat[active], kind="stable")]
        counts = np.bincount(pflat[order], minlength=n_levels + 1)[1:]
        level_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        _, sy, sz = padded.shape
        offs = _offsets(padded.shape, connectivity)
        flat_offsets = np.concatenate([offs @ np.array([sy * sz, sz, 1]), -(offs @ np.array([sy * sz, sz, 1]))])
        index_dtype = np.int32 if pflat.size < 2**31 - 1 else np.int64
        parent = np.full(pflat.size, -1, index_dtype)
        small, small_gt = _sweep(parent, pgt, order.astype(index_dtype), level_starts,
                                 flat_offsets.astype(index_dtype), int(max_removed_size))
    return {"pred": (pred - small).astype(np.int64), "tp": (tp - small_gt).astype(np.int64)}
