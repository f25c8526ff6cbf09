"""The MNI152 2009 template and tissue maps shipped with nilearn, prepared for synthesis.

Everything here is loaded offline from nilearn's package data and cached per process. Arrays
follow the package convention: (x, y, z) in RAS+ voxel order (the nilearn template grid is
already RAS+, 197 x 233 x 189 at 1 mm). `downsample` > 1 gives a coarser copy of the same
field of view (block-smoothed), used to make tiny subjects for tests.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def sitk_from_xyz(array: np.ndarray, reference: sitk.Image | None = None, *, spacing=None, origin=None,
                  direction=None) -> sitk.Image:
    """SimpleITK image from an (x, y, z) array; geometry copied from `reference` or given."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    if reference is not None:
        img.CopyInformation(reference)
    else:
        img.SetSpacing([float(s) for s in spacing])
        img.SetOrigin([float(o) for o in origin])
        img.SetDirection([float(d) for d in np.asarray(direction, float).ravel()])
    return img


def xyz_from_sitk(img: sitk.Image) -> np.ndarray:
    """(x, y, z) array of a SimpleITK image (voxel order as stored, no reorientation)."""
    return np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))


def geometry_from_affine(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spacing, LPS origin, LPS direction 3x3) of a nibabel RAS affine."""
    lin = np.asarray(affine, float)[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    direction = _RAS_TO_LPS @ (lin / spacing)
    origin = _RAS_TO_LPS @ np.asarray(affine, float)[:3, 3]
    return spacing, origin, direction


@dataclass(frozen=True)
class TemplateAssets:
    """Template-space maps on one grid, (x, y, z) float32 arrays, plus that grid as an image."""

    reference: sitk.Image      # float32 zeros carrying the grid geometry (LPS physical space)
    spacing: float             # isotropic voxel size in mm
    brain: np.ndarray          # brain mask, softened at the border (0..1)
    gm: np.ndarray             # grey-matter probability
    wm: np.ndarray             # white-matter probability
    csf: np.ndarray            # brain - gm - wm, clipped to 0..1
    texture: np.ndarray        # T1 template residual after a tissue-class fit (about -1..1, 0 outside)
    ventricles: np.ndarray     # bool, lateral/third ventricles (deep CSF)
    vent_dist: np.ndarray      # distance to the ventricles in mm
    depth: np.ndarray          # distance to the brain border in mm
    brain_center: np.ndarray   # LPS physical centre of the brain bounding box
    brain_bbox: tuple          # (lo, hi) voxel index bounds of the brain (inclusive)
    support: np.ndarray        # bool, brain > 0 dilated by 2 voxels: where anything is non-zero
    stacked: np.ndarray        # (X, Y, Z, 4) brain, gm, wm, texture interleaved (fast resampling)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.brain.shape)


_NILEARN_FILES = {"t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                  "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                  "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}


def _load_nilearn() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The 1 mm template, GM and WM maps (each scaled to max 1) and the brain mask (template >
    0.2), exactly as nilearn.datasets.load_mni152_* (resolution=1) return them. The files are read
    straight from nilearn's package data: importing nilearn.datasets costs seconds (scikit-learn,
    pandas); the nilearn functions are the fallback if the files move."""
    import importlib.util

    import nibabel as nib

    spec = importlib.util.find_spec("nilearn")
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" if spec else None
    out = {}
    if data is not None and all((data / f).is_file() for f in _NILEARN_FILES.values()):
        for name, fname in _NILEARN_FILES.items():
            img = nib.load(str(data / fname))
            arr = np.asarray(img.dataobj, dtype=np.float32)
            out[name] = (arr / arr.max(), np.asarray(img.affine))
    else:  # pragma: no cover - depends on the nilearn version
        from nilearn import datasets

        for name, fn in (("t1", datasets.load_mni152_template), ("gm", datasets.load_mni152_gm_template),
                         ("wm", datasets.load_mni152_wm_template)):
            img = fn(resolution=1)
            out[name] = (np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32), np.asarray(img.affine))
    out["brain"] = ((out["t1"][0] > 0.2).astype(np.float32), out["t1"][1])
    return out


