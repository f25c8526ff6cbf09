"""PatchDDM segmenter (Bieder et al.): a denoising diffusion model that samples lesion masks
conditioned on FLAIR/T1/T2 and coordinate channels. An ensemble of N DDIM samples (eta 0) from
different noise gives the mean (the map; segmentation at 0.5) and the normalised variance (the
`uncertainty` extra map). Trained on approved labels (see uad_label.training.patchddm)."""
from __future__ import annotations

import time

import numpy as np
import SimpleITK as sitk

from ..device import resolve_device
from ..networks.patchddm_inference import ensemble_maps, network_call, tile_roi
from ..transforms.intensity import scale_modalities
from ..transforms.model_grid import model_grid_shape, pad_to, to_model_grid
from .base import Detector, MapOutput
from .params import Param

DEFAULT_THRESHOLD = 0.5


class PatchDDM(Detector):
    name = "patchddm"
    task_type = "segmentation"  # the Slicer module expects /info type "segmentation" for the segmenter
    description = ("PatchDDM segmenter (Bieder et al.): diffusion model trained on approved lesion labels; "
                   "ensemble of DDIM samples -> mean probability (map, segmentation at 0.5) and normalised "
                   "variance (extra map 'uncertainty'). Needs FLAIR, T1 and T2.")
    modalities = ("FLAIR", "T1", "T2")
    weights_name = "patchddm"
    params = (
        Param("steps", 20, int, "DDIM steps (eta 0); the thesis found 20 close to 1000", minimum=1, maximum=1000),
        Param("ensemble", 5, int, "samples from different noise; mean = probability, variance = uncertainty",
              minimum=1, maximum=64),
        Param("seed", 0, int, "noise seed of the ensemble (same seed, same result)", minimum=0),
        Param("remove_isolated", True, bool,
              "drop each sample's isolated foreground specks (components of at most isolated_voxels model voxels) "
              "that extreme noise produces"),
        Param("isolated_voxels", 2, int, "largest speck removed by remove_isolated (model-grid voxels)", minimum=0),
        Param("members_per_batch", 5, int, "ensemble members per network call (memory vs speed)", minimum=1,
              maximum=64),
        Param("tile", 0, int,
              "0: the whole volume in one network call (published; no stitching). N > 0: N^3 tiles of the model "
              "grid (a multiple of the network's divisor) blended with Gaussian weights, each cut from the whole "
              "volume's coordinate ramps, for GPUs that cannot hold the whole volume", minimum=0),
        Param("tile_overlap", 0.5, float, "overlap of neighbouring tiles (fraction of the tile)", minimum=0.0,
              maximum=0.9),
        Param("device", "auto", str, "cpu, cuda or auto"),
    )

    # ---------------------------------------------------------------- model
    def _model(self, device):
        return self.cached_model(device, self._build)

    @staticmethod
    def _build(state, card, device):
        import torch

        from ..networks.patchddm import build

        if "network" not in card:
            raise ValueError("patchddm weights: the model card lacks 'network' (retrain with `uad train patchddm`)")
        model = build(card["network"])
        model.load_state_dict(state)
        model = model.to(device).eval()
        if device.startswith("cuda"):
            model = model.to(memory_format=torch.channels_last_3d)
        return model

    # ---------------------------------------------------------------- map
    def compute_map(self, case, params, progress):
        import torch
        import torch.nn.functional as F

        from ..diffusion import DiffusionSchedule
        from ..networks.patchddm import coordinate_channels
        device = resolve_device(params["device"])
        cuda = device.startswith("cuda")
        model, card = self._model(device)
        mods = tuple(card.get("modalities", self.modalities))
        size = model_grid_shape(case.shape, float(card["spacing_mm"]), case.spacing)
        cond = torch.cat([to_model_grid(scale_modalities(case, mods), size), coordinate_channels(size)])
        cond, size = pad_to(cond, model.divisor)
        # coordinates continue linearly into the padding (the whole volume's ramps, not the padded one's)
        cond[len(mods):] = coordinate_channels(tuple(cond.shape[1:]), full=size)
        cond = cond.to(device)
        schedule = DiffusionSchedule(**card["schedule"])
        n, per = params["ensemble"], params["members_per_batch"]
        gen = torch.Generator(device=device).manual_seed(params["seed"])
        total_calls = params["steps"] * -(-n // per)
        done = [0]
        step_times = []

        def tick(i, m):
            done[0] += 1
            step_times.append(time.perf_counter())
            progress(done[0] / total_calls, f"DDIM step {done[0]} of {total_calls} ({n} samples)")

        roi = tile_roi(params["tile"], model.divisor, tuple(cond.shape[1:]))
        net = network_call(model, roi, params["tile_overlap"], cuda)

        samples = []
        t_sample = t_start = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, n, per):
                b = min(per, n - start)
                noise = torch.randn((b, 1, *cond.shape[1:]), generator=gen, device=device)
                c = cond[None].expand(b, *cond.shape).to(torch.bfloat16 if cuda else torch.float32)
                x0 = schedule.sample(net, c, params["steps"], noise=noise, callback=tick)
                samples.append(((x0[:, 0, :size[0], :size[1], :size[2]] + 1.0) * 0.5).clamp(0, 1).float())
        t_sample = time.perf_counter() - t_sample
        mean, unc, removed = ensemble_maps(torch.cat(samples), params["remove_isolated"], params["isolated_voxels"])
        maps = torch.stack([mean, unc])[None]
        if tuple(maps.shape[2:]) != tuple(case.shape):
            maps = F.interpolate(maps, size=tuple(case.shape), mode="trilinear", align_corners=False)
        maps = maps[0].cpu().numpy().astype(np.float32)
        maps[:, ~case.brain] = 0.0
        steps_s = np.diff([t_start] + step_times) if step_times else np.array([])
        info = {"steps": params["steps"], "ensemble": n, "model_spacing_mm": float(card["spacing_mm"]),
                "model_grid": list(size), "tile": list(roi) if roi else None, "device": device,
                "precision": "bf16" if cuda else "fp32",
                "isolated_voxels_removed": removed,
                "seconds_per_network_call": float(np.median(steps_s)) if len(steps_s) else None,
                "sampling_seconds": round(t_sample, 4), "weights_config": card.get("config")}
        return MapOutput(maps[0], info=info, extras={"uncertainty": maps[1]})

    def default_threshold(self, work_map, case, params):
        return DEFAULT_THRESHOLD, "default: 0.5 on the ensemble mean (majority of samples)"

    # ---------------------------------------------------------------- result with the uncertainty map
    def finalize(self, result, case, params):
        """Uncertainty summaries: over the brain, and per finding."""
        t = time.perf_counter()
        add_uncertainty_summary(result, result.extras["uncertainty"])
        info = result.info
        info["latencies"]["sampling"] = info["sampling_seconds"]
        info["latencies"]["uncertainty"] = round(time.perf_counter() - t, 4)


