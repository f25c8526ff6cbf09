"""Op 2: sliding-window inpainting (build masked copies; fused box-error score + heat map).

Protocol (the published one, on a 256x256 slice): a 16x16 box slides with stride 4 over the
slice; each position gives a copy of the slice with the box filled, the network inpaints it,
and the error inside the box only (L1 or L2, optionally brain voxels only) is that window's
score. Every window's score is spread over its footprint and overlapping windows are
averaged (or max-reduced) into a heat map on the pixel grid. The grid covers the whole image:
61 x 61 = 3,721 positions (starts 0..240), not the paper's 60 x 60.

  starts = inpaint_windows(shape, box, stride, brain_mask)        # (W, d) window corners
  for chunk of starts:                                             # no W-sized batch in memory
      copies = inpaint_batch(image, chunk, box, fill)              # (a)
      scores, heat, count = inpaint_scores(model(copies), image, chunk, box, heat=heat, count=count)  # (b)+(c)
  heatmap = finalize_heatmap(heat, count, reduce)

or all of it at once with `inpaint_heatmap(image, model, ...)`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._common import (
    FLOAT_DTYPES,
    check_choice,
    check_fits,
    check_same_device,
    check_sizes,
    check_tensor,
    grid_starts,
    has_triton,
    next_pow2,
    pad_to3,
    resolve_backend,
)

METRICS = ("l1", "l2")
REDUCES = ("mean", "max")

# ----------------------------------------------------------------------------- Triton kernels
if has_triton():
    import triton
    import triton.language as tl

    @triton.jit
    def _masked_copies_kernel(img_ptr, starts_ptr, out_ptr, C, S, Y, Z, BX, BY, BZ, fill,
                              BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)  # window * C + channel
        k = pid // C
        c = pid % C
        s = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = s < S
        x = s // (Y * Z)
        y = (s // Z) % Y
        z = s % Z
        x0 = tl.load(starts_ptr + k * 3 + 0)
        y0 = tl.load(starts_ptr + k * 3 + 1)
        z0 = tl.load(starts_ptr + k * 3 + 2)
        inbox = (x >= x0) & (x < x0 + BX) & (y >= y0) & (y < y0 + BY) & (z >= z0) & (z < z0 + BZ)
        v = tl.load(img_ptr + c * S + s, mask=m & (inbox == 0), other=0.0).to(tl.float32)
        v = tl.where(inbox, fill, v)
        tl.store(out_ptr + pid * S + s, v.to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _score_heat_kernel(rec_ptr, img_ptr, mask_ptr, starts_ptr, score_ptr, heat_ptr, count_ptr,
                           C, S, Y, Z, BX, BY, BZ, NBOX,
                           HAS_MASK: tl.constexpr, L2: tl.constexpr, MAX: tl.constexpr, BLOCK: tl.constexpr):
        k = tl.program_id(0).to(tl.int64)
        x0 = tl.load(starts_ptr + k * 3 + 0)
        y0 = tl.load(starts_ptr + k * 3 + 1)
        z0 = tl.load(starts_ptr + k * 3 + 2)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        cnt = tl.zeros([BLOCK], dtype=tl.float32)
        for j0 in range(0, NBOX, BLOCK):
            j = j0 + tl.arange(0, BLOCK).to(tl.int64)
            jm = j < NBOX
            off = (x0 + j // (BY * BZ)) * (Y * Z) + (y0 + (j // BZ) % BY) * Z + (z0 + j % BZ)
            if HAS_MASK:
                w = tl.load(mask_ptr + off, mask=jm, other=0.0).to(tl.float32)
            else:
                w = jm.to(tl.float32)
            for c in range(C):
                r = tl.load(rec_ptr + (k * C + c) * S + off, mask=jm, other=0.0).to(tl.float32)
                x = tl.load(img_ptr + c * S + off, mask=jm, other=0.0).to(tl.float32)
                e = r - x
                if L2:
                    e = e * e
                else:
                    e = tl.abs(e)
                acc += e * w
                cnt += w
        total = tl.sum(acc, axis=0)
        n = tl.sum(cnt, axis=0)
        score = tl.where(n > 0, total / tl.maximum(n, 1e-30), 0.0)
        tl.store(score_ptr + k, score)
        for j0 in range(0, NBOX, BLOCK):
            j = j0 + tl.arange(0, BLOCK).to(tl.int64)
            jm = j < NBOX
            off = (x0 + j // (BY * BZ)) * (Y * Z) + (y0 + (j // BZ) % BY) * Z + (z0 + j % BZ)
            sv = tl.zeros([BLOCK], dtype=tl.float32) + score
            if MAX:
                tl.atomic_max(heat_ptr + off, sv, mask=jm)
            else:
                tl.atomic_add(heat_ptr + off, sv, mask=jm)
            tl.atomic_add(count_ptr + off, tl.full([BLOCK], 1.0, tl.float32), mask=jm)


def _starts3(starts: torch.Tensor) -> torch.Tensor:
    st = torch.zeros((starts.shape[0], 3), dtype=torch.int64, device=starts.device)
    st[:, : starts.shape[1]] = starts.to(torch.int64)
    return st


def _batch_triton(image, starts, box, fill):
    image = image.contiguous()
    C = image.shape[0]
    K = starts.shape[0]
    X, Y, Z = pad_to3(image.shape[1:], 1)
    BX, BY, BZ = pad_to3(box, 1)
    S = X * Y * Z
    out = torch.empty((K, *image.shape), dtype=image.dtype, device=image.device)
    if K == 0:
        return out
    BLOCK = min(1024, max(16, next_pow2(S)))
    _masked_copies_kernel[(K * C, triton.cdiv(S, BLOCK))](image, _starts3(starts), out, C, S, Y, Z, BX, BY, BZ,
                                                          float(fill), BLOCK=BLOCK)
    return out


def _scores_triton(recon, image, starts, box, metric, brain_mask, reduce, heat, count):
    recon = recon.contiguous()
    image = image.contiguous()
    K, C = recon.shape[:2]
    X, Y, Z = pad_to3(image.shape[1:], 1)
    BX, BY, BZ = pad_to3(box, 1)
    nbox = BX * BY * BZ
    scores = torch.empty(K, dtype=torch.float32, device=image.device)
    if K == 0:
        return scores
    mask = brain_mask.contiguous() if brain_mask is not None else image  # dummy pointer when absent
    if brain_mask is not None and mask.dtype == torch.bool:
        mask = mask.to(torch.uint8)
    BLOCK = min(1024, max(16, next_pow2(nbox)))
    _score_heat_kernel[(K,)](recon, image, mask, _starts3(starts), scores, heat, count,
                             C, X * Y * Z, Y, Z, BX, BY, BZ, nbox,
                             HAS_MASK=brain_mask is not None, L2=metric == "l2", MAX=reduce == "max", BLOCK=BLOCK)
    return scores


# ----------------------------------------------------------------------------- torch references
def _box_index(starts: torch.Tensor, box: Sequence[int]) -> list[torch.Tensor]:
    """Per axis, (K, 1.., b_a, ..1) absolute indices of every box voxel."""
    k, d = starts.shape
    out = []
    for a in range(d):
        shape = [k] + [1] * d
        shape[1 + a] = box[a]
        out.append((starts[:, a, None] + torch.arange(box[a], device=starts.device)).view(shape))
    return out


def inpaint_batch_reference(image, starts, box, fill=0.0):
    d = image.ndim - 1
    inside = None
    for a in range(d):
        shape = [starts.shape[0]] + [1] * d
        shape[1 + a] = image.shape[1 + a]
        pos = torch.arange(image.shape[1 + a], device=image.device).view([1] * (1 + a) + [-1] + [1] * (d - a - 1))
        s = starts[:, a].view([-1] + [1] * d).to(torch.int64)
        ok = (pos >= s) & (pos < s + box[a])
        inside = ok if inside is None else inside & ok
    fill_t = torch.tensor(fill, dtype=torch.float32, device=image.device).to(image.dtype)
    return torch.where(inside.unsqueeze(1), fill_t, image.unsqueeze(0)).contiguous()


def inpaint_scores_reference(recon, image, starts, box, metric="l1", brain_mask=None, reduce="mean",
                             heat=None, count=None):
    """Vectorised reference of the fused score + heat-map accumulation (updates heat/count in place)."""
    d = image.ndim - 1
    k = starts.shape[0]
    starts = starts.to(torch.int64)
    idx = _box_index(starts, box)
    kk = torch.arange(k, device=image.device).view([k] + [1] * d)
    r = recon[(kk, slice(None), *idx)].to(torch.float32)        # (K, *box, C)
    x = image[(slice(None), *idx)].movedim(0, -1).to(torch.float32)  # (K, *box, C)
    e = (r - x).abs() if metric == "l1" else (r - x) ** 2
    if brain_mask is not None:
        w = brain_mask[tuple(idx)].to(torch.float32).unsqueeze(-1).expand_as(e)
        tot = (e * w).flatten(1).sum(1)
        n = w.flatten(1).sum(1)
    else:
        tot = e.flatten(1).sum(1)
        n = torch.full_like(tot, float(e[0].numel()) if k else 1.0)
    scores = torch.where(n > 0, tot / n.clamp_min(1e-30), torch.zeros_like(tot))
    accumulate_scores(scores, starts, box, heat, count, reduce)
    return scores


def accumulate_scores(scores: torch.Tensor, starts: torch.Tensor, box: int | Sequence[int], heat: torch.Tensor,
                      count: torch.Tensor, reduce: str = "mean") -> None:
    """Spread given window scores (K,) over their box footprints into the heat/count accumulators
    (in place): sum (reduce="mean") or running max (reduce="max"); count always counts windows.
    For scores that do not come from `inpaint_scores` (a regressor's predictions, box-only
    reconstructions). Torch ops on any device."""
    check_choice("reduce", reduce, REDUCES, op="accumulate_scores")
    k, d = starts.shape
    box = check_sizes("box", box, d, op="accumulate_scores")
    if k == 0:
        return
    starts = starts.to(torch.int64)
    idx = _box_index(starts, box)
    spatial = heat.shape
    lin = torch.zeros((), dtype=torch.int64, device=heat.device)
    for a in range(d):
        lin = lin * spatial[a] + idx[a]
    lin = lin.expand((k, *box)).reshape(-1)
    src = scores.to(torch.float32).view([k] + [1] * d).expand((k, *box)).reshape(-1)
    if reduce == "max":
        heat.view(-1).scatter_reduce_(0, lin, src, "amax", include_self=True)
    else:
        heat.view(-1).index_add_(0, lin, src)
    count.view(-1).index_add_(0, lin, torch.ones_like(src))


def inpaint_windows(spatial_shape: Sequence[int], box: int | Sequence[int] = 16, stride: int | Sequence[int] = 4,
                    brain_mask: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """(W, d) int64 corners of all box positions covering the image; with ``brain_mask`` only the
    boxes containing at least one brain voxel. Cheap: positions, not copies."""
    op = "inpaint_windows"
    spatial = tuple(int(s) for s in spatial_shape)
    d = len(spatial)
    if d not in (2, 3):
        raise ValueError(f"{op}: spatial_shape must have 2 or 3 entries, got {spatial}")
    box = check_sizes("box", box, d, op=op)
    stride = check_sizes("stride", stride, d, op=op)
    check_fits(op, "box", box, spatial)
    if brain_mask is not None:
        check_tensor("brain_mask", brain_mask, ndims=(d,), op=op)
        if tuple(brain_mask.shape) != spatial:
            raise ValueError(f"{op}: brain_mask must have shape {spatial}, got {tuple(brain_mask.shape)}")
        device = brain_mask.device if device is None else device
    starts = grid_starts(spatial, box, stride, device=device)
    if brain_mask is not None:
        m = (brain_mask != 0).to(torch.float32)[None, None]
        pool = F.max_pool2d if d == 2 else F.max_pool3d
        hit = pool(m, kernel_size=box, stride=1)[0, 0]
        keep = hit[tuple(starts[:, a] for a in range(d))] > 0
        starts = starts[keep]
    return starts


def _check_image_starts(op, image, starts, box):
    check_tensor("image", image, ndims=(3, 4), dtypes=FLOAT_DTYPES, op=op)
    d = image.ndim - 1
    check_tensor("starts", starts, ndims=(2,), op=op)
    if starts.dtype.is_floating_point or starts.dtype == torch.bool:
        raise ValueError(f"{op}: starts must have an integer dtype, got {starts.dtype}")
    if starts.shape[1] != d:
        raise ValueError(f"{op}: starts must have shape (K, {d}) for image of shape {tuple(image.shape)}, "
                         f"got {tuple(starts.shape)}")
    check_same_device(op, image=image, starts=starts)
    box = check_sizes("box", box, d, op=op)
    check_fits(op, "box", box, image.shape[1:])
    if starts.numel():
        hi = torch.tensor([s - b for s, b in zip(image.shape[1:], box)], device=starts.device)
        if bool((starts < 0).any()) or bool((starts > hi).any()):
            raise ValueError(f"{op}: starts must lie in [0, image - box] = [0, {tuple(hi.tolist())}] per axis, "
                             f"got values in [{int(starts.min())}, {int(starts.max())}]")
    return box


def inpaint_batch(image: torch.Tensor, starts: torch.Tensor, box: int | Sequence[int] = 16, fill: float = 0.0, *,
                  backend: str = "auto") -> torch.Tensor:
    """(a) Masked copies: image (C, X, Y[, Z]) -> (K, C, X, Y[, Z]) where copy k has the box at
    ``starts[k]`` set to ``fill``. Feed the copies of one chunk of windows at a time."""
    op = "inpaint_batch"
    box = _check_image_starts(op, image, starts, box)
    impl = resolve_backend(backend, image.device, kernel="triton", op=op)
    if impl == "triton":
        return _batch_triton(image, starts, box, fill)
    return inpaint_batch_reference(image, starts.to(torch.int64), box, fill)


def inpaint_scores(recon: torch.Tensor, image: torch.Tensor, starts: torch.Tensor, box: int | Sequence[int] = 16, *,
                   metric: str = "l1", brain_mask: torch.Tensor | None = None, reduce: str = "mean",
                   heat: torch.Tensor | None = None, count: torch.Tensor | None = None,
                   backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(b)+(c) fused: per-window error inside the box only (mean L1 or L2 over box voxels and
    channels; with ``brain_mask`` over brain voxels only, 0 when the box holds none), and its
    accumulation into the heat map. ``recon`` is (K, C, *spatial), the network output for the K
    copies; ``heat``/``count`` are float32 (*spatial) accumulators (created when None, updated in
    place otherwise) so chunks can be fed one after another. Returns (scores (K,), heat, count);
    call `finalize_heatmap(heat, count, reduce)` after the last chunk."""
    op = "inpaint_scores"
    box = _check_image_starts(op, image, starts, box)
    check_tensor("recon", recon, ndims=(image.ndim + 1,), dtypes=FLOAT_DTYPES, op=op)
    if tuple(recon.shape) != (starts.shape[0], *image.shape):
        raise ValueError(f"{op}: recon must have shape (K, *image.shape) = {(starts.shape[0], *image.shape)}, "
                         f"got {tuple(recon.shape)}")
    check_choice("metric", metric, METRICS, op=op)
    check_choice("reduce", reduce, REDUCES, op=op)
    spatial = tuple(image.shape[1:])
    if brain_mask is not None:
        check_tensor("brain_mask", brain_mask, op=op)
        if tuple(brain_mask.shape) != spatial:
            raise ValueError(f"{op}: brain_mask must have shape {spatial}, got {tuple(brain_mask.shape)}")
    if heat is None:
        heat = torch.zeros(spatial, dtype=torch.float32, device=image.device)
    if count is None:
        count = torch.zeros(spatial, dtype=torch.float32, device=image.device)
    for name, t in (("heat", heat), ("count", count)):
        if t.dtype != torch.float32 or tuple(t.shape) != spatial or not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be a contiguous float32 tensor of shape {spatial}, "
                             f"got {t.dtype} {tuple(t.shape)}")
    check_same_device(op, image=image, recon=recon, brain_mask=brain_mask, heat=heat, count=count)
    impl = resolve_backend(backend, image.device, kernel="triton", op=op)
    if impl == "triton":
        scores = _scores_triton(recon, image, starts, box, metric, brain_mask, reduce, heat, count)
    else:
        scores = inpaint_scores_reference(recon, image, starts, box, metric, brain_mask, reduce, heat, count)
    return scores, heat, count


