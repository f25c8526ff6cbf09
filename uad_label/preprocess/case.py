"""The case type of preprocessing and its grid helpers: what the pipeline produces (PreprocessedCase,
with its exact way back to the native grid), its options, and the resampling both the pipeline and
the registration use. Kept apart so that pipeline.py and register.py import this module, not each
other."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .geometry import (
    LPS_TO_RAS,
    RASReorientation,
    axes_reversed,
    image_to_xyz,
    lps_to_ras_points,
    ras_affine,
    same_geometry,
    xyz_for_resampling,
    xyz_to_image,
)

INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
    "label": sitk.sitkLabelGaussian,
}


class RegistrationError(RuntimeError):
    """Registration to the template failed its quality check; ``.metrics`` holds the numbers."""

    def __init__(self, message: str, metrics: dict | None = None):
        super().__init__(message)
        self.metrics = dict(metrics or {})


@dataclass
class PreprocessOptions:
    """Options of :func:`preprocess`.

    Attributes:
        preprocessed: input is already bias-corrected, brain-extracted and in template space:
            skip N4, registration and extraction; brain = non-zero voxels of the reference (or
            ``brain_mask``); the work grid is the input grid reoriented to RAS.
        bias_correction: run N4 (raw input only).
        register: register to the MNI152 template (raw input only). When False, the work grid is
            the reference scan resampled to ``spacing`` mm in RAS and brain = ``brain_mask`` or
            non-zero voxels.
        brain_mask: user brain mask (image or path) on the reference modality's native grid;
            replaces the template / non-zero mask.
        spacing: work-grid voxel size in mm (raw input; template-space input is not resampled).
        n4_voxel_mm, n4_iterations, n4_convergence: N4 fitted on the image shrunk to about
            ``n4_voxel_mm`` voxels (6 mm: e.g. 0.7 mm in-plane shrunk 8x), applied at full resolution.
        registration_spacing_mm: the template (and the scan, block-averaged) are registered at
            this resolution (2 mm); the shrink factors apply on top of it.
        registration_shrink, registration_sigmas_mm (rigid levels), affine_shrink,
        affine_sigmas_mm (affine levels), rigid_iterations, affine_iterations, min_step_mm,
        sampling_percentage, histogram_bins, affine, seed: multi-resolution registration
            (Mattes MI, random sampling inside the dilated template brain mask; shrink factors
            are relative to the registration grid, smoothing sigmas in mm).
        multimodal_registration: rigidly register the other modalities to the reference (else
            they are only resampled, assuming one scanner space). The rigid result is kept only
            if it improves MI over the scanner geometry (identity) and moves no head corner by
            more than ``max_intrastudy_shift_mm``; otherwise identity is used (and reported).
        intrastudy_sampling_percentage: share of the reference's head voxels (registration grid)
            sampled by that rigid registration's metric.
        min_mutual_information: quality check, the final Mattes MI must be <= -this (Mattes MI is
            reported negated by ITK: more negative is better).
        min_brain_in_head: quality check, fraction of the template brain (inside the scan's
            field of view) that must fall inside the scan's head (foreground) mask.
        min_fov_coverage: quality check, fraction of the template brain the scan must cover.
        on_registration_failure: "raise" (RegistrationError) or "warn" (keep going; the case's
            ``registration['passed']`` is False).
        template_mask_threshold: template brain mask = template T1 > this (nilearn: 0.2).
        interpolation: "linear" or "bspline" for intensity images into the work grid.
    """

    preprocessed: bool = False
    bias_correction: bool = True
    register: bool = True
    brain_mask: sitk.Image | str | os.PathLike | None = None
    spacing: float = 1.0
    n4_voxel_mm: float = 6.0
    n4_iterations: tuple = (10, 10, 10)
    n4_convergence: float = 1e-3
    registration_spacing_mm: float = 2.0
    registration_shrink: tuple = (4, 2, 1)
    registration_sigmas_mm: tuple = (4.0, 2.0, 1.0)
    affine_shrink: tuple = (2, 1)
    affine_sigmas_mm: tuple = (2.0, 1.0)
    min_step_mm: float = 0.01
    rigid_iterations: int = 100
    affine_iterations: int = 100
    sampling_percentage: float = 0.05
    histogram_bins: int = 32
    affine: bool = True
    seed: int = 1234
    multimodal_registration: bool = True
    max_intrastudy_shift_mm: float = 15.0
    intrastudy_sampling_percentage: float = 0.05
    min_mutual_information: float = 0.25
    min_brain_in_head: float = 0.90
    min_fov_coverage: float = 0.50
    on_registration_failure: str = "raise"
    template_mask_threshold: float = 0.2
    interpolation: str = "linear"


def grid_from_affine(affine: np.ndarray, shape) -> sitk.Image:
    """Empty uint8 SimpleITK image whose (i, j, k) grid has the given RAS affine and shape."""
    aff = np.asarray(affine, dtype=np.float64)
    m = LPS_TO_RAS @ aff[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    img = sitk.Image([int(s) for s in shape], sitk.sitkUInt8)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple((m / spacing).ravel().tolist()))
    img.SetOrigin(tuple((LPS_TO_RAS @ aff[:3, 3]).tolist()))
    return img


@dataclass
class PreprocessedCase:
    """Result of :func:`preprocess`: work-space volumes and the way back to the native grid.

    Attributes:
        arrays: modality -> float32 (x, y, z) RAS work volume (bias-corrected, resampled,
            registered; not intensity-normalised).
        brain: bool brain mask, same shape.
        spacing: work voxel size (mm) per axis.
        affine: 4x4 RAS affine of the work grid (nibabel convention).
        native_reference: the reference modality exactly as loaded (its grid is where
            :meth:`to_native` sends results).
        reference: name of the reference modality.
        mode: "template-space" (preprocessed input), "registered" (template registration) or
            "resampled" (raw input without registration).
        timings: seconds per stage.
        registration: metrics (``mutual_information``, ``brain_in_head``, ``fov_coverage``),
            ``passed``, transform parameters, per-modality rigid results.
        work_to_native: affine transform (LPS physical, ITK convention) mapping work-grid points
            to the reference's native physical points; None in template-space mode.
        modality_transforms: modality -> affine transform work-grid points -> that modality's
            native physical points (registered mode only).
    """

    arrays: dict
    brain: np.ndarray
    spacing: tuple
    affine: np.ndarray
    native_reference: sitk.Image
    reference: str
    mode: str
    timings: dict = field(default_factory=dict)
    registration: dict = field(default_factory=dict)
    work_to_native: sitk.Transform | None = None
    modality_transforms: dict = field(default_factory=dict)
    _reorientation: RASReorientation | None = None
    _work_grid: sitk.Image | None = None

    @property
    def shape(self) -> tuple:
        return tuple(self.brain.shape)

    @property
    def work_grid(self) -> sitk.Image:
        """Empty image with the work grid's geometry (SimpleITK (i, j, k) = work (x, y, z))."""
        if self._work_grid is None:
            self._work_grid = grid_from_affine(self.affine, self.shape)
        return self._work_grid

    # ---- work -> native -------------------------------------------------------------------
    def to_native(self, array: np.ndarray, interpolation: str = "linear", fill: float = 0.0) -> sitk.Image:
        """Map a work-space (x, y, z) array onto the reference scan's native grid.

        The result has the native reference's size, spacing, origin and direction. In
        template-space mode this is the exact inverse reorientation (voxel for voxel, dtype
        kept; ``interpolation`` is irrelevant); otherwise the array is resampled through the
        inverse registration (``"nearest"`` keeps the dtype — use it for label maps; ``"linear"``
        / ``"bspline"`` give float32). bool arrays come back as uint8. Voxels of the native
        grid outside the work grid get ``fill``.
        """
        arr = np.asarray(array)
        if arr.shape != self.shape:
            raise ValueError(f"array shape {arr.shape} != work grid {self.shape}")
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        if self._reorientation is not None:
            return xyz_to_image(self._reorientation.from_ras(arr), self.native_reference)
        if interpolation not in INTERPOLATORS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATORS)}, got {interpolation!r}")
        if interpolation != "nearest" and arr.dtype != np.float64:
            arr = arr.astype(np.float32)
        img = xyz_for_resampling(arr, self.work_grid)
        inv = self.work_to_native.GetInverse()
        out_type = img.GetPixelID()
        out = sitk.Resample(img, self.native_reference, inv, INTERPOLATORS[interpolation], float(fill), out_type)
        out.CopyInformation(self.native_reference)
        return out

    def brain_native(self) -> sitk.Image:
        """The work brain mask on the native reference grid (uint8, nearest neighbour)."""
        return self.to_native(self.brain.astype(np.uint8), interpolation="nearest")

    # ---- native -> work -------------------------------------------------------------------
    def to_work(self, image: sitk.Image, interpolation: str = "linear", fill: float = 0.0) -> np.ndarray:
        """Map an image in the reference scan's physical space (any grid, e.g. a mask drawn on
        the native scan) into the work grid; returns an (x, y, z) array."""
        if self._reorientation is not None and same_geometry(image, self.native_reference):
            return self._reorientation.to_ras(image_to_xyz(image))
        tr = self.work_to_native if self.work_to_native is not None else sitk.Transform()
        interp = INTERPOLATORS[interpolation]
        out_type = image.GetPixelID() if interpolation == "nearest" else sitk.sitkFloat32
        return onto_grid_xyz(image, self.work_grid, tr, interp, out_type, float(fill))

    # ---- coordinates ----------------------------------------------------------------------
    def work_voxel_to_work_ras(self, points_xyz: np.ndarray) -> np.ndarray:
        """(N, 3) work voxel coordinates -> RAS mm of the work space (template space when
        registered)."""
        pts = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
        return pts @ self.affine[:3, :3].T + self.affine[:3, 3]

    def work_voxel_to_native_ras(self, points_xyz: np.ndarray) -> np.ndarray:
        """(N, 3) work voxel coordinates (x, y, z; fractional allowed, e.g. a centroid) -> RAS
        mm in the native scanner space of the reference scan (the user's scan coordinates,
        nibabel / Slicer RAS world)."""
        ras = self.work_voxel_to_work_ras(points_xyz)
        if self.work_to_native is None:
            return ras
        lps = lps_to_ras_points(ras)
        out = np.array([self.work_to_native.TransformPoint(tuple(p)) for p in lps], dtype=np.float64)
        return lps_to_ras_points(out).reshape(-1, 3)

    def work_voxel_to_native_index(self, points_xyz: np.ndarray) -> np.ndarray:
        """(N, 3) work voxel coordinates -> continuous (i, j, k) voxel coordinates of the native
        reference grid (SimpleITK index order = (x, y, z) of ``image_to_xyz`` arrays)."""
        if self._reorientation is not None:
            return self._reorientation.work_to_native_index(points_xyz)
        ras = self.work_voxel_to_native_ras(points_xyz)
        inv = np.linalg.inv(ras_affine(self.native_reference))
        return ras @ inv[:3, :3].T + inv[:3, 3]


