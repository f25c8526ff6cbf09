"""One synthetic subject: FLAIR-, T1- and T2-like images made from the MNI152 tissue maps.

Pipeline (all randomness from `seed`, split into independent streams so that the same seed with
and without lesions gives the same anatomy, contrast and noise):
1. template-space layers: brain, GM, WM (CSF = brain - GM - WM), the T1 template's texture and
   optionally a lesion layer (synthetic MS-like lesions or a real mask);
2. one trilinear resampling onto the output grid through: a smooth random displacement field
   (low-order cosines, largest displacement `deform_mm`) and, for `geometry="native"`, a small
   random rigid head motion, a non-RAS voxel order for most subjects and anisotropic spacing
   (1 x 1 x 1.2 mm);
3. tissue-contrast synthesis per modality (partial-volume blend of per-subject tissue means in a
   realistic order), lesion contrast, texture, a smooth multiplicative bias field, slight blur and
   Rician noise; int16 like scanner output. The ground truth is the warped lesion occupancy >= 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .lesions import LesionLayer, empty_layer, lesion_stats, mask_layer, synthetic_lesions
from .template import TemplateAssets, load_template, sitk_from_xyz

MODALITIES = ("FLAIR", "T1", "T2")
GEOMETRIES = ("native", "template")
# voxel-axis codes (nibabel style: the direction each index increases towards) for native subjects
NATIVE_ORIENTATIONS = ("LPS", "LAS", "RAS", "LPS", "LAS")
_LETTER = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
NATIVE_FOV_MM = {"RL": 180.0, "AP": 220.0, "SI": 186.0}
_STREAMS = {"geometry": 1, "deform": 2, "contrast": 3, "lesions": 4, "noise": 5}


@dataclass
class Subject:
    images: dict[str, sitk.Image]          # "FLAIR", "T1", "T2": int16, same grid
    lesion_mask: sitk.Image                # uint8 0/1 on the image grid (all zero when healthy)
    healthy: bool
    meta: dict
    # "GM", "WM", "CSF" probabilities on the image grid, (i, j, k) arrays in the images' own voxel
    # order (that of xyz_from_sitk, not reoriented): for tests and analysis, not written to disk
    tissues: dict[str, np.ndarray] = field(default_factory=dict)


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, _STREAMS[stream]])


def orientation_direction_lps(code: str) -> np.ndarray:
    """3x3 LPS direction matrix (columns = voxel axes) of a voxel-axis code such as "LAS"."""
    ras = np.array([_LETTER[c] for c in code.upper()], float).T
    return np.diag([-1.0, -1.0, 1.0]) @ ras


def _output_grid(rng, assets: TemplateAssets, geometry: str) -> tuple[sitk.Image, dict]:
    if geometry == "template":
        return assets.reference, dict(orientation="RAS", spacing_mm=[assets.spacing] * 3)
    code = NATIVE_ORIENTATIONS[int(rng.integers(len(NATIVE_ORIENTATIONS)))]
    d = assets.spacing
    spacing, size = [], []
    for c in code:
        slab = "RL" if c in "RL" else "AP" if c in "AP" else "SI"
        sp = d * (1.2 if slab == "SI" else 1.0)
        spacing.append(sp)
        size.append(int(round(NATIVE_FOV_MM[slab] / sp)))
    direction = orientation_direction_lps(code)
    centre = assets.brain_center
    origin = centre - direction @ (np.array(spacing) * (np.array(size) - 1) / 2.0)
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetOrigin(origin.tolist())
    grid.SetDirection(direction.ravel().tolist())
    return grid, dict(orientation=code, spacing_mm=[round(s, 4) for s in spacing])


def _cosine_field(rng, shape, order: int, sd: float, n_components: int) -> list[np.ndarray]:
    """Smooth random fields over a grid: sums of low-order separable cosines (float32)."""
    bases = [np.cos(np.pi * np.outer(np.arange(order), (np.arange(n) + 0.5) / n)).astype(np.float32) for n in shape]
    damp = 1.0 / np.maximum(1.0, np.add.outer(np.add.outer(np.arange(order), np.arange(order)), np.arange(order)))
    out = []
    for _ in range(n_components):
        coef = (rng.normal(0, sd, (order,) * 3) * damp).astype(np.float32)
        coef[0, 0, 0] = 0
        out.append(np.einsum("ijk,ix,jy,kz->xyz", coef, *bases, optimize=True))
    return out


def _index_to_lps(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) with physical LPS point = A @ index + b."""
    d = np.array(img.GetDirection(), float).reshape(3, 3)
    return d @ np.diag(img.GetSpacing()), np.array(img.GetOrigin(), float)


