"""segresnet: the fast segmenter. MONAI's SegResNet on FLAIR with T1 and T2 when the case has them (a missing
modality is a channel of zeros; training drops T1/T2 at random so FLAIR alone works), on a 2 mm grid of the
template space the shared preprocessing brings every scan to. Trained on approved labels and pseudo-labels
of a slow, strong detector such as SAMSEG (uad_label.training.segresnet); deterministic: same input, same map.

The map is the sigmoid probability (segmentation at 0.5, or the calibration card's threshold); with `tta` > 0
the probability is the mean over the plain pass and `tta` flipped passes, whose normalised variance is the
`uncertainty` extra map (what `most_uncertain` ranks by). docs/segresnet.md has its training and its limits."""
from __future__ import annotations

import time

import numpy as np

from ..device import resolve_device
from ..errors import InputError
from ..networks.segresnet import TTA_FLIPS, divisor, predict
from ..transforms.intensity import scale_modalities
from ..transforms.model_grid import model_grid_shape, pad_to, to_model_grid
from .base import Detector, MapOutput
from .params import Param
from .patchddm import add_uncertainty_summary

DEFAULT_THRESHOLD = 0.5
CHANNELS = ("FLAIR", "T1", "T2")  # network input channels, in this order


def network_input(case, modalities=CHANNELS, spacing_mm: float = 2.0):
    """(C, X, Y, Z) float32 tensor on the model grid: each modality the case has scaled 0.5 -> 99.5 brain
    percentile to 0 -> 1 (0 outside the brain; transforms.intensity.scale_modalities), a missing one all
    zeros, averaged down to `spacing_mm` voxels. The one input of the trainer and the detector."""
    import torch

    if "FLAIR" not in case.arrays:
        raise InputError(f"images: segresnet needs a FLAIR, received {sorted(case.arrays)}")
    present = [m for m in modalities if m in case.arrays]
    scaled = dict(zip(present, scale_modalities(case, present)))
    zeros = np.zeros(case.shape, np.float32)
    x = np.stack([scaled.get(m, zeros) for m in modalities])
    size = model_grid_shape(case.shape, float(spacing_mm), case.spacing)
    return torch.as_tensor(to_model_grid(x, size))


class SegResNetSegmenter(Detector):
    name = "segresnet"
    task_type = "segmentation"  # clients show a label (and the uncertainty), not a heat map
    description = ("Fast segmenter: MONAI SegResNet on FLAIR (+ T1/T2 when present) at 2 mm in template space, "
                   "trained on approved labels and pseudo-labels of a slow detector (SAMSEG); sigmoid probability "
                   "(map, segmentation at 0.5) and, with tta > 0, the spread of flipped passes (extra map "
                   "'uncertainty'). Deterministic; seconds per case on a CPU.")
    modalities = ("FLAIR",)
    optional_modalities = ("T1", "T2")
    weights_name = "segresnet"
    params = (
        Param("tta", 3, int, "test-time augmentation: flipped passes besides the plain one (0: none and no "
              "uncertainty map); the map is their mean, the uncertainty their variance / 0.25",
              minimum=0, maximum=len(TTA_FLIPS)),
        Param("roi", 0, int, "0: the whole volume in one network call; N > 0: MONAI sliding-window inference "
              "with N^3 model-grid windows (a multiple of the network's divisor; for small GPUs)", minimum=0),
        Param("overlap", 0.25, float, "overlap of neighbouring windows (with roi > 0)", minimum=0.0, maximum=0.9),
        Param("sw_batch_size", 1, int, "windows per network call (with roi > 0)", minimum=1, maximum=64),
        Param("device", "auto", str, "cpu, cuda or auto"),
    )

    @staticmethod
    def _build(state, card, device):
        from ..networks.segresnet import build

        if "network" not in card or "spacing_mm" not in card:
            raise ValueError("segresnet weights: the model card lacks 'network' or 'spacing_mm' "
                             "(retrain with `uad train segresnet`)")
        model = build(card["network"])
        model.load_state_dict(state)
        return model.to(device).eval()

    def compute_map(self, case, params, progress):
        import torch
        import torch.nn.functional as F

        device = resolve_device(params["device"])
        model, card = self.cached_model(device, self._build)
        mods = tuple(card.get("modalities", CHANNELS))
        div = divisor(card["network"])
        roi = params["roi"]
        if roi % div:
            raise InputError(f"roi: expected 0 or a multiple of {div} (the network's divisor), received {roi}")
        x = network_input(case, mods, float(card["spacing_mm"]))
        size = tuple(x.shape[1:])
        if not roi:
            x, _ = pad_to(x, div)
        times = []
        t = time.perf_counter()

        def tick(i, n):
            times.append(time.perf_counter())
            progress(i / n, f"network pass {i} of {n}")

        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            prob, unc = predict(model, x[None].to(device), params["tta"], (roi,) * 3 if roi else None,
                                params["overlap"], params["sw_batch_size"], tick)
        maps = torch.stack([prob] + ([unc] if unc is not None else []))[:, :size[0], :size[1], :size[2]]
        if tuple(maps.shape[1:]) != tuple(case.shape):
            maps = F.interpolate(maps[None].float(), size=tuple(case.shape), mode="trilinear",
                                 align_corners=False)[0]
        maps = maps.clamp(0, 1).cpu().numpy().astype(np.float32)
        maps[:, ~case.brain] = 0.0
        passes = np.diff([t] + times)
        info = {"tta": params["tta"], "passes": len(passes), "model_spacing_mm": float(card["spacing_mm"]),
                "model_grid": list(size), "roi": [roi] * 3 if roi else None, "device": device,
                "channels": [m for m in mods if m in case.arrays], "network_channels": list(mods),
                "seconds_per_pass": round(float(np.median(passes)), 4) if len(passes) else None,
                "weights_config": card.get("config")}
        extras = {"uncertainty": maps[1]} if unc is not None else {}
        return MapOutput(maps[0], info=info, extras=extras)

    def default_threshold(self, work_map, case, params):
        return DEFAULT_THRESHOLD, "default: 0.5 on the sigmoid probability"

    def finalize(self, result, case, params):
        """With test-time augmentation: the uncertainty over the brain and per finding (as PatchDDM's)."""
        unc = result.extras.get("uncertainty")
        if unc is None:
            return
        add_uncertainty_summary(result, unc)
