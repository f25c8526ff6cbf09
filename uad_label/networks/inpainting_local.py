"""Exact sliding-window inpainting at a fraction of the cost: G's output inside each box,
computed only where the box can change it.

The heat map needs, per window, G(slice with the box filled) inside the box only. Running the
whole U-Net per window repeats almost all of its work: encoder features of the masked slice
differ from the clean slice's only near the box (a 4x4 stride-2 conv spreads a change by a few
pixels per level), and the box output depends on the decoder only inside a cone that narrows by
half per level. So, for a batch of windows:

- the clean slice's encoder features are computed once;
- per window, each encoder level recomputes only the region the box has touched (base features
  elsewhere), down to the innermost 1x1 level, which every box touches;
- the decoder runs top-down requests: the box at level 0 needs a slightly larger region of level 1,
  and so on; each level computes only that region, from the encoder crop (base + recomputed part)
  and the deeper level's region.

Borders reproduce the full network exactly: convolutions see zeros outside the feature map (their
zero padding), bicubic upsampling sees the edge value (PyTorch clamps its taps). Eval mode only
(BatchNorm with running statistics is pointwise). Same numbers as the full network up to float
summation order (tests compare with G on every window).

No library offers this (MONAI's inferers run the whole network per input), hence hand-written.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uad_kernels import accumulate_scores, finalize_heatmap, inpaint_windows
from uad_kernels.inpaint import InpaintResult

from .inpainting import InpaintGenerator, _UnetBlock


class _Level:
    """One pix2pix skip block, unpacked: down = act -> conv 4x4/2 -> (BN); up = ReLU -> bicubic x2
    -> conv 3x3 -> (BN)."""

    def __init__(self, block: _UnetBlock):
        layers = list(block.model)
        convs = [m for m in layers if isinstance(m, nn.Conv2d)]
        self.down, self.up_conv = convs[0], convs[1]
        i_down, i_up = layers.index(self.down), layers.index(self.up_conv)
        self.act = layers[i_down - 1] if i_down > 0 and isinstance(layers[i_down - 1], nn.LeakyReLU) else None
        nxt = layers[i_down + 1] if i_down + 1 < len(layers) else None
        self.down_bn = nxt if isinstance(nxt, nn.BatchNorm2d) else None
        self.up_bn = layers[i_up + 1] if i_up + 1 < len(layers) and isinstance(layers[i_up + 1], nn.BatchNorm2d) \
            else None
        ups = [m for m in layers if isinstance(m, nn.Upsample)]
        self.mode = ups[0].mode
        subs = [m for m in layers if isinstance(m, _UnetBlock)]
        self.sub = subs[0] if subs else None

    def encode(self, a: torch.Tensor) -> torch.Tensor:
        """Unpadded down conv: input crop starting at an odd global index 2s - 1 gives outputs from s."""
        h = self.act(a) if self.act is not None else a
        h = F.conv2d(h, self.down.weight, self.down.bias, stride=2)
        return self.down_bn(h) if self.down_bn is not None else h

    def decode(self, up: torch.Tensor) -> torch.Tensor:
        """Unpadded 3x3 conv (+BN) of an already upsampled, zero-bordered crop."""
        h = F.conv2d(up, self.up_conv.weight, self.up_conv.bias)
        return self.up_bn(h) if self.up_bn is not None else h


def _ranges(start: torch.Tensor, length: int) -> torch.Tensor:
    """(W, 2) starts -> (W, 2, length) global indices along each axis."""
    return start[:, :, None] + torch.arange(length, device=start.device)


class _Crops:
    """A feature level for a batch of windows: the clean slice's full map, and per window a
    recomputed (dirty) crop of fixed size at per-window global starts that overrides it."""

    def __init__(self, base: torch.Tensor, dirty: torch.Tensor, start: torch.Tensor):
        self.base, self.dirty, self.start = base, dirty, start  # (C, H, W), (K, C, L, L), (K, 2)
        self.size = tuple(base.shape[1:])

    def read(self, start: torch.Tensor, length: int, pad: str) -> torch.Tensor:
        """(K, C, length, length) window values at [start, start + length) per axis; outside the
        map: zeros (pad="zero", what a padded conv sees) or the edge value (pad="edge", bicubic).
        One gather from [base pixels; dirty pixels; a zero] rows, the index chosen per pixel."""
        k, c = self.dirty.shape[:2]
        L = self.dirty.shape[-1]
        h, w = self.size
        idx = _ranges(start, length)  # (K, 2, n)
        hi = torch.tensor(self.size, device=idx.device).view(1, 2, 1)
        clamped = torch.minimum(idx.clamp_min(0), hi - 1)
        rel = clamped - self.start[:, :, None]
        in_dirty = (rel >= 0) & (rel < L)
        rel = rel.clamp(0, L - 1)
        base_idx = clamped[:, 0, :, None] * w + clamped[:, 1, None, :]
        kk = torch.arange(k, device=idx.device)[:, None, None]
        dirty_idx = h * w + (kk * L + rel[:, 0, :, None]) * L + rel[:, 1, None, :]
        flat = torch.where(in_dirty[:, 0, :, None] & in_dirty[:, 1, None, :], dirty_idx, base_idx)
        if pad == "zero":
            inside = (idx >= 0) & (idx < hi)
            flat = torch.where(inside[:, 0, :, None] & inside[:, 1, None, :], flat, h * w + k * L * L)
        rows = torch.cat([self.base.permute(1, 2, 0).reshape(h * w, c), self.dirty.permute(0, 2, 3, 1).reshape(-1, c),
                          self.dirty.new_zeros(1, c)])
        return rows[flat].permute(0, 3, 1, 2)  # channels-last strides: the conv reads them as they are


def _shift_index(x: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """(K, C, n, n) -> (K, C, m, m): per window, the rows rel[:, 0] and columns rel[:, 1] (K, 2, m)."""
    k = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x[k, :, rel[:, 0, :, None], rel[:, 1, None, :]].permute(0, 3, 1, 2)


def _shift(x: torch.Tensor, offset: torch.Tensor, length: int) -> torch.Tensor:
    """(K, C, n, n) -> (K, C, length, length): per-window sub-crop starting at offset (K, 2)."""
    return _shift_index(x, _ranges(offset, length))


def _edge(x: torch.Tensor, start: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Replace the out-of-map part of per-window crops by the edge value (bicubic's clamping)."""
    idx = _ranges(start, x.shape[-1])
    hi = torch.tensor(size, device=x.device).view(1, 2, 1)
    rel = torch.minimum(idx.clamp_min(0), hi - 1) - start[:, :, None]
    if not ((rel != torch.arange(x.shape[-1], device=x.device)).any()):
        return x
    return _shift_index(x, rel.clamp(0, x.shape[-1] - 1))


