"""Access to the MNI152 2009 (ICBM152 nonlinear symmetric 09a) template shipped by nilearn.

The files live in nilearn's package data (``nilearn/datasets/data``) and are read directly with
SimpleITK: nothing is downloaded, and nilearn itself (slow to import) is not imported. The
values match nilearn's loaders: :func:`load_template_t1` is ``load_mni152_template(1)`` (T1
skull-stripped, rescaled to [0, 1]); :func:`load_template_brain_mask` is
``load_mni152_brain_mask(1)`` (template > 0.2); GM / WM probability maps in [0, 1].

Grid: 197 x 233 x 189 voxels, 1 mm, RAS+ (nibabel affine ``diag(1,1,1)`` with offset
(-98, -134, -72)); in SimpleITK: direction ``diag(-1,-1,1)``, origin (98, 134, -72) LPS.
Images are cached; the functions return copies.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = [
    "template_data_dir",
    "load_template_t1",
    "load_template_brain_mask",
    "template_brain_xyz",
    "load_template_gm",
    "load_template_wm",
    "template_affine",
    "on_template_grid",
    "TEMPLATE_FILES",
    "TEMPLATE_SHAPES",
]

# the MNI152 2009 grid (nilearn's) and FSL's MNI152 grid, both 1 mm: what template-space data comes on
TEMPLATE_SHAPES = {(197, 233, 189), (182, 218, 182)}
TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@functools.lru_cache(maxsize=None)
def template_data_dir() -> Path:
    """Folder of nilearn's packaged template files (found without importing nilearn)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nilearn is not installed: the MNI152 template ships with it "
                           "(pip install 'nilearn>=0.10')")
    d = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    missing = [f for f in TEMPLATE_FILES.values() if not (d / f).exists()]
    if missing:
        raise RuntimeError(f"nilearn's package data lacks the MNI152 template files {missing} in {d}")
    return d


@functools.lru_cache(maxsize=None)
def _load_scaled(kind: str) -> sitk.Image:
    img = sitk.ReadImage(str(template_data_dir() / TEMPLATE_FILES[kind]), sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(img)
    mx = float(arr.max())
    out = sitk.GetImageFromArray((arr / mx).astype(np.float32))
    out.CopyInformation(img)
    return out


def load_template_t1() -> sitk.Image:
    """Skull-stripped MNI152 T1 template, float32 in [0, 1] (== nilearn load_mni152_template(1))."""
    return sitk.Image(_load_scaled("t1"))


def load_template_gm() -> sitk.Image:
    """Grey-matter probability map, float32 in [0, 1] (== nilearn load_mni152_gm_template(1))."""
    return sitk.Image(_load_scaled("gm"))


def load_template_wm() -> sitk.Image:
    """White-matter probability map, float32 in [0, 1] (== nilearn load_mni152_wm_template(1))."""
    return sitk.Image(_load_scaled("wm"))


@functools.lru_cache(maxsize=None)
def _brain_mask(threshold: float) -> sitk.Image:
    return sitk.Cast(_load_scaled("t1") > threshold, sitk.sitkUInt8)


def load_template_brain_mask(threshold: float = 0.2) -> sitk.Image:
    """Template brain mask, uint8 {0,1}: T1 template > ``threshold`` (nilearn's definition)."""
    return sitk.Image(_brain_mask(float(threshold)))


@functools.lru_cache(maxsize=4)
def template_brain_xyz(threshold: float = 0.2) -> np.ndarray:
    """The template brain mask as a read-only (x, y, z) bool array (cached: every raw scan needs it)."""
    from uad_label.preprocess.geometry import image_to_xyz

    arr = image_to_xyz(_brain_mask(float(threshold))) > 0
    arr.setflags(write=False)
    return arr


def template_affine() -> np.ndarray:
    """4x4 RAS affine (nibabel convention) of the template grid."""
    from uad_label.preprocess.geometry import ras_affine

    return ras_affine(_load_scaled("t1"))


def on_template_grid(image: sitk.Image | str | Path) -> bool:
    """Whether an image (or an image file, header only) lies on a 1 mm MNI152 template grid: data already in
    template space, that preprocessing must not register again."""
    if not isinstance(image, sitk.Image):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(image))
        reader.ReadImageInformation()
        size, spacing = reader.GetSize(), reader.GetSpacing()
    else:
        size, spacing = image.GetSize(), image.GetSpacing()
    return tuple(int(n) for n in size) in TEMPLATE_SHAPES and bool(np.allclose(spacing, 1.0, atol=1e-3))