def _mapping(rng_geo, rng_def, assets: TemplateAssets, grid: sitk.Image, geometry: str, deform_mm: float):
    """Template continuous indices (3 arrays on the output grid) of each output voxel, or None
    for the identity. Output point p -> p + smooth displacement (a few mm) -> rigid head motion
    (native only) -> template point."""
    meta: dict = {}
    a_out, b_out = _index_to_lps(grid)
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = a_out, b_out                      # output index -> output LPS
    rigid = np.eye(4)
    if geometry == "native":
        angles = np.clip(rng_geo.normal(0, 3.0, 3), -6, 6)
        trans = rng_geo.uniform(-5, 5, 3)
        eu = sitk.Euler3DTransform()
        eu.SetCenter(assets.brain_center.tolist())
        eu.SetRotation(*np.deg2rad(angles).tolist())
        eu.SetTranslation(trans.tolist())
        rigid[:3, :3] = np.array(eu.GetMatrix()).reshape(3, 3)
        rigid[:3, 3] = np.array(eu.TransformPoint((0.0, 0.0, 0.0)))
        meta["rigid"] = dict(angles_deg=[round(float(a), 3) for a in angles],
                             translation_mm=[round(float(t), 3) for t in trans],
                             center_lps_mm=[round(float(c), 3) for c in assets.brain_center])
    a_t, b_t = _index_to_lps(assets.reference)
    to_tidx = np.eye(4)
    to_tidx[:3, :3] = np.linalg.inv(a_t)
    to_tidx[:3, 3] = -np.linalg.inv(a_t) @ b_t
    lin = to_tidx @ rigid                                    # LPS point (after displacement) -> template index
    total = lin @ m                                          # output index -> template index (no displacement)
    shape = tuple(grid.GetSize())
    if deform_mm <= 0 and geometry == "template":
        return None, meta
    if deform_mm > 0:
        # smooth random field, scaled so that the largest displacement is exactly deform_mm
        disp = _cosine_field(rng_def, shape, 4, 1.0, 3)
        mag = np.sqrt(disp[0] ** 2 + disp[1] ** 2 + disp[2] ** 2)
        scale = np.float32(deform_mm / max(float(mag.max()), 1e-6))
        disp = [d * scale for d in disp]
    idx = [np.arange(n, dtype=np.float32) for n in shape]
    coords = []
    for k in range(3):
        c = (total[k, 0] * idx[0][:, None, None] + total[k, 1] * idx[1][None, :, None]
             + total[k, 2] * idx[2][None, None, :] + np.float32(total[k, 3]))
        for j in range(3):
            if deform_mm > 0:
                c = c + np.float32(lin[k, j]) * disp[j]
        coords.append(c.astype(np.float32, copy=False))
    if deform_mm > 0:
        meta["max_displacement_mm"] = float(deform_mm)
    return coords, meta