def _cubic(t: float, a: float = -0.75) -> list[float]:
    """PyTorch's bicubic convolution weights (A = -0.75) of the 4 taps around fraction t."""
    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


_EVEN, _ODD = _cubic(0.75), _cubic(0.25)  # x2, align_corners=False: output 2p at p - 0.25, 2p + 1 at p + 0.25


def _bicubic_matrices(g0: torch.Tensor, n: int, t: torch.Tensor, k: int) -> torch.Tensor:
    """(W, 2, n, k) per-window, per-axis interpolation matrices: x2 bicubic outputs [g0, g0 + n)
    from a source crop starting at t of length k (every tap inside the crop)."""
    g = _ranges(g0, n)
    f = torch.div(g - 1, 2, rounding_mode="floor")
    w = torch.tensor([_EVEN, _ODD], dtype=torch.float32, device=g.device)[g % 2]  # (W, 2, n, 4)
    cols = (f - t[:, :, None])[..., None] - 1 + torch.arange(4, device=g.device)
    return torch.zeros((*g.shape, k), dtype=torch.float32, device=g.device).scatter_add_(-1, cols, w)


def _clamped(start: torch.Tensor, length: int, size: tuple[int, int]) -> torch.Tensor:
    hi = torch.tensor(size, device=start.device).view(1, 2, 1)
    return torch.minimum(_ranges(start, length).clamp_min(0), hi - 1)


