"""Op 4: overlap-add stitching for sliding-window inference.

`sliding_window_inference(inputs, roi_size, sw_batch_size, predictor, overlap, mode, ...)` gives
the output of monai.inferers.sliding_window_inference (same window grid, same constant/Gaussian
importance map, same padding when the image is smaller than the window), but cuts the windows
with one gather kernel and stitches each batch of predictions with one overlap-add kernel
instead of MONAI's Python loop over windows. The building blocks are public:

  starts = sliding_window_starts(spatial, roi, overlap)       # (W, d), MONAI order
  w = importance_map(roi, "gaussian")                        # MONAI's map
  overlap_add(pred (K, C, *roi), starts[chunk], out (C, *spatial), w, count)   # in place
  result = out / count

No import of MONAI here: the importance map and scan rules are re-implemented (and tested
against MONAI in tests/kernels/test_stitching.py).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ._common import (
    FLOAT_DTYPES,
    check_choice,
    check_same_device,
    check_sizes,
    check_tensor,
    grid_starts,
    has_triton,
    next_pow2,
    pad_to3,
    resolve_backend,
)
from .patch_gather import extract_patches

BLEND_MODES = ("constant", "gaussian")

# ----------------------------------------------------------------------------- Triton kernel
if has_triton():
    import triton
    import triton.language as tl

    @triton.jit
    def _overlap_add_kernel(p_ptr, starts_ptr, w_ptr, out_ptr, cnt_ptr, C, CT, S, Y, Z, PY, PZ, P,
                            HAS_W: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        k = pid // CT
        c = pid % CT
        j = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = j < P
        x0 = tl.load(starts_ptr + k * 3 + 0)
        y0 = tl.load(starts_ptr + k * 3 + 1)
        z0 = tl.load(starts_ptr + k * 3 + 2)
        off = (x0 + j // (PY * PZ)) * (Y * Z) + (y0 + (j // PZ) % PY) * Z + (z0 + j % PZ)
        if HAS_W:
            w = tl.load(w_ptr + j, mask=m, other=0.0).to(tl.float32)
        else:
            w = tl.full([BLOCK], 1.0, tl.float32)
        if c < C:
            v = tl.load(p_ptr + (k * C + c) * P + j, mask=m, other=0.0).to(tl.float32)
            tl.atomic_add(out_ptr + c * S + off, v * w, mask=m)
        else:
            tl.atomic_add(cnt_ptr + off, w, mask=m)


def _overlap_add_triton(patches, starts, out, weight, count):
    patches = patches.contiguous()
    K, C = patches.shape[:2]
    roi = patches.shape[2:]
    X, Y, Z = pad_to3(out.shape[1:], 1)
    PX, PY, PZ = pad_to3(roi, 1)
    P = PX * PY * PZ
    if K == 0:
        return
    st = torch.zeros((K, 3), dtype=torch.int64, device=out.device)
    st[:, : starts.shape[1]] = starts.to(torch.int64)
    ct = C + (1 if count is not None else 0)
    BLOCK = min(1024, max(16, next_pow2(P)))
    w = weight.contiguous() if weight is not None else out
    _overlap_add_kernel[(K * ct, triton.cdiv(P, BLOCK))](patches, st, w, out, count if count is not None else out,
                                                        C, ct, X * Y * Z, Y, Z, PY, PZ, P,
                                                        HAS_W=weight is not None, BLOCK=BLOCK)


# ----------------------------------------------------------------------------- torch reference
def overlap_add_reference(patches, starts, out, weight=None, count=None):
    K, C = patches.shape[:2]
    roi = tuple(patches.shape[2:])
    spatial = tuple(out.shape[1:])
    d = len(roi)
    starts = starts.to(torch.int64)
    lin = torch.zeros((), dtype=torch.int64, device=out.device)
    for a in range(d):
        shape = [K] + [1] * d
        shape[1 + a] = roi[a]
        idx = (starts[:, a, None] + torch.arange(roi[a], device=out.device)).view(shape)
        lin = lin * spatial[a] + idx
    lin = lin.expand((K, *roi)).reshape(-1)
    w = weight.to(torch.float32) if weight is not None else torch.ones(roi, device=out.device)
    vals = (patches.to(torch.float32) * w).movedim(1, 0).reshape(C, -1)
    out.view(C, -1).index_add_(1, lin, vals)
    if count is not None:
        count.view(-1).index_add_(0, lin, w.expand((K, *roi)).reshape(-1))


# ----------------------------------------------------------------------------- public API
def importance_map(roi_size: Sequence[int], mode: str = "constant", sigma_scale: float | Sequence[float] = 0.125,
                   device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Window weights, identical to monai.data.utils.compute_importance_map (constant: ones;
    gaussian: separable exp(-x^2 / 2 sigma^2), sigma = sigma_scale * roi, centred at (roi-1)/2,
    clamped below at max(min, 1e-3))."""
    op = "importance_map"
    roi = tuple(int(r) for r in roi_size)
    check_sizes("roi_size", roi, len(roi), op=op)
    check_choice("mode", mode, BLEND_MODES, op=op)
    if mode == "constant":
        m = torch.ones(roi, device=device, dtype=torch.float32)
    else:
        scales = (sigma_scale,) * len(roi) if isinstance(sigma_scale, (int, float)) else tuple(sigma_scale)
        if len(scales) != len(roi) or any(s <= 0 for s in scales):
            raise ValueError(f"{op}: sigma_scale must be positive, one value or one per dimension, got {sigma_scale!r}")
        m = None
        for i, (r, s) in enumerate(zip(roi, scales)):
            sigma = r * s
            x = torch.arange(start=-(r - 1) / 2.0, end=(r - 1) / 2.0 + 1, dtype=torch.float, device=device)
            x = torch.exp(x ** 2 / (-2 * sigma ** 2))
            m = x if i == 0 else m.unsqueeze(-1) * x[(None,) * i]
    low = max(torch.min(m).item(), 1e-3)
    return torch.clamp_(m.to(torch.float), min=low).to(dtype)


