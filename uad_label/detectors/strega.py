"""StRegA (Chatterjee et al.): the scan is simplified into a tissue segmentation (background, CSF,
GM, WM; uad_label.tissue, EM + MRF in place of FSL FAST), a compact context-encoding VAE
reconstructs each axial slice deterministically (latent mean), the residual input - reconstruction
keeps its positive part, is thresholded with Otsu per slice (or per volume) and cleaned with a
morphological area opening (256 px at 1 mm by default).

The returned map is the residual divided by its Otsu threshold, so the default threshold 1.0
reproduces the published mask exactly; voxels removed by the area opening are capped just below
1.0 (still ranked, no longer flagged at the default)."""
from __future__ import annotations

import numpy as np
import torch

from uad_kernels import error_map, otsu_threshold, remove_small_components

from ..device import resolve_device
from ..transforms.canvas import Canvas
from ..transforms.intensity import median_normalise
from .params import Param
from .recon_base import VolumeReconDetector

BELOW = 0.999  # cap of the voxels the area opening removed

STREGA_PARAMS = (
    Param("otsu", "slice", str, "Otsu threshold per axial slice (published) or per volume",
          choices=("slice", "volume")),
    Param("area_opening_px", 256, int, "area opening: 2D components of fewer pixels (at 1 mm) are removed",
          minimum=0, maximum=100000),
    Param("tissue_beta", 0.5, float, "strength of the MRF prior of the tissue segmentation", minimum=0, maximum=5),
    Param("device", "auto", str, "where the network runs (auto = CUDA when available)",
          choices=("auto", "cpu", "cuda")),
)


def tissue_input(volume: np.ndarray, brain: np.ndarray, modality: str, beta: float = 0.5, check: bool = True):
    """Network input: the tissue classes in the modality's intensity order, scaled to 0 .. 1
    (background 0, darkest class 1/3, brightest 1), as FAST's intensity-ordered labels are."""
    from ..tissue import check_contrast, segment_tissues

    seg = segment_tissues(volume, brain, modality, beta=beta)
    if check:
        check_contrast(seg, modality)
    return seg.ranks.astype(np.float32) / 3.0, seg


def canvas_tissue_input(volume: np.ndarray, brain: np.ndarray, cv: Canvas, modality: str, beta: float = 0.5,
                        check: bool = True):
    """(input (X, Y, Z) tensor, brain (X, Y, Z) bool tensor, segmentation) on the network canvas: the
    normalised scan is brought to the canvas (downsampled by its factor) and segmented there."""
    vol = cv.to_canvas(median_normalise(volume, brain))[0, 0]
    bt = cv.to_canvas(brain.astype(np.float32))[0, 0] > 0.5
    x, seg = tissue_input(vol.numpy(), bt.numpy(), modality, beta, check)
    return torch.from_numpy(x), bt, seg


class StRegA(VolumeReconDetector):
    name = "strega"
    weights_name = "strega"
    network_module = "uad_label.networks.strega"
    description = ("StRegA (Chatterjee et al.): tissue segmentation (EM + MRF), compact ceVAE on axial slices, "
                   "positive residual, Otsu per slice, area opening; map = residual / Otsu threshold.")
    modalities = ("T2",)
    params = STREGA_PARAMS

    @torch.no_grad()
    def compute_map(self, case, params, progress):

        device = resolve_device(params["device"])
        net, card = self.model(device)
        mod = self.check_modality(case, card)
        progress(0.05, "tissue segmentation")
        cv = Canvas.around(case.brain, card["canvas"], card["factor"])
        xt, bt, _ = canvas_tissue_input(case.arrays[mod], case.brain, cv, mod, params["tissue_beta"])
        progress(0.5, "reconstructing slices")
        slices = [k for k in range(xt.shape[2]) if bt[:, :, k].any()]
        recon = torch.zeros_like(xt)
        batch = 64
        for i in range(0, len(slices), batch):
            ks = slices[i:i + batch]
            inp = xt[:, :, ks].permute(2, 0, 1)[:, None].to(device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")):
                rec, _, _ = net(inp, sample=False)
            recon[:, :, ks] = rec.float()[:, 0].permute(1, 2, 0).cpu()
        progress(0.8, "residual, Otsu, area opening")
        res = error_map(xt[None].to(device), recon[None].to(device), mode="positive",
                        brain_mask=bt.to(device)).map[0]
        area = max(1, int(round(params["area_opening_px"] / card["factor"] ** 2)))
        out = torch.zeros_like(res)
        if params["otsu"] == "volume":
            thresholds = {k: otsu_threshold(res, mask=bt.to(device)) for k in slices}
        else:
            thresholds = {k: otsu_threshold(res[:, :, k], mask=bt[:, :, k].to(device))
                          for k in slices if int(bt[:, :, k].sum()) >= 10}
        for k, t in thresholds.items():
            if not np.isfinite(t) or t <= 0:
                continue
            sl = res[:, :, k] / t
            mask = sl > 1.0
            if params["area_opening_px"] > 0 and bool(mask.any()):
                kept = remove_small_components(mask, area, connectivity=2)
                sl = torch.where(mask & ~kept, sl.clamp_max(BELOW), sl)
            out[:, :, k] = sl
        work = cv.to_work(out)
        work[~case.brain] = 0.0
        return work

    def default_threshold(self, work_map, case, params):
        return 1.0, (f"default: 1.0 = the Otsu threshold of the residual ({params['otsu']}), after an area opening "
                     f"of {params['area_opening_px']} px")
