"""Thresholding, size filtering and the findings table, on a map in a given voxel grid (labelling through
uad_kernels; the numpy-only findings rules are in .findings, shared with the Slicer module).

Sizes are in mm^3 so the same filter means the same thing on a 1 mm template grid (where the
published 'components of 20 voxels or fewer' is 20 mm^3) and on an anisotropic scanner grid.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from uad_kernels import connected_components

from .findings import component_rows, image_score, min_voxels, slice_scores

__all__ = ["structure", "threshold_labels", "threshold_mask", "component_table", "component_rows", "image_score",
           "min_voxels", "slice_scores"]
_STRUCTURES = {6: 1, 18: 2, 26: 3}


def structure(connectivity: int = 26) -> np.ndarray:
    if connectivity not in _STRUCTURES:
        raise ValueError(f"connectivity: expected 6, 18 or 26, received {connectivity}")
    return ndi.generate_binary_structure(3, _STRUCTURES[connectivity])


def threshold_labels(score_map: np.ndarray, threshold: float, min_component_mm3: float = 20.0,
                     voxel_volume_mm3: float = 1.0, connectivity: int = 26,
                     brain: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """(labels int32, n): the components of score_map > threshold (inside `brain` if given) larger than
    `min_component_mm3` mm^3, numbered 1..n in scan order. Labelled once, through uad_kernels'
    post-processing (scipy here, cupyx for CuPy arrays on a GPU)."""
    structure(connectivity)  # validates
    mask = np.asarray(score_map) > threshold
    if brain is not None:
        mask &= np.asarray(brain, bool)
    return connected_components(mask, connectivity=_STRUCTURES[connectivity],
                                min_size=min_voxels(min_component_mm3, voxel_volume_mm3))


def threshold_mask(score_map: np.ndarray, threshold: float, min_component_mm3: float = 20.0,
                   voxel_volume_mm3: float = 1.0, connectivity: int = 26,
                   brain: np.ndarray | None = None) -> np.ndarray:
    """score_map > threshold (inside `brain` if given), without components of at most `min_component_mm3` mm^3."""
    return threshold_labels(score_map, threshold, min_component_mm3, voxel_volume_mm3, connectivity, brain)[0] > 0


def component_table(mask: np.ndarray, score_map: np.ndarray, voxel_volume_mm3: float,
                    index_to_ras: Callable[[np.ndarray], np.ndarray], connectivity: int = 26) -> list[dict]:
    """One row per connected component of `mask`, largest maximum score first.

    index_to_ras maps (N, 3) voxel indices (array axis order) to RAS millimetres. Statistics are
    gathered over the flagged voxels only (scipy's per-label measurements scan the whole volume
    once per statistic, seconds on a 7 M-voxel map with many components)."""
    labels, n = ndi.label(mask, structure=structure(connectivity))
    return component_rows(labels, n, score_map, voxel_volume_mm3, index_to_ras)[0]