def _warp(stacked: np.ndarray, offset, coords, out_shape, support: np.ndarray) -> list[np.ndarray]:
    """Trilinear resampling (zero outside) of template-grid layers at the continuous template
    indices `coords`. `stacked` is (X, Y, Z, C): the C layers on the template grid, or on a box of
    it starting at voxel `offset`. Only output points whose nearest template voxel is in `support`
    (a full-grid mask covering, with a margin, everywhere the layers are non-zero) are computed."""
    n_ch = stacked.shape[-1]
    shape_b = np.array(stacked.shape[:3])
    inside = np.ones(out_shape, bool)
    pts_all = [coords[k] - np.float32(offset[k]) for k in range(3)]
    for k in range(3):
        inside &= (pts_all[k] >= 0) & (pts_all[k] < shape_b[k] - 1)
    sel = np.flatnonzero(inside)
    pts = [pts_all[k].ravel()[sel] for k in range(3)]
    del pts_all
    s_full = [int(np.prod(support.shape[k + 1:])) for k in range(3)]
    near = sum((np.rint(pts[k]).astype(np.int64) + int(offset[k])) * s_full[k] for k in range(3))
    keep = support.ravel()[near]
    sel = sel[keep]
    pts = [p[keep] for p in pts]
    # floor and floor + 1 are valid indices: points lie in [0, n - 1) along every axis
    strides = [int(np.prod(shape_b[k + 1:])) for k in range(3)]
    base = np.zeros(sel.size, np.int64)
    frac = []
    for k in range(3):
        f = np.floor(pts[k])
        frac.append((pts[k] - f).astype(np.float32))
        base += f.astype(np.int64) * strides[k]
    flat = stacked.reshape(-1, n_ch)
    acc = np.zeros((sel.size, n_ch), np.float32)
    for dx in (0, 1):
        wx = frac[0] if dx else 1 - frac[0]
        for dy in (0, 1):
            wxy = wx * (frac[1] if dy else 1 - frac[1])
            for dz in (0, 1):
                wxyz = wxy * (frac[2] if dz else 1 - frac[2])
                off = dx * strides[0] + dy * strides[1] + dz * strides[2]
                acc += flat[base + off] * wxyz[:, None]
    out = []
    for c in range(n_ch):
        o = np.zeros(int(np.prod(out_shape)), np.float32)
        o[sel] = acc[:, c]
        out.append(o.reshape(out_shape))
    return out


def _warp_layers(layers: list[np.ndarray], coords, out_shape, support, stacked=None) -> list[np.ndarray]:
    """_warp of full-grid layers, cropped to where they are non-zero (or pre-stacked)."""
    if coords is None:
        return [np.array(a, dtype=np.float32) for a in layers]
    if stacked is not None:
        return _warp(stacked, (0, 0, 0), coords, out_shape, support)
    nz = np.argwhere(np.any([a != 0 for a in layers], axis=0))
    if nz.size == 0:
        return [np.zeros(out_shape, np.float32) for _ in layers]
    lo = np.maximum(nz.min(0) - 1, 0)
    hi = np.minimum(nz.max(0) + 2, np.array(layers[0].shape))
    box = tuple(slice(low, h) for low, h in zip(lo, hi))
    st = np.stack([np.asarray(a[box], np.float32) for a in layers], axis=-1)
    return _warp(st, lo, coords, out_shape, support)


