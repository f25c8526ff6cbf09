"""Wrong-modality guard from tissue contrast in template space.

Every learned detector is trained on one contrast; a T1 sent as FLAIR gives a confident, meaningless
map. After registration the template's tissue priors say where white matter, grey matter and
ventricular CSF are, so the median intensity of each, relative to white matter, tells the contrast:

    T2      CSF much brighter than WM (ratio 2.1-2.6 measured on real and synthetic scans)
    FLAIR   CSF darker than WM, GM as bright as WM or brighter (GM/WM 1.00-1.17)
    T1      CSF darker than WM, GM darker than WM (GM/WM 0.64-0.93)

The rules refuse only clear mismatches (margins from these measurements: the MSLUB patient, two raw
clinical patients after registration, synthetic subjects; see docs/preprocessing.md); a FLAIR/T1
mix-up with weak T1 contrast can pass. Requests can switch the check off (`check_contrast`).
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

MIN_VOXELS = 500  # fewer voxels in any tissue region: the grid does not hold a template-space brain
# template space means: the case's brain lies inside the template's brain mask and covers at least half
# of it (MSLUB in FSL's MNI grid: 99.9 % and 60 %; the template mask also holds CSF and brainstem)
MIN_INSIDE, MIN_COVER = 0.9, 0.5

# (lowest allowed, highest allowed) per ratio and modality; None = unbounded
RULES: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "T2": {"csf_wm": (1.3, None)},
    "FLAIR": {"csf_wm": (None, 1.1), "gm_wm": (0.9, None)},
    "T1": {"csf_wm": (None, 1.1), "gm_wm": (None, 1.02)},
}
HINTS = {
    ("csf_wm", "low"): "CSF is not brighter than white matter, as it is on T2",
    ("csf_wm", "high"): "CSF is brighter than white matter, as on T2",
    ("gm_wm", "low"): "grey matter is darker than white matter, as on T1",
    ("gm_wm", "high"): "grey matter is brighter than white matter, as on FLAIR or T2",
}


@dataclass(frozen=True)
class ContrastSignature:
    gm_wm: float  # median GM intensity / median WM intensity
    csf_wm: float  # median ventricular CSF intensity / median WM intensity
    voxels: dict

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


# the regions computed once, shipped (266 kB): computing them costs 1.1 s of CPU in every process's first
# case (three template reads and the erosion); tests/test_contrast_check.py checks the file equals
# compute_template_regions(); write_template_regions() rewrites it
REGIONS_FILE = Path(__file__).resolve().parents[1] / "assets" / "template_regions.nii.gz"


@functools.lru_cache(maxsize=1)
def _template_regions() -> sitk.Image:
    """The shipped regions when the file matches the template's grid, else computed."""
    from ..template import TEMPLATE_FILES, template_data_dir

    header = sitk.ImageFileReader()
    header.SetFileName(str(template_data_dir() / TEMPLATE_FILES["gm"]))
    header.ReadImageInformation()
    if REGIONS_FILE.exists():
        regions = sitk.ReadImage(str(REGIONS_FILE))
        if regions.GetSize() == header.GetSize() and regions.GetPixelID() == sitk.sitkUInt8:
            regions.SetOrigin(header.GetOrigin())  # the template's own geometry, not the NIfTI round trip's
            regions.SetSpacing(header.GetSpacing())
            regions.SetDirection(header.GetDirection())
            return regions
    return compute_template_regions()


def write_template_regions(path: str | Path = REGIONS_FILE) -> Path:
    from ..io import save_image

    return save_image(compute_template_regions(), path)


