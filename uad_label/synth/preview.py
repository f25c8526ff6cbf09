"""A PNG of axial and coronal slices of FLAIR/T1/T2 with the lesion outline (for docs and checks).

    python -m uad_label.synth.preview DIR CASE out.png     # a case of a datastore
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _ras(img: sitk.Image) -> np.ndarray:
    # SimpleITK orientation codes name the direction each index increases towards: "RAS" gives
    # the package's (x, y, z) RAS+ voxel order once transposed from (z, y, x)
    return np.transpose(sitk.GetArrayFromImage(sitk.DICOMOrient(img, "RAS")), (2, 1, 0))


def save_preview(images: dict[str, sitk.Image], lesion_mask: sitk.Image | None, path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mods = [m for m in ("FLAIR", "T1", "T2") if m in images] or list(images)
    arrays = {m: _ras(images[m]).astype(np.float32) for m in mods}
    first = sitk.DICOMOrient(images[mods[0]], "RAS")
    sp = first.GetSpacing()
    gt = _ras(lesion_mask) > 0 if lesion_mask is not None else np.zeros(arrays[mods[0]].shape, bool)
    shape = arrays[mods[0]].shape
    z = int(np.argmax(gt.sum((0, 1)))) if gt.any() else int(shape[2] * 0.55)
    y = int(np.argmax(gt.sum((0, 2)))) if gt.any() else int(shape[1] * 0.5)
    fig, ax = plt.subplots(2, len(mods), figsize=(3.6 * len(mods), 7.4), facecolor="black")
    ax = np.atleast_2d(ax).reshape(2, len(mods))
    for j, m in enumerate(mods):
        a = arrays[m]
        vmax = float(np.percentile(a[a > np.percentile(a, 50)], 99.5))
        for i, (sl, g, aspect) in enumerate([(a[:, :, z].T, gt[:, :, z].T, sp[1] / sp[0]),
                                              (a[:, y, :].T, gt[:, y, :].T, sp[2] / sp[0])]):
            ax[i, j].imshow(sl, origin="lower", cmap="gray", vmin=0, vmax=vmax, aspect=aspect, interpolation="nearest")
            if g.any():
                ax[i, j].contour(g, [0.5], colors="red", linewidths=0.7, origin="lower")
            ax[i, j].axis("off")
        ax[0, j].set_title(m, color="white")
    if title:
        fig.suptitle(title, color="white")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, facecolor="black")
    plt.close(fig)
    return path


def preview_case(datastore, case: str, path) -> Path:
    d = Path(datastore)
    images = {}
    for m in ("FLAIR", "T1", "T2"):
        p = d / f"{case}_{m}.nii.gz"
        if p.is_file():
            images[m] = sitk.ReadImage(str(p))
    if not images:
        raise ValueError(f"no images of case {case} in {d}")
    gt_path = d / "ground_truth" / f"{case}.nii.gz"
    gt = sitk.ReadImage(str(gt_path)) if gt_path.is_file() else None
    return save_preview(images, gt, path, title=f"{case}  (neurological view: right is right)")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(preview_case(sys.argv[1], sys.argv[2], sys.argv[3]))
