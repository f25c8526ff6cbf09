"""The preprocessing pipeline shared by every detector.

Raw clinical input (default)::

    native scan --N4 (shrunk fit)--> --register (rigid+affine, Mattes MI)--> MNI152 template grid
    (1 mm, 197x233x189, RAS)       brain mask = the template's brain mask (within the scan's FOV)

Template-space input (``PreprocessOptions(preprocessed=True)``, the published protocol): the scan
is already bias-corrected, skull-stripped and in template space; the work grid is the input grid
reoriented to RAS (exact permutation / flips, no resampling) and brain = non-zero voxels.

Every spatial step is invertible: :meth:`PreprocessedCase.to_native` maps any work-space array
back onto the grid of the reference scan as the user loaded it.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Mapping

import numpy as np
import SimpleITK as sitk

from uad_label.preprocess.geometry import (
    RASReorientation,
    image_to_xyz,
    ras_affine,
    same_geometry,
)

from ..errors import InputError
from .case import (
    INTERPOLATORS,
    PreprocessedCase,
    PreprocessOptions,
    RegistrationError,
    grid_from_affine,
    isotropic_ras_grid,
    onto_grid,
)

log = logging.getLogger(__name__)

__all__ = ["PreprocessOptions", "PreprocessedCase", "RegistrationError", "preprocess",
           "grid_from_affine", "isotropic_ras_grid"]

# ---------------------------------------------------------------------------------------------
def _as_image(value, what: str) -> sitk.Image:
    if isinstance(value, sitk.Image):
        return value
    if isinstance(value, (str, os.PathLike)):
        from uad_label.io import load_image

        return load_image(value)
    raise TypeError(f"{what}: expected a SimpleITK.Image or a path, got {type(value).__name__}")


def _user_mask_native(options: PreprocessOptions, ref: sitk.Image) -> sitk.Image | None:
    if options.brain_mask is None:
        return None
    m = _as_image(options.brain_mask, "brain_mask")
    if not same_geometry(m, ref, tol=1e-3):
        if tuple(m.GetSize()) == tuple(ref.GetSize()):
            warnings.warn("brain_mask has the reference's size but a different geometry; "
                          "it is used voxel for voxel")
            m = sitk.Image(m)
            m.CopyInformation(ref)
        else:
            warnings.warn("brain_mask is not on the reference modality's native grid; "
                          "it is resampled onto it (nearest neighbour)")
            m = onto_grid(m, ref, interp=sitk.sitkNearestNeighbor, out_type=m.GetPixelID())
    mask = sitk.Cast(m > 0, sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(mask)):
        raise InputError("the given brain_mask is empty")
    return mask


def _pick_reference(images: Mapping[str, sitk.Image], reference: str | None) -> str:
    if reference is not None and reference in images:
        return reference
    if reference is not None and reference != "FLAIR":
        raise InputError(f"reference modality {reference!r} not among the given images {list(images)}")
    return "FLAIR" if "FLAIR" in images else next(iter(images))


def preprocess(images: Mapping[str, sitk.Image | str | os.PathLike],
               options: PreprocessOptions | None = None,
               reference: str | None = "FLAIR") -> PreprocessedCase:
    """Run the preprocessing pipeline on one case.

    Args:
        images: modality name -> SimpleITK image (or path), each in its own native grid.
        options: :class:`PreprocessOptions` (default: raw clinical input).
        reference: modality that defines the native grid of the outputs and is registered to
            the template; FLAIR if present, else the first given.

    Raises:
        RegistrationError: the registration quality check failed (the message gives the metrics).
        ValueError: bad input (no images, not 3D, empty brain mask, ...).
    """
    opts = options or PreprocessOptions()
    if not images:
        raise InputError("preprocess needs at least one image")
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    imgs = {k: _as_image(v, k) for k, v in images.items()}
    for k, im in imgs.items():
        if im.GetDimension() != 3 or im.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"{k}: a scalar 3D image is needed, got {im.GetDimension()}D "
                             f"with {im.GetNumberOfComponentsPerPixel()} components")
    ref_name = _pick_reference(imgs, reference)
    ref = imgs[ref_name]
    user_mask = _user_mask_native(opts, ref)
    timings["load"] = time.perf_counter() - t0
    if opts.preprocessed:
        case = _template_space(imgs, ref_name, user_mask, opts, timings)
    elif opts.register:
        from uad_label.preprocess.register import registered_pipeline

        case = registered_pipeline(imgs, ref_name, user_mask, opts, timings)
    else:
        case = _resampled(imgs, ref_name, user_mask, opts, timings)
    timings["total"] = time.perf_counter() - t_all
    case.timings = timings
    return case


def _template_space(imgs, ref_name, user_mask, opts, timings) -> PreprocessedCase:
    t0 = time.perf_counter()
    ref = imgs[ref_name]
    reo = RASReorientation.of(ref)
    arrays = {}
    for k, im in imgs.items():
        if k != ref_name and not same_geometry(im, ref, tol=1e-3):
            warnings.warn(f"{k} is not on {ref_name}'s grid; resampled onto it (linear, identity)")
            im = onto_grid(im, ref)
        arrays[k] = reo.to_ras(image_to_xyz(im, np.float32))
    if user_mask is not None:
        brain = reo.to_ras(image_to_xyz(user_mask)) > 0
    else:
        brain = arrays[ref_name] != 0
    if not brain.any():
        raise InputError(f"{ref_name} has no non-zero voxel: cannot define the brain")
    timings["reorient"] = time.perf_counter() - t0
    aff = reo.affine
    return PreprocessedCase(
        arrays=arrays, brain=brain, spacing=tuple(float(s) for s in np.linalg.norm(aff[:3, :3], axis=0)),
        affine=aff, native_reference=ref, reference=ref_name, mode="template-space",
        registration={"performed": False, "passed": True, "reason": "input declared in template space"},
        work_to_native=None, _reorientation=reo)


def _resampled(imgs, ref_name, user_mask, opts, timings) -> PreprocessedCase:
    """Raw input without registration: N4 (optional), resample to ``spacing`` mm in RAS."""
    from uad_label.preprocess.bias import n4_bias_correct

    ref = imgs[ref_name]
    corrected = {}
    t0 = time.perf_counter()
    for k, im in imgs.items():
        corrected[k] = (n4_bias_correct(im, voxel_mm=opts.n4_voxel_mm, iterations=opts.n4_iterations,
                                        convergence=opts.n4_convergence)[0]
                        if opts.bias_correction else sitk.Cast(im, sitk.sitkFloat32))
    timings["n4"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    grid = isotropic_ras_grid(ref, opts.spacing)
    arrays = {k: image_to_xyz(onto_grid(im, grid, interp=INTERPOLATORS[opts.interpolation]), np.float32)
              for k, im in corrected.items()}
    if user_mask is not None:
        brain = image_to_xyz(onto_grid(user_mask, grid, interp=sitk.sitkLinear)) >= 0.5
    else:
        brain = arrays[ref_name] != 0
    timings["resample"] = time.perf_counter() - t0
    aff = ras_affine(grid)
    return PreprocessedCase(
        arrays=arrays, brain=brain, spacing=(float(opts.spacing),) * 3, affine=aff,
        native_reference=ref, reference=ref_name, mode="resampled",
        registration={"performed": False, "passed": True, "reason": "register=False"},
        work_to_native=sitk.AffineTransform(3), _work_grid=grid)
