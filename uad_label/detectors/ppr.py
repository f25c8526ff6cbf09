"""Patch position regression (Bieder et al., MIDL 2022): a small 3D CNN trained on healthy,
template-registered volumes regresses where a 31^3 patch sits; the anomaly map is the distance
(mm) between each brain voxel's true template position and the position predicted from the patch
centred on it. See docs/ppr.md.

Inference modes (parameter ``mode``):

- ``exact``: the stride-1 map, computed fully convolutionally (networks.ppr.PPRNet.dense: shared
  computation between overlapping patches, identical to patch-by-patch evaluation) in slabs.
- ``patches``: the published way, every brain voxel's patch gathered on the device in chunks
  (uad_kernels.gather_patches) and run through the network; same map, far slower (reference).
- ``coarse``: coarse-to-fine. The network's own stride-4 grid (one strided pass), trilinear
  interpolation, then the top ``refine_fraction`` of brain voxels (by interpolated error) are
  recomputed exactly in blocks.
- ``auto`` (default): ``exact`` on CUDA, ``coarse`` on CPU.
"""
from __future__ import annotations

import time

import numpy as np

from .base import Detector, MapOutput
from .params import Param

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
    from skimage.exposure import cumulative_distribution

    brain = case.brain
    out = np.zeros((len(modalities), *brain.shape), np.float32)
    for c, mod in enumerate(modalities):
        vals = case.arrays[mod][brain]
        cdf, centres = cumulative_distribution(vals, 256)
        out[c][brain] = np.interp(vals, centres, cdf)
    return out


# ------------------------------------------------------------------------------------------------
def _true_unit(m, b, starts, sizes, device):
    """(3, sx, sy, sz) true unit positions of a box of voxels."""
    import torch

    ax = [torch.arange(s0, s0 + n, device=device, dtype=torch.float32) for s0, n in zip(starts, sizes)]
    mt = torch.as_tensor(m, dtype=torch.float32, device=device)
    bt = torch.as_tensor(b, dtype=torch.float32, device=device)
    return (mt[:, 0, None, None, None] * ax[0][:, None, None] + mt[:, 1, None, None, None] * ax[1][None, :, None]
            + mt[:, 2, None, None, None] * ax[2][None, None, :] + bt[:, None, None, None])


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

    from ..networks.ppr import HALO

    lo, hi = bbox
    size = [h - l for l, h in zip(lo, hi)]
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
    from uad_kernels import gather_patches

    from ..networks.ppr import PATCH

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

    from ..networks.ppr import HALO, STRIDE

    lo, hi = bbox
    size = [h - l for l, h in zip(lo, hi)]
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
        mt = torch.as_tensor(m, dtype=torch.float32, device=device)
        bt = torch.as_tensor(b, dtype=torch.float32, device=device)
        true = (mt[:, 0, None, None, None] * ax[0][:, None, None] + mt[:, 1, None, None, None] * ax[1][None, :, None]
                + mt[:, 2, None, None, None] * ax[2][None, None, :] + bt[:, None, None, None])
        grid[n0:n1] = _error_mm(pred, true)
    fine = F.interpolate(grid[None, None], size=span, mode="trilinear", align_corners=True)[0, 0]
    out = torch.zeros(image.shape[1:], dtype=torch.float32, device=device)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = fine[:size[0], :size[1], :size[2]]
    return out


def refine_blocks(net, image, emap, select, m, b, device, block=16, batch=None, method="stitch"):
    """Recompute exactly (dense) every block x block x block tile of the map holding a selected
    voxel; returns the number of blocks."""
    import torch
    import torch.nn.functional as F

    from ..networks.ppr import HALO

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