def add_uncertainty_summary(result, unc: sitk.Image) -> None:
    """The uncertainty map summarised into the result's info: over the brain (`mean_uncertainty`, what
    `most_uncertain` ranks by; `uncertain_volume_ml`) and per finding. Shared by the segmenters."""
    brain = sitk.GetArrayViewFromImage(result.brain) > 0
    u = sitk.GetArrayViewFromImage(unc)
    info = result.info
    info["mean_uncertainty"] = float(u[brain].mean()) if brain.any() else 0.0
    info["uncertain_volume_ml"] = float(u[brain].sum() * np.prod(unc.GetSpacing()) / 1000.0)
    add_component_uncertainty(info["components"], result.component_ids, u)


def add_component_uncertainty(rows: list[dict], component_ids: np.ndarray, unc: np.ndarray):
    """Add `mean_uncertainty` to each component row, over the voxels that hold the row's id in
    `component_ids` (the labelling uad_label.results.summarise made; same (k, j, i) order as `unc`)."""
    if not rows:
        return
    ids = component_ids.ravel()
    inside = ids > 0
    sums = np.bincount(ids[inside], weights=np.asarray(unc, np.float64).ravel()[inside], minlength=len(rows) + 1)
    counts = np.bincount(ids[inside], minlength=len(rows) + 1)
    for r in rows:
        r["mean_uncertainty"] = round(float(sums[r["id"]] / counts[r["id"]]), 6)