def compute_template_regions() -> sitk.Image:
    """Label image in template space: 1 WM (p > 0.9), 2 GM (p > 0.7), 3 ventricular CSF (inside the
    brain mask eroded by 12 mm, neither GM nor WM above 0.05), 4 the rest of the brain mask."""
    from ..template import load_template_brain_mask, load_template_gm, load_template_wm

    gm = sitk.GetArrayFromImage(load_template_gm())
    wm = sitk.GetArrayFromImage(load_template_wm())
    core = eroded_by_ball(load_template_brain_mask(), 12)
    lab = (sitk.GetArrayFromImage(load_template_brain_mask()) > 0).astype(np.uint8) * 4
    lab[wm > 0.9] = 1
    lab[gm > 0.7] = 2
    lab[core & (gm < 0.05) & (wm < 0.05)] = 3
    out = sitk.GetImageFromArray(lab)
    out.CopyInformation(load_template_gm())
    return out


def eroded_by_ball(mask: sitk.Image, radius: int) -> np.ndarray:
    """(k, j, i) bool array of `sitk.BinaryErode(mask, [radius] * 3)` (ITK's ball of `radius` voxels, the image
    border counting as foreground), from one Maurer distance map: a voxel survives the erosion exactly when no
    background voxel lies within the ball, whose offsets are those with |d|^2 <= (radius + 1/2)^2 (ITK's
    FlatStructuringElement::Ball). Three times faster than the erosion on the template (0.44 s against 1.39 s
    of CPU); tests/test_contrast_check.py checks it equals BinaryErode."""
    background = sitk.BinaryNot(sitk.Cast(mask > 0, sitk.sitkUInt8))
    squared = sitk.SignedMaurerDistanceMap(background, insideIsPositive=False, squaredDistance=True,
                                           useImageSpacing=False, backgroundValue=0)
    return sitk.GetArrayViewFromImage(squared) > (radius + 0.5) ** 2


@functools.lru_cache(maxsize=8)
def _regions_on(affine: tuple, shape: tuple) -> np.ndarray:
    """The tissue regions on a work grid (cached: an evaluation runs many cases on one grid)."""
    from .case import grid_from_affine
    from .geometry import image_to_xyz

    grid = grid_from_affine(np.asarray(affine).reshape(4, 4), shape)
    return image_to_xyz(sitk.Resample(_template_regions(), grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0))


def contrast_signature(case, modality: str) -> ContrastSignature | None:
    """Tissue medians of case.arrays[modality] relative to WM, or None when the work grid is not in
    template space (no registration) or holds too little of each tissue."""
    if getattr(case, "mode", None) not in ("registered", "template-space") or modality not in case.arrays:
        return None
    labels = _regions_on(tuple(np.asarray(case.affine, float).ravel()), tuple(case.shape))
    template_brain = labels > 0
    both = int((case.brain & template_brain).sum())
    if not both or both < MIN_INSIDE * case.brain.sum() or both < MIN_COVER * template_brain.sum():
        return None
    a = np.asarray(case.arrays[modality])
    regions = {name: case.brain & (labels == k) for name, k in (("wm", 1), ("gm", 2), ("csf", 3))}
    voxels = {name: int(m.sum()) for name, m in regions.items()}
    if min(voxels.values()) < MIN_VOXELS:
        return None
    med = {name: float(np.median(a[m])) for name, m in regions.items()}
    if med["wm"] <= 0:
        return None
    return ContrastSignature(med["gm"] / med["wm"], med["csf"] / med["wm"], voxels)


def check_modality_contrast(case, modality: str) -> dict | None:
    """Raise ValueError when the image given as `modality` clearly has another contrast; return the
    signature (for the result's JSON) or None when it cannot be measured."""
    sig = contrast_signature(case, modality)
    if sig is None or modality not in RULES:
        return None
    for ratio, (lo, hi) in RULES[modality].items():
        value = getattr(sig, ratio)
        side = "low" if lo is not None and value < lo else "high" if hi is not None and value > hi else None
        if side:
            bound = f">= {lo}" if side == "low" else f"<= {hi}"
            raise InputError(
                f"images['{modality}']: the scan does not have {modality} contrast: {HINTS[(ratio, side)]} "
                f"(median {ratio.replace('_', '/').upper()} ratio {value:.2f}, expected {bound} for {modality}). "
                f"Send it under its own modality, or set the parameter check_contrast to false if it is "
                f"an unusual {modality}.")
    return sig.to_dict()
