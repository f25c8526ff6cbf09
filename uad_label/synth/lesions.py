"""Lesions in template space: synthetic MS-like lesions, or a real binary mask resampled in.

A lesion layer is three (x, y, z) float32 arrays on the template grid:
- `occupancy`: 0..1, the ground truth is `occupancy >= 0.5` after warping;
- `soft`: 0..1, the partial-volume weight used for the intensities (soft borders);
- `strength`: 0..1 per lesion, how far each lesion goes towards the full lesion contrast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .template import TemplateAssets, xyz_from_sitk


@dataclass
class LesionLayer:
    occupancy: np.ndarray
    soft: np.ndarray
    strength: np.ndarray
    info: list[dict] = field(default_factory=list)
    source: str = "synthetic"


def empty_layer(assets: TemplateAssets) -> LesionLayer:
    z = np.zeros(assets.shape, np.float32)
    return LesionLayer(z, z, z, [], "none")


def _radial_direction(assets: TemplateAssets, c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vector (voxel axes) pointing away from the ventricles at voxel c (Dawson's fingers)."""
    d = assets.vent_dist
    lo = np.maximum(c - 2, 0)
    hi = np.minimum(c + 3, np.array(d.shape))
    sub = d[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    g = np.array([np.mean(np.gradient(sub, axis=k)) if sub.shape[k] > 1 else 0.0 for k in range(3)])
    n = np.linalg.norm(g)
    if n < 1e-6:
        g = rng.standard_normal(3)
        n = np.linalg.norm(g)
    return g / n


def _orthonormal(u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    v -= v.dot(u) * u
    v /= np.linalg.norm(v)
    return np.stack([u, v, np.cross(u, v)])


def _blob(rng, assets, centre_vox, radius_mm, elongation, axis, occ, strength, s_value):
    """Noise-perturbed ellipsoid added (max) into occ; returns its box volume count."""
    sp = assets.spacing
    a = radius_mm * elongation ** (2 / 3)          # long semi-axis, along `axis`
    b = radius_mm / elongation ** (1 / 3)          # so that a*b*b == radius^3
    half = int(np.ceil((a * 1.5 + 1.5) / sp)) + 1
    lo = np.maximum(centre_vox - half, 0)
    hi = np.minimum(centre_vox + half + 1, np.array(occ.shape))
    if np.any(hi <= lo):
        return
    grids = np.meshgrid(*[(np.arange(low, h) - c) * sp for low, h, c in zip(lo, hi, centre_vox)], indexing="ij")
    pts = np.stack(grids, -1)
    frame = _orthonormal(axis, rng)
    uvw = pts @ frame.T
    e = np.sqrt((uvw[..., 0] / a) ** 2 + (uvw[..., 1] / b) ** 2 + (uvw[..., 2] / (b * rng.uniform(0.75, 1.0))) ** 2)
    noise = ndimage.gaussian_filter(rng.standard_normal(e.shape).astype(np.float32), max(1.0, 0.4 * b / sp))
    noise /= noise.std() + 1e-6
    e = e * (1.0 + 0.22 * noise)
    width = 0.6  # soft border half-width in mm
    o = np.clip(0.5 + (1.0 - e) * b / (2 * width), 0, 1).astype(np.float32)
    sl = tuple(slice(low, h) for low, h in zip(lo, hi))
    np.maximum(occ[sl], o, out=occ[sl])
    s = strength[sl]
    s[o > 0] = np.maximum(s[o > 0], s_value)


def synthetic_lesions(rng: np.random.Generator, assets: TemplateAssets, n_lesions: int | None = None) -> LesionLayer:
    """Several MS-like white-matter lesions: mostly periventricular, ovoid, radially oriented."""
    sp = assets.spacing
    n = int(rng.integers(3, 16)) if n_lesions is None else int(n_lesions)
    wm = assets.wm
    cand_mask = (wm > 0.75) & (assets.depth > 6.0)
    cand = np.flatnonzero(cand_mask)
    if cand.size == 0:
        raise ValueError("template has no white matter to put lesions in")
    vd = assets.vent_dist.ravel()[cand]
    w_peri = np.exp(-np.maximum(vd - 2.0, 0) / 5.0)
    w_peri /= w_peri.sum()
    w_deep = np.full(cand.size, 1.0 / cand.size)
    occ = np.zeros(assets.shape, np.float32)
    strength = np.zeros(assets.shape, np.float32)
    info = []
    r_min = max(2.0, 1.1 * sp)
    for _ in range(n):
        kind = "periventricular" if rng.random() < 0.7 else "deep_wm"
        flat = rng.choice(cand, p=w_peri if kind == "periventricular" else w_deep)
        c = np.array(np.unravel_index(flat, assets.shape))
        r = float(np.exp(rng.uniform(np.log(r_min), np.log(8.0))))
        elong = float(rng.uniform(1.3, 2.4)) if kind == "periventricular" else float(rng.uniform(1.0, 1.8))
        if kind == "periventricular":
            axis = _radial_direction(assets, c, rng)
        else:
            axis = rng.standard_normal(3)
            axis /= np.linalg.norm(axis)
        s_value = float(rng.uniform(0.65, 1.0))
        _blob(rng, assets, c, r, elong, axis, occ, strength, s_value)
        confluent = rng.random() < 0.3
        if confluent:  # one or two satellites touching the main lesion
            for _ in range(int(rng.integers(1, 3))):
                off = rng.standard_normal(3)
                off = off / np.linalg.norm(off) * r * rng.uniform(0.9, 1.5) / sp
                _blob(rng, assets, np.round(c + off).astype(int), r * rng.uniform(0.5, 0.85),
                      float(rng.uniform(1.0, 1.6)), axis, occ, strength, s_value * rng.uniform(0.85, 1.0))
        centre_phys = assets.reference.TransformIndexToPhysicalPoint([int(v) for v in c])
        info.append(dict(kind=kind, centre_lps_mm=[round(float(v), 1) for v in centre_phys],
                         radius_mm=round(r, 2), elongation=round(elong, 2), confluent=bool(confluent)))
    # white matter only: fade out where the white-matter probability drops
    wm_gate = np.clip((wm - 0.25) / 0.35, 0, 1)
    occ *= wm_gate
    # the gate can cut specks off a lesion: drop ground-truth components under ~20 mm^3
    nz = np.argwhere(occ > 0)
    if nz.size:
        box = tuple(slice(low, h + 1) for low, h in zip(nz.min(0), nz.max(0)))
        sub = occ[box]
        lab, n = ndimage.label(sub >= 0.5, structure=np.ones((3, 3, 3)))
        small = np.bincount(lab.ravel(), minlength=n + 1) * sp ** 3 < 20.0
        small[0] = False
        cut = small[lab]
        sub[cut] = np.minimum(sub[cut], 0.45)
    strength[occ <= 0] = 0
    return LesionLayer(occ, occ, strength, info, "synthetic")


def _read_mask_image(mask) -> tuple[sitk.Image, str]:
    if isinstance(mask, sitk.Image):
        return mask, "image"
    p = Path(mask)
    if not p.is_file():
        raise ValueError(f"lesion mask not found: {p}")
    try:
        return sitk.ReadImage(str(p)), p.name
    except RuntimeError as exc:
        raise ValueError(f"cannot read lesion mask {p}: {exc}") from None


def mask_layer(rng: np.random.Generator, assets: TemplateAssets, mask) -> LesionLayer:
    """Lesion layer from a real binary mask: an (x, y, z) array on the template grid, a SimpleITK
    image or a file in MNI space (any grid: resampled by physical coordinates)."""
    if isinstance(mask, np.ndarray):
        if mask.shape != assets.shape:
            raise ValueError(f"lesion mask array has shape {mask.shape}, the template grid is {assets.shape}")
        occ = (mask > 0).astype(np.float32)
        source = "array"
    else:
        img, source = _read_mask_image(mask)
        img = sitk.Cast(img > 0, sitk.sitkFloat32) if img.GetNumberOfComponentsPerPixel() == 1 else None
        if img is None:
            raise ValueError(f"lesion mask {source} is not a scalar image")
        # 1 mm to 1 mm MNI grids differ by whole voxels: linear interpolation is then exact
        # nearest neighbour; on a coarser grid it keeps partial volumes (threshold 0.5 = GT).
        if assets.spacing > 1.01:
            img = sitk.SmoothingRecursiveGaussian(img, 0.45 * assets.spacing)
        occ = xyz_from_sitk(sitk.Resample(img, assets.reference, sitk.Transform(), sitk.sitkLinear, 0.0,
                                          sitk.sitkFloat32))
    if not (occ >= 0.5).any():
        raise ValueError(f"lesion mask {source} is empty on the template grid")
    soft = np.maximum(occ, np.clip(ndimage.gaussian_filter(occ, 0.5), 0, 1) * 0.9).astype(np.float32)
    lab, n = ndimage.label(soft > 0.05)
    strength = np.zeros(assets.shape, np.float32)
    if n:
        vals = np.concatenate([[0.0], rng.uniform(0.65, 1.0, n)]).astype(np.float32)
        strength = vals[lab]
    return LesionLayer(occ.astype(np.float32), soft, strength, [], source)


def lesion_stats(mask_xyz: np.ndarray, voxel_volume_mm3: float) -> tuple[int, float]:
    """(number of 26-connected components, total volume in mL) of a binary mask."""
    lab, n = ndimage.label(mask_xyz > 0, structure=np.ones((3, 3, 3)))
    return int(n), float(np.count_nonzero(mask_xyz)) * voxel_volume_mm3 / 1000.0
