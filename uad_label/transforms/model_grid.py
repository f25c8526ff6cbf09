"""PatchDDM's model grid: work volume -> the model's voxel size (area averaging) -> padded to the
U-Net's divisor; shared by the trainer and the detector."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def model_grid_shape(shape, spacing_mm: float, work_spacing=(1.0, 1.0, 1.0)) -> tuple[int, ...]:
    return tuple(max(1, int(round(n * s / spacing_mm))) for n, s in zip(shape, work_spacing))


def to_model_grid(array: np.ndarray, size) -> torch.Tensor:
    """(C, X, Y, Z) work array -> (C, *size) tensor by area averaging (identity when the size is kept)."""
    t = torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32)
    if tuple(t.shape[1:]) == tuple(size):
        return t
    return F.adaptive_avg_pool3d(t[None], tuple(size))[0]


def pad_to(t, divisor: int):
    """Zero-pad the spatial end of (C, X, Y, Z) to multiples of divisor; returns (padded, original size)."""
    size = tuple(t.shape[-3:])
    pads = [(-n) % divisor for n in size]
    return F.pad(t, (0, pads[2], 0, pads[1], 0, pads[0])), size