def finalize_heatmap(heat: torch.Tensor, count: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """Heat map from the accumulators: overlap average (reduce="mean") or max; 0 where no window."""
    check_choice("reduce", reduce, REDUCES, op="finalize_heatmap")
    if reduce == "max":
        return torch.where(count > 0, heat, torch.zeros_like(heat))
    return heat / count.clamp_min(1.0)


class InpaintResult(NamedTuple):
    heatmap: torch.Tensor  # (*spatial) float32
    scores: torch.Tensor   # (W,) float32, one per window
    starts: torch.Tensor   # (W, d) int64 window corners


def inpaint_heatmap(image: torch.Tensor, model: Callable[[torch.Tensor], torch.Tensor], *,
                    box: int | Sequence[int] = 16, stride: int | Sequence[int] = 4, fill: float = 0.0,
                    batch_size: int = 256, metric: str = "l1", brain_mask: torch.Tensor | None = None,
                    only_brain: bool = False, score_in_brain: bool = False, reduce: str = "mean",
                    backend: str = "auto") -> InpaintResult:
    """Whole protocol for one slice/volume ``image`` (C, *spatial): windows (only those touching
    ``brain_mask`` if ``only_brain``), chunks of ``batch_size`` masked copies through ``model``
    (called under torch.no_grad, must return the same shape), fused scoring and heat map.
    ``score_in_brain`` restricts each box error to brain voxels."""
    op = "inpaint_heatmap"
    check_tensor("image", image, ndims=(3, 4), dtypes=FLOAT_DTYPES, op=op)
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"{op}: batch_size must be a positive int, got {batch_size!r}")
    if (only_brain or score_in_brain) and brain_mask is None:
        raise ValueError(f"{op}: brain_mask is required when only_brain or score_in_brain is set, got None")
    starts = inpaint_windows(image.shape[1:], box, stride, brain_mask if only_brain else None, device=image.device)
    heat = torch.zeros(image.shape[1:], dtype=torch.float32, device=image.device)
    count = torch.zeros_like(heat)
    scores = []
    with torch.no_grad():
        for i in range(0, starts.shape[0], batch_size):
            chunk = starts[i:i + batch_size]
            copies = inpaint_batch(image, chunk, box, fill, backend=backend)
            recon = model(copies)
            s, _, _ = inpaint_scores(recon, image, chunk, box, metric=metric,
                                     brain_mask=brain_mask if score_in_brain else None, reduce=reduce,
                                     heat=heat, count=count, backend=backend)
            scores.append(s)
    scores_t = torch.cat(scores) if scores else torch.zeros(0, device=image.device)
    return InpaintResult(finalize_heatmap(heat, count, reduce), scores_t, starts)
