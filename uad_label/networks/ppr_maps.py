"""Dense patch-position-regression maps on tensors: the stride-1 map (fully convolutional), the
published patch-by-patch evaluation, the coarse-to-fine grid and its exact refinement.

Kept apart from the detector (which needs SimpleITK for its I/O) so that the GPU benchmark and
tests run on machines that hold only torch and numpy. See detectors/ppr.py and docs/ppr.md.
"""
from __future__ import annotations

import numpy as np

from uad_kernels import gather_patches

from ..transforms.intensity import equalise_in_brain

# Fixed template box (MNI152 2009 grid, voxel centres, RAS mm): positions are normalised over it,
# so the template grid (197x233x189) and the FSL MNI grid (182x218x182) give the same coordinate
# to the same anatomy.
BOX_LO = np.array([-98.0, -134.0, -72.0])
BOX_HI = np.array([98.0, 98.0, 116.0])
BOX_MM = BOX_HI - BOX_LO


def ras_to_unit(ras: np.ndarray) -> np.ndarray:
    return (np.asarray(ras, np.float64) - BOX_LO) / BOX_MM


def unit_affine(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, b) with unit position = M @ voxel + b for a work grid with RAS affine `affine`."""
    a = np.asarray(affine, np.float64)
    return a[:3, :3] / BOX_MM[:, None], (a[:3, 3] - BOX_LO) / BOX_MM


def intensity_input(case, modalities) -> np.ndarray:
    """(C, X, Y, Z) float32: each modality histogram-equalised inside the brain, zero outside."""
    return np.stack([equalise_in_brain(case.arrays[mod], case.brain) for mod in modalities])


# ------------------------------------------------------------------------------------------------
def _unit_on_axes(m, b, ax):
    """(3, len(ax[0]), len(ax[1]), len(ax[2])) true unit positions of the voxel grid spanned by the
    three 1-D float tensors of voxel indices `ax`."""
    import torch

    mt = torch.as_tensor(m, dtype=torch.float32, device=ax[0].device)
    bt = torch.as_tensor(b, dtype=torch.float32, device=ax[0].device)
    return (mt[:, 0, None, None, None] * ax[0][:, None, None] + mt[:, 1, None, None, None] * ax[1][None, :, None]
            + mt[:, 2, None, None, None] * ax[2][None, None, :] + bt[:, None, None, None])


def _true_unit(m, b, starts, sizes, device):
    """(3, sx, sy, sz) true unit positions of a box of voxels."""
    import torch

    return _unit_on_axes(m, b, [torch.arange(s0, s0 + n, device=device, dtype=torch.float32)
                                for s0, n in zip(starts, sizes)])


def _error_mm(pred, true):
    import torch

    scale = torch.as_tensor(BOX_MM, dtype=torch.float32, device=pred.device).view(3, *([1] * (pred.ndim - 1)))
    return torch.linalg.vector_norm((pred.float() - true) * scale, dim=0)


def _autocast(device):
    import contextlib

    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def exact_map(net, image, m, b, bbox, device, slab_voxels=2_000_000, method="stitch", progress=None):
    """Stride-1 error map (mm) over bbox ((x0,y0,z0),(x1,y1,z1)) of image (C, X, Y, Z) tensor,
    computed densely in x-slabs. Returns an (X, Y, Z) float32 tensor (zero outside bbox)."""
    import torch
    import torch.nn.functional as F

    from .ppr import HALO

    lo, hi = bbox
    size = [h - low for low, h in zip(lo, hi)]
    padded = F.pad(image, (HALO,) * 6)
    out = torch.zeros(image.shape[1:], dtype=torch.float32, device=device)
    slab = max(4, min(size[0], slab_voxels // max(1, size[1] * size[2])))
    for x0 in range(lo[0], hi[0], slab):
        x1 = min(x0 + slab, hi[0])
        inp = padded[None, :, x0:x1 + 2 * HALO, lo[1]:hi[1] + 2 * HALO, lo[2]:hi[2] + 2 * HALO]
        with torch.no_grad(), _autocast(device):
            pred = net.dense(inp, method)[0]
        true = _true_unit(m, b, (x0, lo[1], lo[2]), (x1 - x0, size[1], size[2]), device)
        out[x0:x1, lo[1]:hi[1], lo[2]:hi[2]] = _error_mm(pred, true)
        if progress:
            progress((x1 - lo[0]) / size[0], f"exact map: {x1 - lo[0]}/{size[0]} slices")
    return out


def patch_map(net, image, brain, m, b, device, chunk=None, progress=None):
    """The published evaluation: each brain voxel's 31^3 patch gathered (uad_kernels) in chunks,
    evaluated, its error written into the map. Same values as exact_map, much slower."""
    import torch

    from .ppr import PATCH

    chunk = chunk or (8192 if device.type == "cuda" else 64)
    centres = torch.nonzero(torch.as_tensor(brain, device=device))
    img = image.to(torch.bfloat16) if device.type == "cuda" else image
    mt = torch.as_tensor(m, dtype=torch.float32, device=device)
    bt = torch.as_tensor(b, dtype=torch.float32, device=device)
    out = torch.zeros(image.shape[1:], dtype=torch.float32, device=device)
    n = len(centres)
    for i in range(0, n, chunk):
        c = centres[i:i + chunk]
        patches = gather_patches(img, c, (PATCH,) * 3, padding="zero")
        with torch.no_grad(), _autocast(device):
            pred = net(patches)[:, :, 0, 0, 0]
        true = c.float() @ mt.T + bt
        err = _error_mm(pred.T, true.T)
        out[c[:, 0], c[:, 1], c[:, 2]] = err
        if progress and (i // chunk) % 50 == 0:
            progress(min(1.0, (i + chunk) / n), f"patches: {min(n, i + chunk)}/{n}")
    return out


def coarse_map(net, image, m, b, bbox, device, slab_voxels=8_000_000):
    """Error (mm) on the network's stride-4 grid over bbox (one strided pass per slab), trilinearly
    interpolated to every voxel of bbox. Returns an (X, Y, Z) float32 tensor."""
    import torch
    import torch.nn.functional as F

    from .ppr import HALO, STRIDE

    lo, hi = bbox
    size = [h - low for low, h in zip(lo, hi)]
    nodes = [(s - 1) // STRIDE + 2 if (s - 1) % STRIDE else (s - 1) // STRIDE + 1 for s in size]
    span = [STRIDE * (n - 1) + 1 for n in nodes]  # voxels covered by the node grid (>= size)
    extra = [sp - s for sp, s in zip(span, size)]
    padded = F.pad(image, (HALO, HALO + extra[2], HALO, HALO + extra[1], HALO, HALO + extra[0]))
    grid = torch.zeros(nodes, dtype=torch.float32, device=device)
    slab = max(1, min(nodes[0], slab_voxels // max(1, span[1] * span[2] * STRIDE)))
    for n0 in range(0, nodes[0], slab):
        n1 = min(n0 + slab, nodes[0])
        x0 = lo[0] + STRIDE * n0
        inp = padded[None, :, x0:x0 + STRIDE * (n1 - n0 - 1) + 2 * HALO + 1,
                     lo[1]:lo[1] + span[1] + 2 * HALO, lo[2]:lo[2] + span[2] + 2 * HALO]
        with torch.no_grad(), _autocast(device):
            pred = net(inp)[0]
        ax = [torch.arange(n, device=device, dtype=torch.float32) * STRIDE + s0
              for n, s0 in zip(pred.shape[1:], (x0, lo[1], lo[2]))]
        grid[n0:n1] = _error_mm(pred, _unit_on_axes(m, b, ax))
    fine = F.interpolate(grid[None, None], size=span, mode="trilinear", align_corners=True)[0, 0]
    out = torch.zeros(image.shape[1:], dtype=torch.float32, device=device)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = fine[:size[0], :size[1], :size[2]]
    return out


def refine_blocks(net, image, emap, select, m, b, device, block=16, batch=None, method="stitch"):
    """Recompute exactly (dense) every block x block x block tile of the map holding a selected
    voxel; returns the number of blocks."""
    import torch
    import torch.nn.functional as F

    from .ppr import HALO

    batch = batch or (64 if device.type == "cuda" else 4)
    shape = select.shape
    nb = [-(-s // block) for s in shape]
    sel = F.pad(select.float(), tuple(v for s, n in zip(reversed(shape), reversed(nb))
                                      for v in (0, n * block - s)))
    hit = sel.reshape(nb[0], block, nb[1], block, nb[2], block).amax(dim=(1, 3, 5)) > 0
    idx = torch.nonzero(hit) * block
    if not len(idx):
        return 0
    padded = F.pad(image, (HALO, HALO + nb[2] * block - shape[2], HALO, HALO + nb[1] * block - shape[1],
                           HALO, HALO + nb[0] * block - shape[0]))
    w = block + 2 * HALO
    for i in range(0, len(idx), batch):
        starts = idx[i:i + batch]
        inp = torch.stack([padded[:, s[0]:s[0] + w, s[1]:s[1] + w, s[2]:s[2] + w] for s in starts.tolist()])
        with torch.no_grad(), _autocast(device):
            pred = net.dense(inp, method)
        for s, p in zip(starts.tolist(), pred):
            e = [min(block, shape[k] - s[k]) for k in range(3)]
            true = _true_unit(m, b, s, e, device)
            emap[s[0]:s[0] + e[0], s[1]:s[1] + e[1], s[2]:s[2] + e[2]] = _error_mm(p[:, :e[0], :e[1], :e[2]], true)
    return len(idx)


def brain_bbox(brain: np.ndarray):
    idx = np.nonzero(brain.any(axis=(1, 2)))[0], np.nonzero(brain.any(axis=(0, 2)))[0], \
        np.nonzero(brain.any(axis=(0, 1)))[0]
    return tuple(int(i[0]) for i in idx), tuple(int(i[-1]) + 1 for i in idx)
