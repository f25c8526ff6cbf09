"""Op 3: reconstruction error map in one pass.

For image x and reconstruction r (same shape, any 1-5 dims, e.g. (C, X, Y, Z)):
  residual  e = x - r                      (positive where the image is brighter than the model)
  mode      "signed" e | "abs" |e| | "squared" e^2 | "positive" max(e, 0)
  normalise e = (e - mean) / (std + eps)   (voxel-wise healthy statistics, optional)
  clamp     e = clamp(e, lo, hi)           (optional, either bound may be None)
  mask      e = 0 outside the brain        (optional)
plus, in the same pass, per-slice scores (mean of e over brain voxels of each index along
``slice_dim``; default the last axis = axial) and a histogram of the in-brain values (for
threshold search). mean/std/brain_mask may have the image's shape or a trailing part of it
(e.g. (X, Y, Z) for a (C, X, Y, Z) image): they broadcast over the leading dimensions.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ._common import FLOAT_DTYPES, check_choice, check_same_device, check_tensor, has_triton, next_pow2, resolve_backend

MODES = ("signed", "abs", "squared", "positive")
_MODE_CODE = {m: i for i, m in enumerate(MODES)}


class ErrorMap(NamedTuple):
    map: torch.Tensor           # image shape, image dtype
    slice_scores: torch.Tensor  # (n_slices,) float32
    histogram: torch.Tensor     # (bins,) int64 counts of in-brain voxels
    bin_edges: torch.Tensor     # (bins + 1,) float32


# ----------------------------------------------------------------------------- Triton kernel
if has_triton():
    import triton
    import triton.language as tl

    @triton.jit
    def _error_map_kernel(img_ptr, rec_ptr, mask_ptr, mean_ptr, std_ptr, out_ptr, ssum_ptr, scnt_ptr, hist_ptr,
                          A, Zn, B, M_MASK, M_MEAN, M_STD, clo, chi, eps, hlo, hhi, hscale, nbins,
                          MODE: tl.constexpr, HAS_MASK: tl.constexpr, HAS_MEAN: tl.constexpr,
                          HAS_STD: tl.constexpr, CLO: tl.constexpr, CHI: tl.constexpr, HIST: tl.constexpr,
                          NBP: tl.constexpr, BA: tl.constexpr, BZ: tl.constexpr, BB: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        nz = tl.cdiv(Zn, BZ)
        nb = tl.cdiv(B, BB)
        ib = pid % nb
        iz = (pid // nb) % nz
        ia = pid // (nb * nz)
        a = ia * BA + tl.arange(0, BA).to(tl.int64)
        z = iz * BZ + tl.arange(0, BZ).to(tl.int64)
        b = ib * BB + tl.arange(0, BB).to(tl.int64)
        off = a[:, None, None] * (Zn * B) + z[None, :, None] * B + b[None, None, :]
        inb = (a[:, None, None] < A) & (z[None, :, None] < Zn) & (b[None, None, :] < B)
        x = tl.load(img_ptr + off, mask=inb, other=0.0).to(tl.float32)
        r = tl.load(rec_ptr + off, mask=inb, other=0.0).to(tl.float32)
        e = x - r
        if MODE == 1:
            e = tl.abs(e)
        elif MODE == 2:
            e = e * e
        elif MODE == 3:
            e = tl.maximum(e, 0.0)
        if HAS_MEAN:
            e = e - tl.load(mean_ptr + off % M_MEAN, mask=inb, other=0.0).to(tl.float32)
        if HAS_STD:
            e = e / (tl.load(std_ptr + off % M_STD, mask=inb, other=1.0).to(tl.float32) + eps)
        if CLO:
            e = tl.maximum(e, clo)
        if CHI:
            e = tl.minimum(e, chi)
        valid = inb
        if HAS_MASK:
            w = tl.load(mask_ptr + off % M_MASK, mask=inb, other=0).to(tl.float32)
            valid = inb & (w != 0)
            e = tl.where(valid, e, 0.0)
        tl.store(out_ptr + off, e.to(out_ptr.dtype.element_ty), mask=inb)
        ev = tl.where(valid, e, 0.0)
        s = tl.sum(tl.sum(ev, axis=2), axis=0)
        cnt = tl.sum(tl.sum(valid.to(tl.float32), axis=2), axis=0)
        zz = iz * BZ + tl.arange(0, BZ)
        tl.atomic_add(ssum_ptr + zz, s, mask=zz < Zn)
        tl.atomic_add(scnt_ptr + zz, cnt, mask=zz < Zn)
        if HIST:
            inr = valid & (e >= hlo) & (e <= hhi)
            span = tl.where(hhi > hlo, hhi - hlo, 1.0)
            bi = tl.minimum(((e - hlo) / span * nbins).to(tl.int32), nbins - 1)  # torch.histc rule
            bi = tl.where(inr, bi, nbins)  # out of brain / range / bounds -> spare bin, dropped below
            h = tl.histogram(tl.reshape(bi, [BA * BZ * BB]), NBP)
            hb = tl.arange(0, NBP)
            tl.atomic_add(hist_ptr + hb, h, mask=hb < nbins)


def _as3(shape, dim):
    a = 1
    for s in shape[:dim]:
        a *= s
    b = 1
    for s in shape[dim + 1:]:
        b *= s
    return a, shape[dim], b


def _triton_error_map(image, recon, mode, brain_mask, mean, std, eps, clamp, dim, bins, hrange):
    image = image.contiguous()
    recon = recon.contiguous()
    A, Zn, B = _as3(tuple(image.shape), dim)
    out = torch.empty_like(image)
    dev = image.device
    ssum = torch.zeros(Zn, dtype=torch.float32, device=dev)
    scnt = torch.zeros(Zn, dtype=torch.float32, device=dev)
    hist = torch.zeros(bins, dtype=torch.int32, device=dev)

    def aux(t):
        if t is None:
            return image, 1
        t = t.contiguous()
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        return t, t.numel()

    m, mm = aux(brain_mask)
    mu, mmu = aux(mean)
    sd, msd = aux(std)
    if B == 1:
        BB, BZ = 1, min(next_pow2(Zn), 256)
        BA = max(1, min(4096 // BZ, next_pow2(A)))
    else:
        BZ, BB = 1, min(next_pow2(B), 4096)
        BA = max(1, min(4096 // BB, next_pow2(A)))
    lo, hi = clamp
    hlo, hhi = hrange if hrange is not None else (0.0, 0.0)
    hscale = bins / (hhi - hlo) if hhi > hlo else 0.0
    grid = (triton.cdiv(A, BA) * triton.cdiv(Zn, BZ) * triton.cdiv(B, BB),)
    if image.numel():
        _error_map_kernel[grid](image, recon, m, mu, sd, out, ssum, scnt, hist,
                                A, Zn, B, mm, mmu, msd,
                                float(lo if lo is not None else 0.0), float(hi if hi is not None else 0.0),
                                float(eps), float(hlo), float(hhi), float(hscale), bins,
                                MODE=_MODE_CODE[mode], HAS_MASK=brain_mask is not None, HAS_MEAN=mean is not None,
                                HAS_STD=std is not None, CLO=lo is not None, CHI=hi is not None,
                                HIST=hrange is not None, NBP=next_pow2(bins + 1), BA=BA, BZ=BZ, BB=BB)
    return out, ssum, scnt, hist.to(torch.int64)


# ----------------------------------------------------------------------------- torch reference
def _hist_ref(values: torch.Tensor, valid: torch.Tensor | None, bins: int, lo: float, hi: float) -> torch.Tensor:
    """Histogram with torch.histc's rule, which the kernel follows: bin = int((v - lo) / (hi - lo) * bins)
    for lo <= v <= hi (values outside are dropped, the last bin includes hi). ``valid`` None = all."""
    v = values.to(torch.float32)
    v = v.reshape(-1) if valid is None else v[valid]
    if hi <= lo:
        out = torch.zeros(bins, dtype=torch.int64, device=v.device)
        out[0] = int((v == lo).sum())
        return out
    return torch.histc(v, bins, lo, hi).to(torch.int64)


def error_map_reference(image, recon, mode="abs", brain_mask=None, mean=None, std=None, eps=1e-6,
                        clamp=(None, None), dim=-1, bins=256, hrange=None):
    e = image.to(torch.float32) - recon.to(torch.float32)
    if mode == "abs":
        e = e.abs()
    elif mode == "squared":
        e = e * e
    elif mode == "positive":
        e = e.clamp_min(0.0)
    if mean is not None:
        e = e - mean.to(torch.float32)
    if std is not None:
        e = e / (std.to(torch.float32) + eps)
    lo, hi = clamp
    if lo is not None:
        e = e.clamp_min(lo)
    if hi is not None:
        e = e.clamp_max(hi)
    if brain_mask is not None:
        valid = (brain_mask != 0).expand(e.shape)
        e = torch.where(valid, e, torch.zeros((), device=e.device))
        other = tuple(i for i in range(e.ndim) if i != dim)
        scnt = valid.to(torch.float32).sum(other) if other else valid.to(torch.float32)
    else:
        valid = None
        scnt = torch.full((e.shape[dim],), float(e.numel() // max(e.shape[dim], 1)), device=e.device)
    other = tuple(i for i in range(e.ndim) if i != dim)
    ssum = e.sum(other) if other else e.clone()
    hist = _hist_ref(e, valid, bins, *hrange) if hrange is not None else None
    return e.to(image.dtype), ssum, scnt, hist


# ----------------------------------------------------------------------------- public API
def _check_aux(op, name, t, image):
    if t is None:
        return None
    check_tensor(name, t, op=op)
    if t.ndim > image.ndim or tuple(t.shape) != tuple(image.shape[image.ndim - t.ndim:]):
        raise ValueError(f"{op}: {name} must have the image shape {tuple(image.shape)} or a trailing part of it, "
                         f"got {tuple(t.shape)}")
    return t


def error_map(image: torch.Tensor, recon: torch.Tensor, *, mode: str = "abs", brain_mask: torch.Tensor | None = None,
              mean: torch.Tensor | None = None, std: torch.Tensor | None = None, eps: float = 1e-6,
              clamp: tuple[float | None, float | None] | None = None, slice_dim: int = -1, bins: int = 256,
              hist_range: tuple[float, float] | None = None, backend: str = "auto") -> ErrorMap:
    """Error map, per-slice scores and histogram of ``image`` vs ``recon`` (see module doc).

    Histogram range: ``hist_range`` if given, else ``clamp`` when both bounds are set (both fused
    into the single pass), else the min/max of the in-brain map (then a second, cheap pass bins
    the stored map)."""
    op = "error_map"
    check_tensor("image", image, ndims=(1, 2, 3, 4, 5), dtypes=FLOAT_DTYPES, op=op)
    check_tensor("recon", recon, dtypes=FLOAT_DTYPES, op=op)
    if recon.shape != image.shape:
        raise ValueError(f"{op}: recon must have the image shape {tuple(image.shape)}, got {tuple(recon.shape)}")
    check_choice("mode", mode, MODES, op=op)
    brain_mask = _check_aux(op, "brain_mask", brain_mask, image)
    mean = _check_aux(op, "mean", mean, image)
    std = _check_aux(op, "std", std, image)
    for name, t in (("mean", mean), ("std", std)):
        if t is not None and t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{op}: {name} must have dtype in {[str(d) for d in FLOAT_DTYPES]}, got {t.dtype}")
    check_same_device(op, image=image, recon=recon, brain_mask=brain_mask, mean=mean, std=std)
    if not isinstance(slice_dim, int) or not -image.ndim <= slice_dim < image.ndim:
        raise ValueError(f"{op}: slice_dim must be an int in [{-image.ndim}, {image.ndim}), got {slice_dim!r}")
    dim = slice_dim % image.ndim
    if not isinstance(bins, int) or bins <= 0:
        raise ValueError(f"{op}: bins must be a positive int, got {bins!r}")
    clamp = (None, None) if clamp is None else tuple(clamp)
    if len(clamp) != 2:
        raise ValueError(f"{op}: clamp must be (lo, hi) with None for an open bound, got {clamp!r}")
    if clamp[0] is not None and clamp[1] is not None and clamp[0] > clamp[1]:
        raise ValueError(f"{op}: clamp lo must be <= hi, got {clamp}")
    hrange = hist_range
    if hrange is None and clamp[0] is not None and clamp[1] is not None:
        hrange = clamp
    if hrange is not None:
        hrange = (float(hrange[0]), float(hrange[1]))
        if not hrange[0] <= hrange[1]:
            raise ValueError(f"{op}: hist_range must be (lo, hi) with lo <= hi, got {hist_range}")
    impl = resolve_backend(backend, image.device, kernel="triton", op=op)
    if impl == "triton":
        out, ssum, scnt, hist = _triton_error_map(image, recon, mode, brain_mask, mean, std, eps, clamp, dim, bins,
                                                  hrange)
    else:
        out, ssum, scnt, hist = error_map_reference(image, recon, mode, brain_mask, mean, std, eps, clamp, dim, bins,
                                                    hrange)
    if hrange is None:  # range from the data: bin the stored map (same rule) in a second pass
        valid = (brain_mask != 0).expand(out.shape) if brain_mask is not None else None
        vals = out.to(torch.float32)
        sel = vals[valid] if valid is not None else vals
        lo, hi = (float(sel.min()), float(sel.max())) if sel.numel() else (0.0, 0.0)
        hrange = (lo, hi)
        hist = _hist_ref(vals, valid, bins, lo, hi)
    scores = torch.where(scnt > 0, ssum / scnt.clamp_min(1.0), torch.zeros_like(ssum))
    edges = torch.linspace(hrange[0], hrange[1], bins + 1, dtype=torch.float32, device=image.device)
    return ErrorMap(out, scores, hist, edges)
