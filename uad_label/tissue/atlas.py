"""Spatial tissue priors (CSF, GM, WM) on a case's work grid, from the MNI152 2009 GM / WM probability
maps that nilearn ships (uad_label.template): CSF = template brain mask - GM - WM. Available when the
work grid is in template space (registered raw input, or input declared preprocessed that lies in
MNI space); the tissue_outlier detector falls back to flat priors otherwise."""
from __future__ import annotations

import functools

import numpy as np
import SimpleITK as sitk

CLASSES = ("CSF", "GM", "WM")  # row order of the priors


@functools.lru_cache(maxsize=4)
def _template_priors(smoothing_mm: float) -> tuple[sitk.Image, ...]:
    """Float images on the template grid: CSF, GM, WM probabilities, each smoothed by
    a Gaussian of `smoothing_mm` (an affine registration leaves millimetres of anatomy unmatched)."""
    from ..template import load_template_brain_mask, load_template_gm, load_template_wm

    gm, wm = load_template_gm(), load_template_wm()
    brain = sitk.Cast(load_template_brain_mask(), sitk.sitkFloat32)
    csf = sitk.Clamp(brain - gm - wm, sitk.sitkFloat32, 0.0, 1.0)
    layers = [csf, gm, wm]
    if smoothing_mm > 0:
        layers = [sitk.SmoothingRecursiveGaussian(im, float(smoothing_mm)) for im in layers]
    return tuple(layers)


@functools.lru_cache(maxsize=8)
def _priors_on(affine: tuple, shape: tuple, smoothing_mm: float) -> np.ndarray:
    from ..preprocess.case import grid_from_affine
    from ..preprocess.geometry import image_to_xyz, same_geometry

    grid = grid_from_affine(np.asarray(affine).reshape(4, 4), shape)
    layers = _template_priors(smoothing_mm)
    if same_geometry(layers[0], grid, tol=1e-6):  # registered raw input: the work grid is the template's
        arr = np.stack([image_to_xyz(im, np.float32) for im in layers])
    else:
        arr = np.stack([image_to_xyz(sitk.Resample(im, grid, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                   sitk.sitkFloat32)) for im in layers])
    arr.setflags(write=False)  # cached: callers must not change it
    return arr


def tissue_priors(case, smoothing_mm: float = 2.0) -> np.ndarray | None:
    """(3, X, Y, Z) float32 CSF / GM / WM template probabilities on `case`'s work grid (read-only,
    cached per grid), or None when the work grid is not in template space: the case's brain must
    lie inside the template brain and cover most of it (the rule of the contrast check)."""
    from ..preprocess.contrast import MIN_COVER, MIN_INSIDE

    if getattr(case, "mode", None) not in ("registered", "template-space"):
        return None
    priors = _priors_on(tuple(np.asarray(case.affine, float).ravel()), tuple(case.shape), float(smoothing_mm))
    template_brain = priors.sum(0) > 0.5
    both = int((case.brain & template_brain).sum())
    n_template = int(template_brain.sum())
    if not both or both < MIN_INSIDE * case.brain.sum() or both < MIN_COVER * n_template:
        return None
    return priors