class LocalBoxInpainter:
    """G's output inside the box for a batch of box positions, computed locally (see module doc).

    inpainter = LocalBoxInpainter(G)                # G in eval mode
    inpainter.set_image(slice_)                     # (1, S, S) clean normalised slice, once per slice
    out = inpainter(starts, box, fill)              # (K, 1, box, box) == G(masked copies)[box region]
    """

    def __init__(self, generator: InpaintGenerator):
        if generator.training:
            raise ValueError("LocalBoxInpainter: expected G in eval mode (BatchNorm with running statistics), "
                             "received a module in training mode; call G.eval() first")
        self.levels: list[_Level] = []
        block = generator.net
        while block is not None:
            lv = _Level(block)
            self.levels.append(lv)
            block = lv.sub
        self.slice_size = generator.slice_size
        self.base: list[torch.Tensor] | None = None

    @torch.no_grad()
    def set_image(self, image: torch.Tensor) -> None:
        """Clean-slice features of every encoder level (padded convs, as in G)."""
        if image.ndim != 3 or image.shape[0] != 1 or tuple(image.shape[1:]) != (self.slice_size,) * 2:
            raise ValueError(f"LocalBoxInpainter.set_image: expected (1, {self.slice_size}, {self.slice_size}), "
                             f"received {tuple(image.shape)}")
        a = image[None]
        feats = [a[0]]
        for lv in self.levels:
            a = lv.encode(F.pad(a, (1, 1, 1, 1)))
            feats.append(a[0])
        self.base = feats

    @torch.no_grad()
    def __call__(self, starts: torch.Tensor, box: int, fill: float) -> torch.Tensor:
        if self.base is None:
            raise ValueError("LocalBoxInpainter: call set_image(slice) before asking for boxes")
        if starts.ndim != 2 or starts.shape[1] != 2:
            raise ValueError(f"LocalBoxInpainter: starts must be (K, 2) box corners, received {tuple(starts.shape)}")
        starts = starts.to(device=self.base[0].device, dtype=torch.long)
        k = starts.shape[0]
        dt = self.base[0].dtype
        # encoder: per level the recomputed crop around the box (a superset of what changed)
        crops = [_Crops(self.base[0], torch.full((k, 1, box, box), float(fill), device=starts.device, dtype=dt),
                        starts)]
        length, start = box, starts
        for i, lv in enumerate(self.levels):
            nstart = torch.div(start - 2, 2, rounding_mode="floor")
            nlength = length // 2 + 3
            n = self.base[i + 1].shape[-1]
            if nlength >= n:  # the box reaches the whole (small) map: recompute all of it
                nstart, nlength = torch.zeros_like(nstart), n
            inp = crops[i].read(2 * nstart - 1, 2 * nlength + 2, "zero")
            crops.append(_Crops(self.base[i + 1], lv.encode(inp), nstart))
            length, start = nlength, nstart
        return self._up(0, crops, starts, box)

    def _up(self, i: int, crops: list[_Crops], q: torch.Tensor, m: int) -> torch.Tensor:
        """Level i's decoder output u_i over [q, q + m) per axis (valid inside the map)."""
        lv = self.levels[i]
        size = crops[i].size
        if m + 2 >= size[0]:  # the request covers the (small) map: compute it whole, padded as in G
            return _shift_index(self._up_full(i, crops), _clamped(q, m, size))
        # the 3x3 conv needs the upsampled map on [q - 1, q + m + 1); bicubic x2 of a crop starting
        # at t is exact on local outputs [3, 2K - 4], so start the deeper crop at t = floor((q - 4) / 2)
        t = torch.div(q - 4, 2, rounding_mode="floor")
        kk = (m + 2) // 2 + 4
        deeper = crops[i + 1]
        if i + 1 == len(self.levels):
            src = deeper.read(t, kk, "edge")
        else:
            u = _edge(self._up(i + 1, crops, t, kk), t, deeper.size)
            src = torch.cat([deeper.read(t, kk, "edge"), u], 1)
        if lv.mode == "bicubic":
            # only the m + 2 outputs the conv reads, as two small matrix products per window (PyTorch's
            # bicubic kernel on the whole crop was a third of the time and computed 2-4x more outputs)
            a = _bicubic_matrices(q - 1, m + 2, t, kk).to(src.dtype)
            up = a[:, 0, None] @ torch.relu(src) @ a[:, 1, None].transpose(-1, -2)
        else:
            up = F.interpolate(torch.relu(src), scale_factor=2, mode=lv.mode, align_corners=False)
            up = _shift(up, q - 1 - 2 * t, m + 2)
        idx = _ranges(q - 1, m + 2)
        hi = torch.tensor(size, device=q.device).view(1, 2, 1)
        inside = (idx >= 0) & (idx < hi)
        up = up * (inside[:, 0, :, None] & inside[:, 1, None, :])[:, None].to(up.dtype)
        return lv.decode(up)

    def _up_full(self, i: int, crops: list[_Crops]) -> torch.Tensor:
        """Level i's decoder output over its whole map, per window."""
        lv = self.levels[i]
        deeper = crops[i + 1]
        k = deeper.start.shape[0]
        zero = torch.zeros((k, 2), dtype=torch.long, device=deeper.start.device)
        src = deeper.read(zero, deeper.size[0], "edge")
        if i + 1 < len(self.levels):
            src = torch.cat([src, self._up_full(i + 1, crops)], 1)
        up = F.interpolate(torch.relu(src), scale_factor=2, mode=lv.mode, align_corners=False)
        return lv.decode(F.pad(up, (1, 1, 1, 1)))


