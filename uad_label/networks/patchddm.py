"""PatchDDM's 3D U-Net (Bieder et al.): no attention, averaging skip connections ((skip + up) / 2),
GroupNorm + SiLU residual blocks with a sinusoidal time embedding, epsilon output.

Published size: base 29 channels, multipliers (1, 3, 4, 4, 4, 4, 4), 2 residual blocks per level.
Written in plain torch, not with monai.networks.nets.DiffusionModelUNet: MONAI's U-Net concatenates
its skips (no averaging option) and the GPU benchmark machine has no MONAI.

Inference memory: GroupNorm runs in the activations' dtype (bf16 under autocast; the kernels
accumulate statistics in fp32) instead of autocast's fp32 copy, SiLU is in place, and the encoder
keeps one skip per level; `checkpoint=True` recomputes blocks in the backward pass (training).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

PUBLISHED = {"base_channels": 29, "channel_mult": (1, 3, 4, 4, 4, 4, 4), "num_res_blocks": 2}


def norm_groups(channels: int, max_groups: int = 32) -> int:
    """The largest divisor of `channels` not above max_groups (29 channels -> 29 groups)."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (guided-diffusion / MONAI get_timestep_embedding: cos then sin)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class NormAct(nn.GroupNorm):
    """GroupNorm then SiLU, computed in the input's dtype (no fp32 copy of a 256^3 activation)."""

    def forward(self, x):
        with torch.autocast(device_type=x.device.type, enabled=False):
            w = self.weight.to(x.dtype)
            b = self.bias.to(x.dtype)
            return F.silu(F.group_norm(x, self.num_groups, w, b, self.eps), inplace=True)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = NormAct(norm_groups(cin), cin)
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = NormAct(norm_groups(cout), cout)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(self.norm1(x))
        h = h + self.emb(emb).to(h.dtype)[(...,) + (None,) * 3]
        h = self.conv2(self.drop(self.norm2(h)))
        return self.skip(x) + h


class PatchDDMUNet(nn.Module):
    """model(x (B, in_channels, X, Y, Z), t (B,)) -> eps (B, out_channels, X, Y, Z).
    Every spatial size must be divisible by 2 ** (len(channel_mult) - 1)."""

    def __init__(self, in_channels: int = 7, out_channels: int = 1, base_channels: int = 29,
                 channel_mult=(1, 3, 4, 4, 4, 4, 4), num_res_blocks: int = 2, dropout: float = 0.0,
                 checkpoint: bool = False):
        super().__init__()
        self.config = {"in_channels": in_channels, "out_channels": out_channels, "base_channels": base_channels,
                       "channel_mult": tuple(channel_mult), "num_res_blocks": num_res_blocks, "dropout": dropout}
        self.checkpoint = checkpoint
        chs = [base_channels * m for m in channel_mult]
        self.base = base_channels
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Conv3d(in_channels, chs[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        prev = chs[0]
        for i, c in enumerate(chs):
            self.down_blocks.append(nn.ModuleList(
                [ResBlock(prev if j == 0 else c, c, emb_dim, dropout) for j in range(num_res_blocks)]))
            prev = c
            if i < len(chs) - 1:
                self.downsamples.append(nn.Conv3d(c, c, 3, stride=2, padding=1))
        self.mid = nn.ModuleList([ResBlock(chs[-1], chs[-1], emb_dim, dropout) for _ in range(2)])
        self.upsamples = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(len(chs))):
            if i < len(chs) - 1:
                self.upsamples.append(nn.Conv3d(chs[i + 1], chs[i], 3, padding=1))
            self.up_blocks.append(nn.ModuleList([ResBlock(chs[i], chs[i], emb_dim, dropout)
                                                 for _ in range(num_res_blocks)]))
        self.out_norm = NormAct(norm_groups(chs[0]), chs[0])
        self.out = nn.Conv3d(chs[0], out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.config["channel_mult"]) - 1)

    def _block(self, block, h, emb):
        if self.checkpoint and self.training and torch.is_grad_enabled():
            return _checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(f"PatchDDMUNet: expected input (B, {self.config['in_channels']}, X, Y, Z), "
                             f"received {tuple(x.shape)}")
        bad = [s for s in x.shape[2:] if s % self.divisor]
        if bad:
            raise ValueError(f"PatchDDMUNet: spatial sizes must be divisible by {self.divisor}, "
                             f"received {tuple(x.shape[2:])}")
        emb = self.time_mlp(timestep_embedding(t, self.base).to(x.device))
        h = self.inp(x)
        skips = []
        for i, blocks in enumerate(self.down_blocks):
            for b in blocks:
                h = self._block(b, h, emb)
            skips.append(h)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)
        for b in self.mid:
            h = self._block(b, h, emb)
        for k, blocks in enumerate(self.up_blocks):
            if k > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
                h = self.upsamples[k - 1](h)
            h = (skips.pop() + h) * 0.5  # averaging skip connection
            for b in blocks:
                h = self._block(b, h, emb)
        return self.out(self.out_norm(h))


def build(config: dict, checkpoint: bool = False) -> PatchDDMUNet:
    cfg = dict(config)
    cfg["channel_mult"] = tuple(cfg["channel_mult"])
    return PatchDDMUNet(**cfg, checkpoint=checkpoint)


def coordinate_channels(shape, start=(0, 0, 0), full=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """(3, *shape) linear ramps from -1 to 1 over the whole volume of size `full` (default `shape`),
    evaluated at voxels start + arange(shape): a crop or a padded volume keeps the whole volume's
    coordinates (values outside [-1, 1] past the volume's ends)."""
    full = tuple(full or shape)
    ramps = []
    for n, s, f in zip(shape, start, full):
        ramps.append(-1.0 + 2.0 * (torch.arange(n, device=device, dtype=torch.float64) + s) / max(f - 1, 1))
    grids = torch.meshgrid(*ramps, indexing="ij")
    return torch.stack(grids).to(dtype)
