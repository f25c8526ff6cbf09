"""uad_kernels: GPU kernels for unsupervised anomaly detection (issue 3).

One public function per op. CUDA tensors go to the Triton (or CuPy) kernel, CPU tensors to a
vectorised torch reference with the same signature; ``backend="reference"`` (or the environment
variable UAD_KERNELS_BACKEND=reference) forces the reference, ``backend="triton"`` forces the
Triton kernel (on CPU tensors only under TRITON_INTERPRET=1, which is how the tests run it).

Importing this package needs neither a GPU nor Triton nor CuPy: submodules load on first use.

Ops (module -> public functions):
  patch_gather  gather_patches, extract_patches, grid_patches, grid_starts
  inpaint       inpaint_windows, inpaint_batch, inpaint_scores, accumulate_scores, finalize_heatmap,
                inpaint_heatmap
  recon_error   error_map, ErrorMap
  stitching     importance_map, sliding_window_starts, overlap_add, sliding_window_inference
  postprocess   connected_components, remove_small_components, median_filter, grey_erosion,
                binary_opening, otsu_threshold
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "grid_starts": "_common",
    "gather_patches": "patch_gather",
    "extract_patches": "patch_gather",
    "grid_patches": "patch_gather",
    "inpaint_windows": "inpaint",
    "inpaint_batch": "inpaint",
    "inpaint_scores": "inpaint",
    "finalize_heatmap": "inpaint",
    "accumulate_scores": "inpaint",
    "inpaint_heatmap": "inpaint",
    "error_map": "recon_error",
    "ErrorMap": "recon_error",
    "importance_map": "stitching",
    "sliding_window_starts": "stitching",
    "overlap_add": "stitching",
    "sliding_window_inference": "stitching",
    "connected_components": "postprocess",
    "remove_small_components": "postprocess",
    "median_filter": "postprocess",
    "grey_erosion": "postprocess",
    "binary_opening": "postprocess",
    "otsu_threshold": "postprocess",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'uad_kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
