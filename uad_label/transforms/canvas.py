"""The volume autoencoders' fixed-size network input and its inverse (hand-written: crop, zero pad and
average pooling in one step with an exact inverse, importable without MONAI)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Canvas:
    """A fixed-size network input: the region of `shape * factor` work voxels centred on the brain's
    bounding box, average-pooled by `factor`. `to_canvas` / `to_work` are each other's inverse up to
    the resampling (zero padding where the region leaves the volume)."""

    work_shape: tuple
    start: tuple  # region start in work voxels (may be negative)
    shape: tuple  # canvas shape (network resolution)
    factor: int

    @classmethod
    def around(cls, brain: np.ndarray, shape, factor: int) -> "Canvas":
        idx = np.nonzero(brain)
        lo = np.array([i.min() for i in idx])
        hi = np.array([i.max() + 1 for i in idx])
        centre = (lo + hi) // 2
        size = np.asarray(shape) * factor
        return cls(tuple(brain.shape), tuple(int(v) for v in centre - size // 2), tuple(int(s) for s in shape),
                   int(factor))

    def _slices(self):
        size = np.asarray(self.shape) * self.factor
        src, dst = [], []
        for s, n, w in zip(self.start, size, self.work_shape):
            a, b = max(s, 0), min(s + n, w)
            src.append(slice(a, b))
            dst.append(slice(a - s, b - s))
        return tuple(src), tuple(dst)

    def coverage(self, brain: np.ndarray) -> float:
        """Fraction of brain voxels inside the region."""
        src, _ = self._slices()
        return float(brain[src].sum() / max(brain.sum(), 1))

    def to_canvas(self, array: np.ndarray) -> torch.Tensor:
        """(X, Y, Z) work array -> (1, 1, *shape) float32 tensor."""
        size = tuple(int(s) for s in np.asarray(self.shape) * self.factor)
        region = np.zeros(size, np.float32)
        src, dst = self._slices()
        region[dst] = array[src]
        t = torch.from_numpy(region)[None, None]
        return F.avg_pool3d(t, self.factor) if self.factor > 1 else t

    def to_work(self, canvas: torch.Tensor) -> np.ndarray:
        """(…, *shape) tensor -> (X, Y, Z) float32 work array (trilinear upsampling by `factor`)."""
        t = canvas.reshape(1, 1, *self.shape).float()
        if self.factor > 1:
            t = F.interpolate(t, scale_factor=self.factor, mode="trilinear", align_corners=False)
        region = t[0, 0].cpu().numpy()
        out = np.zeros(self.work_shape, np.float32)
        src, dst = self._slices()
        out[src] = region[dst]
        return out