def onto_grid(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None = None,
               interp=sitk.sitkLinear, out_type=sitk.sitkFloat32, fill: float = 0.0) -> sitk.Image:
    """`image` resampled onto `grid` (through `transform`, identity by default)."""
    return sitk.Resample(image, grid, transform or sitk.Transform(), interp, fill, out_type)


def onto_grid_xyz(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None = None,
                  interp=sitk.sitkLinear, out_type=sitk.sitkFloat32, fill: float = 0.0) -> np.ndarray:
    """``image_to_xyz(onto_grid(...))`` without its transposed copy: resampled onto the axes-reversed grid."""
    size, spacing, origin, direction = axes_reversed(grid)
    return sitk.GetArrayFromImage(sitk.Resample(image, size, transform or sitk.Transform(), interp, origin, spacing,
                                                direction, fill, out_type))


def isotropic_ras_grid(image: sitk.Image, spacing: float = 1.0) -> sitk.Image:
    """Empty RAS-oriented grid (direction diag(-1,-1,1) in LPS) of ``spacing`` mm covering the
    physical bounding box of ``image``."""
    size = np.array(image.GetSize())
    corners = np.array([[i, j, k] for i in (-0.5, size[0] - 0.5) for j in (-0.5, size[1] - 0.5)
                        for k in (-0.5, size[2] - 0.5)])
    pts = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(c)) for c in corners])
    ras = lps_to_ras_points(pts)
    lo, hi = ras.min(axis=0), ras.max(axis=0)
    n = np.maximum(1, np.ceil((hi - lo) / spacing - 1e-6)).astype(int)
    aff = np.eye(4)
    aff[:3, :3] = np.eye(3) * spacing
    aff[:3, 3] = lo + spacing / 2.0
    return grid_from_affine(aff, n)
