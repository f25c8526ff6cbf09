"""Inpainting's slices: a (X, Y, Z) work volume <-> normalised, padded network slices and back."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .intensity import normalise_slices


class SliceMapper:
    """Cuts a (X, Y, Z) work volume into network slices along `axis` and puts slice maps back."""

    def __init__(self, shape, cfg, axis: int = 2):
        if len(shape) != 3:
            raise ValueError(f"volume: expected 3 dimensions (x, y, z), received shape {tuple(shape)}")
        self.shape = tuple(int(s) for s in shape)
        self.axis = axis
        self.cfg = cfg
        moved = [self.shape[a] for a in range(3) if a != axis] + [self.shape[axis]]
        self.moved = tuple(moved)
        s = cfg.scale
        self.down = tuple(max(1, math.ceil(n / s)) for n in moved)
        S = cfg.slice_size
        fit = min(1.0, S / max(self.down[0], self.down[1]))
        self.inplane = (max(1, int(round(self.down[0] * fit))), max(1, int(round(self.down[1] * fit))))
        self.pad0 = ((S - self.inplane[0]) // 2, (S - self.inplane[1]) // 2)

    def _to_moved(self, vol: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol, self.axis, -1), np.float32))

    def to_slices(self, vol: np.ndarray, brain: np.ndarray, device="cpu"):
        """(images (N, S, S) float32 normalised, brains (N, S, S) bool, slice indices (N,) of the
        downsampled stack that hold brain)."""
        cfg = self.cfg
        v = self._to_moved(np.where(brain, vol, 0)).to(device)
        b = self._to_moved(brain.astype(np.float32)).to(device)
        if self.down != self.moved:
            v = F.interpolate(v[None, None], size=self.down, mode="area")[0, 0]
            bb = F.interpolate(b[None, None], size=self.down, mode="area")[0, 0]
            v = v / bb.clamp_min(1e-6) * (bb > 0)  # mean over the brain part of each block
            b = bb >= 0.5
        else:
            b = b > 0
        v = v.permute(2, 0, 1)  # (Z', X', Y')
        b = b.permute(2, 0, 1)
        keep = torch.nonzero(b.flatten(1).any(1)).flatten()
        v, b = v[keep], b[keep]
        if self.inplane != tuple(self.down[:2]):
            v = F.interpolate(v[:, None], size=self.inplane, mode="bilinear", align_corners=False)[:, 0]
            b = F.interpolate(b[:, None].float(), size=self.inplane, mode="nearest")[:, 0] > 0
        v = normalise_slices(v, b, cfg.percentile, cfg.clip)
        S = cfg.slice_size
        img = torch.zeros((v.shape[0], S, S), dtype=torch.float32, device=device)
        msk = torch.zeros((v.shape[0], S, S), dtype=torch.bool, device=device)
        x0, y0 = self.pad0
        img[:, x0:x0 + self.inplane[0], y0:y0 + self.inplane[1]] = v
        msk[:, x0:x0 + self.inplane[0], y0:y0 + self.inplane[1]] = b
        return img, msk, keep

    def to_volume(self, maps: torch.Tensor, keep: torch.Tensor) -> np.ndarray:
        """(N, S, S) slice maps of the kept slices -> (X, Y, Z) float32 map in the work grid."""
        x0, y0 = self.pad0
        m = maps[:, x0:x0 + self.inplane[0], y0:y0 + self.inplane[1]].float()
        if self.inplane != tuple(self.down[:2]):
            m = F.interpolate(m[:, None], size=self.down[:2], mode="bilinear", align_corners=False)[:, 0]
        stack = torch.zeros((self.down[2], *self.down[:2]), dtype=torch.float32, device=m.device)
        stack[keep] = m
        stack = stack.permute(1, 2, 0)
        if self.down != self.moved:
            stack = F.interpolate(stack[None, None], size=self.moved, mode="trilinear", align_corners=False)[0, 0]
        return np.moveaxis(stack.cpu().numpy(), -1, self.axis).astype(np.float32)