def draw_contrast(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per-subject tissue means. T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: GM > WM > CSF;
    lesions: hyperintense on FLAIR and T2, hypo- to isointense to WM on T1."""
    c = {}
    wm = 1000.0 * np.exp(rng.normal(0, 0.12))
    gm = wm * rng.uniform(0.60, 0.74)
    c["T1"] = dict(wm=wm, gm=gm, csf=wm * rng.uniform(0.18, 0.32), lesion=wm * rng.uniform(0.55, 0.9))
    csf = 1700.0 * np.exp(rng.normal(0, 0.12))
    gm = csf * rng.uniform(0.45, 0.58)
    c["T2"] = dict(csf=csf, gm=gm, wm=gm * rng.uniform(0.70, 0.85), lesion=gm + rng.uniform(0.45, 0.75) * (csf - gm))
    gm = 800.0 * np.exp(rng.normal(0, 0.12))
    c["FLAIR"] = dict(gm=gm, wm=gm * rng.uniform(0.72, 0.85), csf=gm * rng.uniform(0.10, 0.22),
                      lesion=gm * rng.uniform(1.45, 1.85))
    return {m: {k: round(float(v), 2) for k, v in d.items()} for m, d in c.items()}


def make_subject(seed: int, lesions: bool | np.ndarray | str | sitk.Image | None = False,
                 geometry: str = "native", *, downsample: int = 1, deform_mm: float = 4.0,
                 n_lesions: int | None = None, noise: float | None = None) -> Subject:
    """Synthesize one subject.

    lesions: False/None -> healthy; True -> synthetic MS-like lesions (3-15 unless `n_lesions`);
    an (x, y, z) array on the template grid, a SimpleITK image or a mask file in MNI space -> that
    real mask is pasted in. geometry: "native" (scanner-like: rigid motion, LPS/LAS/RAS voxel order,
    1 x 1 x 1.2 mm) or "template" (the MNI template grid, background exactly zero like preprocessed
    published data, so `preprocessed=True` finds the brain). downsample: coarser grid (tests).
    noise: Rician sigma as a fraction of the tissue mean (default: drawn in 1.5-3.5 %).
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    seed = int(seed)
    assets = load_template(downsample)
    rng_geo, rng_def, rng_con, rng_les, rng_noise = (_rng(seed, s) for s in _STREAMS)

    if lesions is None or lesions is False:
        layer: LesionLayer = empty_layer(assets)
    elif lesions is True:
        layer = synthetic_lesions(rng_les, assets, n_lesions)
    else:
        layer = mask_layer(rng_les, assets, lesions)
    has_lesions = layer.source != "none"

    grid, geo_meta = _output_grid(rng_geo, assets, geometry)
    coords, tr_meta = _mapping(rng_geo, rng_def, assets, grid, geometry, float(deform_mm))
    out_shape = tuple(grid.GetSize())
    w = dict(zip(["brain", "gm", "wm", "texture"],
                 _warp_layers([], coords, out_shape, assets.support, assets.stacked) if coords is not None
                 else _warp_layers([assets.brain, assets.gm, assets.wm, assets.texture], None, out_shape, None)))
    if has_lesions:
        w.update(zip(["occ", "lesion_w"], _warp_layers([layer.occupancy, layer.soft * layer.strength], coords,
                                                       out_shape, assets.support)))
    brain = np.clip(w["brain"], 0, 1)
    gm = np.clip(w["gm"], 0, 1)
    wm = np.clip(w["wm"], 0, 1)
    csf = np.clip(brain - gm - wm, 0, 1)
    texture = w["texture"]
    shape = brain.shape

    contrast = draw_contrast(rng_con)
    spacing = np.array(grid.GetSpacing())
    blur_sigma = 0.5 * assets.spacing / spacing
    noise_frac = float(rng_noise.uniform(0.015, 0.035)) if noise is None else float(noise)
    gt = (w["occ"] >= 0.5) if has_lesions else np.zeros(shape, bool)
    if has_lesions:
        lesion_w = np.clip(w["lesion_w"], 0, 1)
    images = {}
    for mod in MODALITIES:
        mu = contrast[mod]
        img = gm * mu["gm"] + wm * mu["wm"] + csf * mu["csf"]
        img += (0.8 * (mu["wm"] - mu["gm"])) * texture
        if has_lesions:
            img += lesion_w * (mu["lesion"] - img)
        img *= np.exp(_cosine_field(rng_noise, shape, 3, 0.12, 1)[0])
        img = ndimage.gaussian_filter(img, blur_sigma, truncate=3.0)
        sigma = noise_frac * 0.5 * (mu["gm"] + mu["wm"])
        n1 = rng_noise.standard_normal(shape, dtype=np.float32)
        n2 = rng_noise.standard_normal(shape, dtype=np.float32)
        img = np.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)
        if geometry == "template":
            # template geometry stands for preprocessed data (skull-stripped, registered, as the
            # published benchmarks ship it): background exactly zero so brain = non-zero voxels
            img[brain < 0.5] = 0
        images[mod] = sitk_from_xyz(np.clip(np.rint(img), 0, 32767).astype(np.int16), grid)
    mask_img = sitk_from_xyz(gt.astype(np.uint8), grid)
    tissues = {"GM": gm, "WM": wm, "CSF": csf}

    vox_ml = float(np.prod(spacing))
    n_les, vol = lesion_stats(gt, vox_ml)
    meta = dict(seed=seed, geometry=geometry, downsample=int(downsample), size=list(grid.GetSize()),
                **geo_meta, deform_mm=float(deform_mm), **tr_meta, contrast=contrast,
                noise_fraction=round(noise_frac, 4), lesion_source=layer.source,
                n_lesions=n_les, lesion_volume_ml=round(vol, 3), lesions=layer.info)
    return Subject(images=images, lesion_mask=mask_img, healthy=not has_lesions, meta=meta, tissues=tissues)
