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

from ..device import resolve_device
from ..errors import InputError
from ..networks.ppr_maps import (
    brain_bbox,
    coarse_map,
    exact_map,
    intensity_input,
    patch_map,
    refine_blocks,
    unit_affine,
)
from .base import Detector, MapOutput
from .params import Param


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
        return self.cached_model(device, self._build)

    @staticmethod
    def _build(state, card, device):
        from ..networks.ppr import build_ppr

        cfg = card.get("network", {})
        net = build_ppr(int(cfg.get("in_channels", 1)), int(cfg.get("width", 16)))
        net.load_state_dict(state)
        return net.eval().to(device)

    # -- detector API ---------------------------------------------------------------------------------
    def compute_map(self, case, params, progress):
        import torch


        t_begin = time.perf_counter()
        reg = getattr(case, "registration", {}) or {}
        if not reg.get("passed", True):
            raise InputError("ppr: the scan failed its registration to the MNI152 template "
                             f"({'; '.join(reg.get('failed_checks', [])) or reg}); position regression needs a "
                             "registered scan and would give a meaningless map")
        if getattr(case, "mode", "template-space") == "resampled":
            raise InputError("ppr: the scan was not registered to the template (register=False); "
                             "position regression needs template-space input")
        if not case.brain.any():
            raise InputError("ppr: the brain mask is empty")
        device = torch.device(resolve_device(params["device"]))
        net, card = self._model(device)
        mods = list(card.get("modalities", ["FLAIR"]))
        missing = [mm for mm in mods if mm not in case.arrays]
        if missing:
            raise InputError(f"images: the ppr weights were trained on {mods}; missing {missing}")
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