def hemisphere_scores(emap: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> dict:
    """Maximum (and mean) error inside each hemisphere: MNI x < 0 (left) / x > 0 (right)."""
    a = np.asarray(affine, np.float64)
    ix, iy, iz = np.meshgrid(*(np.arange(s) for s in brain.shape), indexing="ij", sparse=True)
    x_mm = a[0, 0] * ix + a[0, 1] * iy + a[0, 2] * iz + a[0, 3]
    out = {}
    for name, side in (("left_hemisphere", x_mm < 0), ("right_hemisphere", x_mm > 0)):
        sel = brain & side
        vals = emap[sel]
        out[name] = {"max_error_mm": round(float(vals.max()), 3) if vals.size else None,
                     "mean_error_mm": round(float(vals.mean()), 3) if vals.size else None,
                     "voxels": int(vals.size)}
    return out


# ------------------------------------------------------------------------------------------------
class PatchPositionRegression(Detector):
    name = "ppr"
    description = ("Patch position regression (Bieder et al. 2022): a small 3D CNN trained on healthy "
                   "template-registered scans predicts where each 31^3 patch sits; the anomaly map is the "
                   "distance (mm) between each voxel's true and predicted template position. Needs template "
                   "registration (raw input is registered; a failed registration is refused).")
    modalities = ("FLAIR",)
    optional_modalities = ("T1", "T2")
    weights_name = "ppr"
    params = (
        Param("mode", "auto", str, "exact: stride-1 map (dense, fully convolutional); coarse: stride-4 grid, "
              "interpolated, top refine_fraction refined exactly; patches: the published patch-by-patch "
              "evaluation (slow reference); auto: exact on GPU, coarse on CPU",
              choices=("auto", "exact", "coarse", "patches")),
        Param("refine_fraction", 0.02, float, "coarse mode: fraction of brain voxels (highest interpolated "
              "error) recomputed exactly", minimum=0.0, maximum=1.0),
        Param("refine_block", 16, int, "coarse mode: edge of the exactly recomputed blocks (voxels)",
              minimum=4, maximum=64),
        Param("device", "auto", str, "cpu, cuda or auto", choices=("auto", "cpu", "cuda")),
    )

    # -- model ------------------------------------------------------------------------------------
    def _model(self, device):
        import torch

        from ..networks.ppr import build_ppr

        state, card = self.load_weights()
        key = (id(state), str(device))
        cached = getattr(self, "_net_cache", None)
        if cached is None or cached[0] != key:
            cfg = card.get("network", {})
            net = build_ppr(int(cfg.get("in_channels", 1)), int(cfg.get("width", 16)))
            net.load_state_dict(state)
            net.eval().to(device)
            self._net_cache = (key, net, card)
        return self._net_cache[1], self._net_cache[2]

    # -- detector API ---------------------------------------------------------------------------------
    def compute_map(self, case, params, progress):
        import torch

        from ..training import resolve_device

        t_begin = time.perf_counter()
        reg = getattr(case, "registration", {}) or {}
        if not reg.get("passed", True):
            raise ValueError("ppr: the scan failed its registration to the MNI152 template "
                             f"({'; '.join(reg.get('failed_checks', [])) or reg}); position regression needs a "
                             "registered scan and would give a meaningless map")
        if getattr(case, "mode", "template-space") == "resampled":
            raise ValueError("ppr: the scan was not registered to the template (register=False); "
                             "position regression needs template-space input")
        if not case.brain.any():
            raise ValueError("ppr: the brain mask is empty")
        device = torch.device(resolve_device(params["device"]))
        net, card = self._model(device)
        mods = list(card.get("modalities", ["FLAIR"]))
        missing = [mm for mm in mods if mm not in case.arrays]
        if missing:
            raise ValueError(f"images: the ppr weights were trained on {mods}; missing {missing}")
        mode = params["mode"]
        if mode == "auto":
            mode = "exact" if device.type == "cuda" else "coarse"
        t0 = time.perf_counter()
        image = torch.from_numpy(intensity_input(case, mods)).to(device)
        t_input = time.perf_counter() - t0
        m, b = unit_affine(case.affine)
        bbox = brain_bbox(case.brain)
        brain_t = torch.from_numpy(case.brain).to(device)
        stats = {"mode": mode, "device": str(device), "model_seconds": round(t0 - t_begin, 3),
                 "input_seconds": round(t_input, 3)}
        if mode == "exact":
            emap = exact_map(net, image, m, b, bbox, device, progress=progress,
                             slab_voxels=32_000_000 if device.type == "cuda" else 2_000_000)
        elif mode == "patches":
            emap = patch_map(net, image, case.brain, m, b, device, progress=progress)
        else:
            progress(0.1, "coarse map (stride 4)")
            emap = coarse_map(net, image, m, b, bbox, device)
            stats["coarse_seconds"] = round(time.perf_counter() - t0, 3)
            frac = params["refine_fraction"]
            if frac > 0:
                vals = emap[brain_t]
                k = max(1, int(round(frac * vals.numel())))
                level = torch.topk(vals, k).values[-1]
                select = brain_t & (emap >= level)
                progress(0.5, "refining the highest errors")
                stats["refined_blocks"] = refine_blocks(net, image, emap, select, m, b, device,
                                                        block=params["refine_block"])
                stats["refine_level_mm"] = round(float(level), 3)
        emap = torch.where(brain_t, emap, torch.zeros((), device=device))
        stats["map_seconds"] = round(time.perf_counter() - t0, 3)
        out = emap.cpu().numpy().astype(np.float32)
        t1 = time.perf_counter()
        regions = hemisphere_scores(out, case.brain, case.affine)
        stats["regions_seconds"] = round(time.perf_counter() - t1, 3)
        return MapOutput(out, info={"ppr": stats, "region_scores": regions})

    def default_threshold(self, work_map, case, params):
        _, card = self.load_weights()
        q = (card.get("healthy_error_mm") or {}).get("q99.9")
        if q is not None:
            return float(q), f"default: 99.9th percentile of the error on held-out healthy brain voxels ({q:.2f} mm)"
        v = float(np.percentile(work_map[case.brain], 99.0))
        return v, "default: 99th percentile of this scan's brain errors (the model card has no healthy quantile)"