@torch.no_grad()
def local_inpaint_heatmap(inpainter: LocalBoxInpainter, image: torch.Tensor, *, box: int = 16, stride: int = 4,
                          fill: float = 1.0, batch_size: int = 512, metric: str = "l1",
                          brain_mask: torch.Tensor | None = None, only_brain: bool = True,
                          score_in_brain: bool = False, reduce: str = "mean"):
    """The same protocol and result as ``uad_kernels.inpaint_heatmap(image[None], G, ...)`` (windows,
    box-only L1/L2 score, overlap mean or max), with G's box outputs from ``inpainter``.
    image: (S, S) normalised slice; returns uad_kernels' InpaintResult."""

    if metric not in ("l1", "l2"):
        raise ValueError(f"metric: expected 'l1' or 'l2', received {metric!r}")
    if (only_brain or score_in_brain) and brain_mask is None:
        raise ValueError("brain_mask: required when only_brain or score_in_brain is set, received None")
    inpainter.set_image(image[None])
    starts = inpaint_windows(image.shape, box, stride, brain_mask if only_brain else None, device=image.device)
    heat = torch.zeros(image.shape, dtype=torch.float32, device=image.device)
    count = torch.zeros_like(heat)
    ar = torch.arange(box, device=image.device)
    scores = []
    for i in range(0, starts.shape[0], batch_size):
        chunk = starts[i:i + batch_size]
        rows = (chunk[:, 0, None] + ar)[:, :, None]
        cols = (chunk[:, 1, None] + ar)[:, None, :]
        err = inpainter(chunk, box, fill)[:, 0].float() - image[rows, cols].float()
        err = err.abs() if metric == "l1" else err ** 2
        if score_in_brain:
            w = brain_mask[rows, cols].float()
            n = w.flatten(1).sum(1)
            s = torch.where(n > 0, (err * w).flatten(1).sum(1) / n.clamp_min(1.0), torch.zeros_like(n))
        else:
            s = err.flatten(1).mean(1)
        accumulate_scores(s, chunk, box, heat, count, reduce)
        scores.append(s)
    scores_t = torch.cat(scores) if scores else torch.zeros(0, device=image.device)
    return InpaintResult(finalize_heatmap(heat, count, reduce), scores_t, starts)
