"""N4 bias-field correction (fitted on a shrunk image, applied at full resolution) and a
rough head (foreground) mask."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

__all__ = ["head_mask", "shrink_factors", "n4_bias_correct"]


def head_mask(image: sitk.Image, closing_mm: float = 4.0) -> sitk.Image:
    """Foreground (head) mask, uint8: Otsu threshold, largest component, closing, holes filled."""
    img = sitk.Cast(image, sitk.sitkFloat32)
    fg = sitk.OtsuThreshold(img, 0, 1, 128)
    cc = sitk.ConnectedComponent(fg)
    cc = sitk.RelabelComponent(cc, sortByObjectSize=True)
    fg = sitk.Cast(cc == 1, sitk.sitkUInt8)
    radius = [max(1, int(round(closing_mm / s))) for s in img.GetSpacing()]
    fg = sitk.BinaryMorphologicalClosing(fg, radius)
    # fill holes slice by slice along the coarsest axis and in 3D (ventricles, dark CSF)
    fg = sitk.BinaryFillhole(fg)
    return sitk.Cast(fg, sitk.sitkUInt8)


def shrink_factors(spacing, voxel_mm: float) -> list[int]:
    """Per-axis integer shrink factors that bring each axis to about ``voxel_mm`` (never below
    1: a 4 mm slice axis is not shrunk when ``voxel_mm`` is 4)."""
    sp = np.asarray(spacing, dtype=float)
    return [int(max(1, round(voxel_mm / s))) for s in sp]


def n4_bias_correct(image: sitk.Image, mask: sitk.Image | None = None, voxel_mm: float = 6.0,
                    iterations=(10, 10, 10), convergence: float = 1e-3,
                    spline_distance_mm: float = 100.0) -> tuple[sitk.Image, sitk.Image]:
    """N4 bias correction. Returns (corrected float32 image, log bias field) on ``image``'s grid.

    The field is fitted on ``image`` shrunk to about ``voxel_mm`` voxels (per-axis integer
    factors, see :func:`shrink_factors`; 4 mm = shrink factor 4 of a 1 mm image) inside ``mask``
    (default: :func:`head_mask` of the shrunk image), then evaluated at full resolution (B-spline
    field) and divided out. N4 time grows with mask voxels x iterations.
    """
    img = sitk.Cast(image, sitk.sitkFloat32)
    img = sitk.Maximum(img, 0.0)
    factors = shrink_factors(img.GetSpacing(), voxel_mm)
    small = sitk.Shrink(img, factors)
    if mask is None:
        mask_small = head_mask(small)
    else:
        mask_small = sitk.Resample(sitk.Cast(mask > 0, sitk.sitkUInt8), small, sitk.Transform(),
                                   sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if int(np.count_nonzero(sitk.GetArrayViewFromImage(mask_small))) < 100:
        raise InputError("N4: the foreground mask is (nearly) empty; is the image blank?")
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    n4.SetConvergenceThreshold(convergence)
    physical = np.array(small.GetSize()) * np.array(small.GetSpacing())
    n4.SetNumberOfControlPoints([int(max(4, np.ceil(p / spline_distance_mm) + 3)) for p in physical])
    n4.Execute(small, mask_small)
    log_field = n4.GetLogBiasFieldAsImage(img)
    corrected = sitk.Cast(img / sitk.Exp(log_field), sitk.sitkFloat32)
    return corrected, log_field
