"""Small synthetic volumes for unit and server tests (real data proves detectors elsewhere)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def brain_phantom(shape=(48, 56, 40), spacing=(1.0, 1.0, 1.0), seed=0, lesion=True,
                  direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)) -> tuple[sitk.Image, sitk.Image]:
    """(FLAIR-like image, lesion mask): an ellipsoid 'brain' with noise and one bright blob.
    Arrays are built (x, y, z) and written in SimpleITK's (z, y, x) order."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    brain = (grid ** 2).sum(0) < 0.8
    img = np.where(brain, 100 + 10 * rng.standard_normal(shape), 0).astype(np.float32)
    gt = np.zeros(shape, np.uint8)
    if lesion:
        c = np.array(shape) // 2 + np.array([3, -4, 2])
        r = ((np.indices(shape) - c[:, None, None, None]) ** 2).sum(0)
        gt[r <= 9] = 1
        img[gt > 0] = 190 + 5 * rng.standard_normal(int(gt.sum()))
    out = []
    for a in (img, gt):
        im = sitk.GetImageFromArray(np.ascontiguousarray(a.transpose(2, 1, 0)))
        im.SetSpacing(spacing)
        im.SetDirection(direction)
        im.SetOrigin((12.0, 30.0, -20.0))
        out.append(im)
    return out[0], out[1]
