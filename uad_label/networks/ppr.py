"""Patch position regression network (Bieder et al., 'Position regression for unsupervised anomaly
detection', MIDL 2022): a 31^3 patch in, the normalised (x, y, z) position of its centre out.

The published layer figure is lost; this design keeps its spirit (classification-style 3D CNN,
spectrally normalised convolutions, average-pool downsampling, residual blocks, width m) and adds
one property: every convolution is *valid* (no padding), so the network is a function of exactly
the 31^3 voxels of its patch and can be evaluated densely without changing a single output:

    layer                 patch size       channels   dense (a trous) dilation
    stem conv 4^3          31 -> 28        C -> m        1
    residual block (2x3^3) 28 -> 24        m             1
    avg pool 2             24 -> 12                      (stride 1, dilation 1)
    conv 1^3               12              m -> 2m       2
    residual block (2x3^3) 12 ->  8        2m            2
    avg pool 2              8 ->  4                      (stride 1, dilation 2)
    head conv 4^3           4 ->  1        2m -> 4m      4   (= flatten + linear of a classifier, no SN)
    linear, linear (1^3)    1              4m -> 4m -> 3

Residual blocks are pre-activation (LeakyReLU) with the skip centre-cropped by 2 voxels. Patch
mode (`forward`) on an input larger than 31 gives the patch outputs on a stride-4 grid (shared
computation, used for training crops and the coarse map); `dense` gives every stride-1 output
(pooling stride 1, later layers dilated: the 'a trous' rewrite), identical to evaluating the
network on each patch. Written by hand: MONAI's residual units pad their convolutions, which
would make a patch's output depend on the zeros around it instead of its neighbours.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

PATCH = 31  # patch edge (voxels)
HALO = PATCH // 2  # voxels of context on each side of the centre
STRIDE = 4  # output stride of patch mode on a larger input (product of the pooling strides)


class _SNConv(nn.Module):
    """Spectrally normalised valid 3D convolution that can run dilated (dense mode)."""

    def __init__(self, cin: int, cout: int, k: int, sn: bool = True):
        super().__init__()
        conv = nn.Conv3d(cin, cout, k)
        self.conv = spectral_norm(conv) if sn else conv

    def forward(self, x: torch.Tensor, dilation: int = 1) -> torch.Tensor:
        return F.conv3d(x, self.conv.weight, self.conv.bias, dilation=dilation)


class _ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.c1 = _SNConv(ch, ch, 3)
        self.c2 = _SNConv(ch, ch, 3)

    def forward(self, x: torch.Tensor, d: int = 1) -> torch.Tensor:
        h = self.c1(F.leaky_relu(x, 0.2), d)
        h = self.c2(F.leaky_relu(h, 0.2), d)
        c = 2 * d
        return x[..., c:-c, c:-c, c:-c] + h


def _pool(x: torch.Tensor, dense: bool, d: int) -> torch.Tensor:
    if not dense:
        return F.avg_pool3d(x, 2)
    # 2^3 average with stride 1 and dilation d: the mean of 8 shifted views
    n = [s - d for s in x.shape[-3:]]
    out = None
    for i in (0, d):
        for j in (0, d):
            for k in (0, d):
                v = x[..., i:i + n[0], j:j + n[1], k:k + n[2]]
                out = v.clone() if out is None else out.add_(v)
    return out.mul_(0.125)


class PPRNet(nn.Module):
    """Position regressor. forward: (N, C, 31+4k, ...) -> (N, 3, k+1, ...) (k = 0: one patch);
    dense: (N, C, X+30, Y+30, Z+30) -> (N, 3, X, Y, Z), one output per voxel."""

    def __init__(self, in_channels: int = 1, width: int = 16):
        super().__init__()
        m = int(width)
        self.in_channels, self.width = int(in_channels), m
        self.stem = _SNConv(in_channels, m, 4)
        self.res1 = _ResBlock(m)
        self.expand = _SNConv(m, 2 * m, 1)
        self.res2 = _ResBlock(2 * m)
        self.head = _SNConv(2 * m, 4 * m, 4, sn=False)  # the classifier's linear part: not normalised
        self.fc1 = nn.Conv3d(4 * m, 4 * m, 1)
        self.fc2 = nn.Conv3d(4 * m, 3, 1)

    def _run(self, x: torch.Tensor, dense: bool) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"PPRNet: expected input (N, {self.in_channels}, X, Y, Z), received {tuple(x.shape)}")
        if min(x.shape[-3:]) < PATCH:
            raise ValueError(f"PPRNet: expected spatial sizes >= {PATCH}, received {tuple(x.shape[-3:])}")
        d = 1
        h = self.stem(x, d)
        h = self.res1(h, d)
        h = _pool(h, dense, d)
        d = 2 if dense else 1
        h = self.expand(h, d)
        h = self.res2(h, d)
        h = _pool(h, dense, d)
        d = 4 if dense else 1
        h = self.head(F.leaky_relu(h, 0.2), d)
        h = self.fc1(F.leaky_relu(h, 0.2))
        return self.fc2(F.leaky_relu(h, 0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, dense=False)

    def dense(self, x: torch.Tensor, method: str = "stitch") -> torch.Tensor:
        """Every stride-1 output: (N, C, X+30, Y+30, Z+30) -> (N, 3, X, Y, Z).

        method "stitch" (default): shift-and-stitch, i.e. the stride-2 pools are taken at both
        offsets per axis and the offsets move into the batch (8 after the first pool, 64 after
        the second), so every convolution is a plain undilated one (the fastest kernels on CPU
        and GPU); the outputs are interleaved at the end. "dilated": the a trous rewrite
        (stride-1 pools, dilated convolutions). Both equal patch-by-patch evaluation."""
        if method == "dilated":
            return self._run(x, dense=True)
        if method != "stitch":
            raise ValueError(f"dense: method must be 'stitch' or 'dilated', received {method!r}")
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"PPRNet: expected input (N, {self.in_channels}, X, Y, Z), received {tuple(x.shape)}")
        out = [s - 2 * HALO for s in x.shape[-3:]]
        if min(out) < 1:
            raise ValueError(f"PPRNet.dense: expected spatial sizes >= {PATCH}, received {tuple(x.shape[-3:])}")
        q = [-(-o // STRIDE) for o in out]  # outputs per phase and axis
        pad = [STRIDE * qi - o for qi, o in zip(q, out)]
        if any(pad):
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
        n = x.shape[0]
        h = self.res1(self.stem(x))
        h = self._phases(h, [2 * qi + 11 for qi in q])  # (8N, m, 2q+11, ...)
        h = self.res2(self.expand(h))
        h = self._phases(h, [qi + 3 for qi in q])  # (64N, 2m, q+3, ...)
        h = self.head(F.leaky_relu(h, 0.2))
        h = self.fc2(F.leaky_relu(self.fc1(F.leaky_relu(h, 0.2)), 0.2))  # (64N, 3, qx, qy, qz)
        # batch order (b0, b1, b2, a0, a1, a2, n); output index per axis = 4 i + 2 b + a
        h = h.reshape(2, 2, 2, 2, 2, 2, n, 3, *q)
        h = h.permute(6, 7, 8, 0, 3, 9, 1, 4, 10, 2, 5).reshape(n, 3, *(STRIDE * qi for qi in q))
        return h[..., :out[0], :out[1], :out[2]]

    @staticmethod
    def _phases(h: torch.Tensor, size) -> torch.Tensor:
        """2^3 average pools at offsets (a0, a1, a2) in {0, 1}^3, cropped to `size`, stacked
        into the batch (offset-major)."""
        views = []
        for a0 in (0, 1):
            for a1 in (0, 1):
                for a2 in (0, 1):
                    v = h[:, :, a0:a0 + 2 * size[0], a1:a1 + 2 * size[1], a2:a2 + 2 * size[2]]
                    views.append(F.avg_pool3d(v, 2))
        return torch.cat(views, 0)


def build_ppr(in_channels: int = 1, width: int = 16) -> PPRNet:
    return PPRNet(in_channels, width)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