def sliding_window_starts(image_size: Sequence[int], roi_size: Sequence[int] | int, overlap: float = 0.25,
                          device=None) -> torch.Tensor:
    """(W, d) window corners in MONAI's order: scan interval int(roi * (1 - overlap)) (roi when
    roi equals the image, at least 1), last window flush with the end."""
    op = "sliding_window_starts"
    spatial = tuple(int(s) for s in image_size)
    roi = check_sizes("roi_size", roi_size, len(spatial), op=op)
    ov = (overlap,) * len(spatial) if isinstance(overlap, (int, float)) else tuple(overlap)
    if len(ov) != len(spatial) or any(not 0 <= o < 1 for o in ov):
        raise ValueError(f"{op}: overlap must be in [0, 1), one value or one per dimension, got {overlap!r}")
    if any(r > s for r, s in zip(roi, spatial)):
        raise ValueError(f"{op}: roi_size {roi} must not be larger than the image {spatial} (pad the image first)")
    interval = tuple(r if r == s else max(int(r * (1 - o)), 1) for r, s, o in zip(roi, spatial, ov))
    return grid_starts(spatial, roi, interval, device=device)


def overlap_add(patches: torch.Tensor, starts: torch.Tensor, out: torch.Tensor, weight: torch.Tensor | None = None,
                count: torch.Tensor | None = None, *,
                backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Accumulate ``weight * patches[k]`` into ``out[:, window k]`` and ``weight`` into
    ``count[window k]``, in place. patches (K, C, *roi), starts (K, d) corners inside the image,
    out (C, *spatial) float32, count (*spatial) float32 or None, weight (*roi) or None (ones).
    Returns (out, count); the stitched result is out / count."""
    op = "overlap_add"
    check_tensor("patches", patches, ndims=(4, 5), dtypes=FLOAT_DTYPES, op=op)
    d = patches.ndim - 2
    check_tensor("out", out, ndims=(d + 1,), dtypes=(torch.float32,), op=op)
    if not out.is_contiguous():
        raise ValueError(f"{op}: out must be contiguous, got strides {out.stride()}")
    if out.shape[0] != patches.shape[1]:
        raise ValueError(f"{op}: out must have {patches.shape[1]} channels like patches, got {out.shape[0]}")
    check_tensor("starts", starts, ndims=(2,), op=op)
    if starts.dtype.is_floating_point or starts.dtype == torch.bool or starts.shape != (patches.shape[0], d):
        raise ValueError(f"{op}: starts must be an integer tensor of shape ({patches.shape[0]}, {d}), "
                         f"got {starts.dtype} {tuple(starts.shape)}")
    roi = tuple(patches.shape[2:])
    spatial = tuple(out.shape[1:])
    if any(r > s for r, s in zip(roi, spatial)):
        raise ValueError(f"{op}: window {roi} must not be larger than the image {spatial}")
    if weight is not None:
        check_tensor("weight", weight, dtypes=FLOAT_DTYPES, op=op)
        if tuple(weight.shape) != roi:
            raise ValueError(f"{op}: weight must have the window shape {roi}, got {tuple(weight.shape)}")
    if count is not None:
        if count.dtype != torch.float32 or tuple(count.shape) != spatial or not count.is_contiguous():
            raise ValueError(f"{op}: count must be a contiguous float32 tensor of shape {spatial}, "
                             f"got {count.dtype} {tuple(count.shape)}")
    check_same_device(op, patches=patches, starts=starts, out=out, weight=weight, count=count)
    if starts.numel():
        hi = torch.tensor([s - r for s, r in zip(spatial, roi)], device=starts.device)
        if bool((starts < 0).any()) or bool((starts > hi).any()):
            raise ValueError(f"{op}: starts must lie in [0, image - window] = [0, {tuple(hi.tolist())}], "
                             f"got values in [{int(starts.min())}, {int(starts.max())}]")
    impl = resolve_backend(backend, out.device, kernel="triton", op=op)
    if impl == "triton":
        _overlap_add_triton(patches, starts, out, weight, count)
    else:
        overlap_add_reference(patches, starts, out, weight, count)
    return out, count


def sliding_window_inference(inputs: torch.Tensor, roi_size: Sequence[int] | int, sw_batch_size: int,
                             predictor: Callable[[torch.Tensor], torch.Tensor], overlap: float = 0.25,
                             mode: str = "constant", sigma_scale: float | Sequence[float] = 0.125,
                             padding_mode: str = "constant", cval: float = 0.0, *,
                             backend: str = "auto") -> torch.Tensor:
    """Drop-in for monai.inferers.sliding_window_inference (tensor-in, tensor-out predictors
    whose output has the window's spatial size; any number of output channels).
    inputs (B, C, *spatial) with 2 or 3 spatial dims -> (B, C_out, *spatial) float32."""
    op = "sliding_window_inference"
    check_tensor("inputs", inputs, ndims=(4, 5), dtypes=FLOAT_DTYPES, op=op)
    d = inputs.ndim - 2
    roi = check_sizes("roi_size", roi_size, d, op=op)
    if not isinstance(sw_batch_size, int) or sw_batch_size <= 0:
        raise ValueError(f"{op}: sw_batch_size must be a positive int, got {sw_batch_size!r}")
    check_choice("mode", mode, BLEND_MODES, op=op)
    spatial = tuple(inputs.shape[2:])
    pad = []
    for k in range(d - 1, -1, -1):  # F.pad order: last dim first (as MONAI)
        diff = max(roi[k] - spatial[k], 0)
        pad += [diff // 2, diff - diff // 2]
    x = F.pad(inputs, pad=pad, mode=padding_mode, value=cval) if any(pad) else inputs
    padded = tuple(x.shape[2:])
    starts = sliding_window_starts(padded, roi, overlap, device=inputs.device)
    w = importance_map(roi, mode, sigma_scale, device=inputs.device)
    count = torch.zeros(padded, dtype=torch.float32, device=inputs.device)
    results = []
    with torch.no_grad():
        for b in range(inputs.shape[0]):
            out = None
            for i in range(0, starts.shape[0], sw_batch_size):
                chunk = starts[i:i + sw_batch_size]
                win = extract_patches(x[b], chunk, roi, backend=backend)
                pred = predictor(win)
                if not isinstance(pred, torch.Tensor) or tuple(pred.shape[2:]) != roi or pred.shape[0] != len(chunk):
                    raise ValueError(f"{op}: predictor must return a tensor of shape (K, C_out, *{roi}), "
                                     f"got {getattr(pred, 'shape', type(pred))}")
                if out is None:
                    out = torch.zeros((pred.shape[1], *padded), dtype=torch.float32, device=inputs.device)
                overlap_add(pred, chunk, out, w, count if b == 0 else None, backend=backend)
            results.append(out / count)
    result = torch.stack(results)
    crop = [slice(None), slice(None)]
    for k in range(d):
        lo = pad[2 * (d - 1 - k)]
        crop.append(slice(lo, lo + spatial[k]))
    return result[tuple(crop)]
