"""3D residual autoencoder of Oliinyk et al.: MSE-trained on healthy FLAIR volumes; the map is
|input - reconstruction| (optionally minus the mean residual of healthy references, as their
evaluation did); the per-slice scores of the result use their formula (uad_label.results); the
most anomalous slices can be exported as PNGs with the map overlaid (`export_slices`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .params import Param
from .recon_base import RECON_PARAMS, VolumeReconDetector

AE3D_PARAMS = tuple(Param(p.name, "none", p.type, p.help, choices=p.choices) if p.name == "filter" else p
                    for p in RECON_PARAMS)


class AE3D(VolumeReconDetector):
    name = "ae3d"
    weights_name = "ae3d"
    network_module = "uad_label.networks.ae3d"
    description = ("Oliinyk et al. 3D residual autoencoder: MSE-trained on healthy FLAIR volumes; voxel map "
                   "|input - reconstruction| (optionally minus the healthy mean residual); per-slice scores.")
    params = AE3D_PARAMS


def export_slices(result, image, out_dir, n: int = 5, prefix: str = "slice") -> list[Path]:
    """PNGs of the `n` most anomalous axial slices (by the result's per-slice scores): the scan in grey
    with the anomaly map overlaid (map values below the threshold transparent) and the mask outlined.
    `image` is the scan the result belongs to (SimpleITK image or path); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    from ..io import load_image
    from ..preprocess.geometry import image_to_xyz

    img = image if isinstance(image, sitk.Image) else load_image(image)
    vol = image_to_xyz(img)
    amap = image_to_xyz(result.anomaly_map)
    mask = image_to_xyz(result.mask) > 0
    if vol.shape != amap.shape:
        raise ValueError(f"image: expected the grid of the result {amap.shape}, received {vol.shape}")
    scores = result.info["slice_scores"]
    axis = int(scores["axis"])
    values = np.asarray(scores["values"], float)
    order = [int(i) for i in np.argsort(-values)[:n] if values[i] > 0] or [int(np.argmax(amap.sum(axis=tuple(
        a for a in range(3) if a != axis))))]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    thr = float(result.info["threshold"])
    lo, hi = np.percentile(vol[vol > 0], [1, 99]) if (vol > 0).any() else (0, 1)
    files = []
    for rank, k in enumerate(order):
        take = lambda a: np.take(a, k, axis=axis).T  # noqa: E731  (rows = second axis, for display)
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        ax.imshow(take(vol), cmap="gray", vmin=lo, vmax=hi, origin="lower")
        ax.imshow(np.ma.masked_less(take(amap), thr), cmap="hot", alpha=0.6, origin="lower")
        if take(mask).any():
            ax.contour(take(mask), levels=[0.5], colors="cyan", linewidths=0.8, origin="lower")
        ax.set_title(f"slice {k} (axis {axis}): score {values[k]:.4g}", fontsize=8)
        ax.axis("off")
        path = out / f"{prefix}_{rank:02d}_k{k:03d}.png"
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        files.append(path)
    return files