def _distance_mm(mask: np.ndarray, ref: sitk.Image, inside: bool) -> np.ndarray:
    """Distance in mm to the mask border, >= 0 inside (inside=True) or outside the mask, else 0
    (SimpleITK's multithreaded Maurer transform: much faster than scipy's here)."""
    img = sitk_from_xyz(mask.astype(np.uint8), ref)
    d = xyz_from_sitk(sitk.SignedMaurerDistanceMap(img, insideIsPositive=inside, squaredDistance=False,
                                                   useImageSpacing=True, backgroundValue=0))
    return np.maximum(d, 0).astype(np.float32)


@functools.lru_cache(maxsize=4)
def load_template(downsample: int = 1) -> TemplateAssets:
    """Template assets at 1 mm (downsample=1) or on a `downsample`-times coarser grid."""
    downsample = int(downsample)
    if downsample < 1:
        raise ValueError(f"downsample must be >= 1, got {downsample}")
    raw = _load_nilearn()
    affine = raw["t1"][1]
    spacing, origin, direction = geometry_from_affine(affine)
    maps = {k: v[0] for k, v in raw.items()}
    ref1 = sitk_from_xyz(np.zeros(maps["t1"].shape, np.float32), spacing=spacing, origin=origin, direction=direction)
    if downsample > 1:
        size = [int(np.ceil(s / downsample)) for s in maps["t1"].shape]
        new_spacing = spacing * downsample
        # voxel centres of the coarse grid sit at the centres of downsample^3 blocks
        new_origin = origin + direction @ (spacing * (downsample - 1) / 2.0)
        ref = sitk.Image(size, sitk.sitkFloat32)
        ref.SetSpacing(new_spacing.tolist())
        ref.SetOrigin(new_origin.tolist())
        ref.SetDirection(direction.ravel().tolist())
        for k in maps:
            img = sitk_from_xyz(maps[k], ref1)
            img = sitk.SmoothingRecursiveGaussian(img, 0.45 * downsample * float(spacing[0]))
            maps[k] = xyz_from_sitk(sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        vox = float(new_spacing[0])
    else:
        ref = ref1
        vox = float(spacing[0])

    brain_hard = maps["brain"] > 0.5
    brain = np.clip(ndimage.gaussian_filter(brain_hard.astype(np.float32), 0.6), 0, 1) if downsample == 1 \
        else np.clip(maps["brain"], 0, 1)
    gm = np.clip(maps["gm"], 0, 1) * brain
    wm = np.clip(maps["wm"], 0, 1) * brain
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(brain - gm - wm, 0, 1)

    # texture: what the T1 template shows beyond a linear fit on the tissue classes
    t1 = maps["t1"]
    inside = brain > 0.5
    a = np.stack([gm[inside], wm[inside], csf[inside]], 1)
    coef, *_ = np.linalg.lstsq(a, t1[inside], rcond=None)
    contrast = max(float(coef[1] - coef[0]), 1e-3)
    texture = np.zeros_like(t1)
    texture[inside] = (t1[inside] - a @ coef) / contrast
    texture = np.clip(texture, -1, 1) * brain

    brain_bin = brain_hard if downsample == 1 else brain > 0.5
    depth = _distance_mm(brain_bin, ref, inside=True)
    vent = (csf > 0.5) & (depth > 14.0)
    lab, n = ndimage.label(vent)
    if n:
        sizes = ndimage.sum(vent, lab, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes * vox ** 3 >= 300.0) + 1  # drop specks of deep CSF
        vent = np.isin(lab, keep)
    vent_dist = _distance_mm(vent, ref, inside=False) if vent.any() else np.full(vent.shape, 50.0, np.float32)

    idx = np.argwhere(brain_hard if downsample == 1 else brain > 0.5)
    centre_idx = (idx.min(0) + idx.max(0)) / 2.0
    brain_bbox = (idx.min(0), idx.max(0))
    brain_center = np.asarray(ref.TransformContinuousIndexToPhysicalPoint(centre_idx.tolist()))

    support = ndimage.binary_dilation(brain > 0, iterations=2)
    support.setflags(write=False)
    stacked = np.stack([brain, gm, wm, texture], axis=-1).astype(np.float32)
    stacked.setflags(write=False)
    arrays = dict(brain=brain, gm=gm, wm=wm, csf=csf, texture=texture, vent_dist=vent_dist, depth=depth)
    for v in arrays.values():
        v.setflags(write=False)
    vent.setflags(write=False)
    return TemplateAssets(reference=ref, spacing=vox, ventricles=vent, brain_center=brain_center, brain_bbox=brain_bbox,
                          support=support,
                          stacked=stacked,
                          **{k: v.astype(np.float32, copy=False) for k, v in arrays.items()})
