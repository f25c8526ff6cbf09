"""Op 1: patch gather (2D and 3D) at arbitrary centres or on a regular grid.

`gather_patches(image, centers, patch_size, padding=..., coords=...)` returns the patches
(N, C [+ d], *patch_size), contiguous, written in one pass. Border handling: "zero",
"reflect" (mirror without repeating the edge voxel, as torch/numpy "reflect"; indices far
outside are reflected periodically) or "replicate" (clamp). Optional coordinate channels hold
the normalised position of every patch voxel in the image: coords="unit" gives [0, 1]
(position regression), coords="symmetric" gives [-1, 1] (PatchDDM); positions outside the
image extrapolate linearly (they are the true positions, not the padded source).

Layout: this module holds the Triton kernel, its launcher and the torch reference side by side.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

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

PADDINGS = ("zero", "reflect", "replicate")
COORDS = (None, "unit", "symmetric")
_PAD_CODE = {"zero": 0, "reflect": 1, "replicate": 2}
_COORD_CODE = {None: 0, "unit": 1, "symmetric": 2}

# ----------------------------------------------------------------------------- Triton kernel
if has_triton():
    import triton
    import triton.language as tl

    @triton.jit
    def _map_index(i, n, PAD: tl.constexpr):
        """Source index along one axis for (possibly out-of-range) index i; and validity."""
        valid = (i >= 0) & (i < n)
        if PAD == 1:  # reflect, periodic with period 2(n-1)
            period = tl.maximum(2 * (n - 1), 1)
            r = tl.abs(i) % period
            src = tl.where(r >= n, period - r, r)
        else:  # zero (masked) and replicate both clamp the address
            src = tl.minimum(tl.maximum(i, 0), n - 1)
        return src, valid

    @triton.jit
    def _coord(i, n, COORD: tl.constexpr):
        denom = tl.maximum(n - 1, 1).to(tl.float32)
        u = i.to(tl.float32) / denom
        if COORD == 2:
            u = 2.0 * u - 1.0
        return u

    @triton.jit
    def _gather_kernel(img_ptr, starts_ptr, out_ptr,
                       C, COUT, X, Y, Z, sc, sx, sy, sz,
                       PX, PY, PZ, P,
                       PAD: tl.constexpr, COORD: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        n = pid // COUT
        c = pid % COUT
        k = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        kmask = k < P
        kx = k // (PY * PZ)
        ky = (k // PZ) % PY
        kz = k % PZ
        ix = tl.load(starts_ptr + n * 3 + 0) + kx
        iy = tl.load(starts_ptr + n * 3 + 1) + ky
        iz = tl.load(starts_ptr + n * 3 + 2) + kz
        if c < C:
            x, vx = _map_index(ix, X, PAD)
            y, vy = _map_index(iy, Y, PAD)
            z, vz = _map_index(iz, Z, PAD)
            lmask = kmask
            if PAD == 0:
                lmask = lmask & vx & vy & vz
            # float32 in both branches: compiled Triton needs one type for `val` after the if
            val = tl.load(img_ptr + c * sc + x * sx + y * sy + z * sz, mask=lmask, other=0.0).to(tl.float32)
        else:
            axis = c - C
            pos = tl.where(axis == 0, ix, tl.where(axis == 1, iy, iz))
            ext = tl.where(axis == 0, X, tl.where(axis == 1, Y, Z))
            val = _coord(pos, ext, COORD)
        tl.store(out_ptr + pid * P + k, val.to(out_ptr.dtype.element_ty), mask=kmask)


def _gather_triton(image: torch.Tensor, starts: torch.Tensor, patch: tuple[int, ...], padding: str,
                   coords: str | None) -> torch.Tensor:
    d = image.ndim - 1
    C = image.shape[0]
    cout = C + (d if coords else 0)
    n = starts.shape[0]
    out = torch.empty((n, cout, *patch), dtype=image.dtype, device=image.device)
    if n == 0:
        return out
    X, Y, Z = pad_to3(image.shape[1:], 1)
    strides = tuple(image.stride()) + ((0,) if d == 2 else ())
    PX, PY, PZ = pad_to3(patch, 1)
    P = PX * PY * PZ
    st = torch.zeros((n, 3), dtype=torch.int64, device=image.device)
    st[:, :d] = starts.to(torch.int64)
    BLOCK = min(1024, max(16, next_pow2(P)))
    grid = (n * cout, triton.cdiv(P, BLOCK))
    _gather_kernel[grid](image, st, out, C, cout, X, Y, Z, *strides, PX, PY, PZ, P,
                         PAD=_PAD_CODE[padding], COORD=_COORD_CODE[coords], BLOCK=BLOCK)
    return out


# ----------------------------------------------------------------------------- torch reference
def _map_index_ref(i: torch.Tensor, n: int, padding: str) -> tuple[torch.Tensor, torch.Tensor]:
    valid = (i >= 0) & (i < n)
    if padding == "reflect":
        period = max(2 * (n - 1), 1)
        r = i.abs() % period
        src = torch.where(r >= n, period - r, r)
    else:
        src = i.clamp(0, n - 1)
    return src, valid


def gather_reference(image: torch.Tensor, starts: torch.Tensor, patch_size: Sequence[int], padding: str = "zero",
                     coords: str | None = None) -> torch.Tensor:
    """Vectorised torch reference of the corner-indexed gather (same arguments as the kernel):
    one flat int64 index per patch voxel, one index_select over all channels."""
    d = image.ndim - 1
    C = image.shape[0]
    spatial = image.shape[1:]
    n = starts.shape[0]
    starts = starts.to(torch.int64)
    hi = torch.tensor([s - p for s, p in zip(spatial, patch_size)], device=starts.device)
    if coords is None and n and bool(((starts >= 0) & (starts <= hi)).all()):
        # every patch inside the image (sliding windows): index the window axes of an unfold view,
        # which copies whole rows instead of one indexed voxel at a time (about 3x faster on CPU)
        v = image
        for a in range(d):
            v = v.unfold(1 + a, patch_size[a], 1)
        return v[(slice(None), *starts.unbind(1))].transpose(0, 1).contiguous()
    lin = torch.zeros((), dtype=torch.int64, device=image.device)
    valid, raw = None, []
    for a in range(d):
        idx = starts[:, a, None] + torch.arange(patch_size[a], device=image.device)  # (N, p_a)
        shape = [n] + [1] * d
        shape[1 + a] = patch_size[a]
        src, ok = _map_index_ref(idx, spatial[a], padding)
        lin = lin * spatial[a] + src.view(shape)
        raw.append(idx.view(shape))
        ok = ok.view(shape)
        valid = ok if valid is None else valid & ok
    full = (n, *patch_size)
    vals = image.reshape(C, -1).index_select(1, lin.expand(full).reshape(-1)).view(C, *full)
    if padding == "zero":
        vals = torch.where(valid.unsqueeze(0), vals, torch.zeros((), dtype=vals.dtype, device=vals.device))
    out = vals.transpose(0, 1)
    if coords is not None:
        chans = []
        for a in range(d):
            u = raw[a].to(torch.float32) / float(max(spatial[a] - 1, 1))
            if coords == "symmetric":
                u = 2.0 * u - 1.0
            chans.append(u.expand(full))
        out = torch.cat([out, torch.stack(chans, 1).to(image.dtype)], dim=1)
    return out.contiguous()


# ----------------------------------------------------------------------------- public API
def _validate(op, image, points, patch_size, padding, coords, points_name):
    check_tensor("image", image, ndims=(3, 4), dtypes=FLOAT_DTYPES, op=op)
    d = image.ndim - 1
    check_tensor(points_name, points, ndims=(2,), op=op)
    if points.dtype.is_floating_point or points.dtype == torch.bool or points.is_complex():
        raise ValueError(f"{op}: {points_name} must have an integer dtype (voxel indices), got {points.dtype}")
    if points.shape[1] != d:
        raise ValueError(f"{op}: {points_name} must have shape (N, {d}) for a {d}D image (C, *spatial) "
                         f"of shape {tuple(image.shape)}, got {tuple(points.shape)}")
    check_same_device(op, image=image, **{points_name: points})
    patch = check_sizes("patch_size", patch_size, d, op=op)
    check_choice("padding", padding, PADDINGS, op=op)
    check_choice("coords", coords, COORDS, op=op)
    return patch


def extract_patches(image: torch.Tensor, starts: torch.Tensor, patch_size: int | Sequence[int], *,
                    padding: str = "zero", coords: str | None = None, backend: str = "auto") -> torch.Tensor:
    """Patches whose first voxel (corner) is at ``starts`` (N, d) -> (N, C [+ d], *patch_size)."""
    op = "extract_patches"
    patch = _validate(op, image, starts, patch_size, padding, coords, "starts")
    impl = resolve_backend(backend, image.device, kernel="triton", op=op)
    if impl == "triton":
        return _gather_triton(image, starts, patch, padding, coords)
    return gather_reference(image, starts, patch, padding, coords)


def gather_patches(image: torch.Tensor, centers: torch.Tensor, patch_size: int | Sequence[int], *,
                   padding: str = "zero", coords: str | None = None, backend: str = "auto") -> torch.Tensor:
    """Patches centred at ``centers`` (N, d) integer voxel indices of ``image`` (C, X, Y[, Z]).

    A patch of size p along an axis covers [c - p//2, c - p//2 + p). Returns a contiguous
    (N, C [+ d], *patch_size) tensor of the image's dtype; the d coordinate channels (x, y[, z])
    are appended when ``coords`` is "unit" ([0, 1]) or "symmetric" ([-1, 1]).
    """
    op = "gather_patches"
    patch = _validate(op, image, centers, patch_size, padding, coords, "centers")
    half = torch.tensor([p // 2 for p in patch], dtype=torch.int64, device=centers.device)
    starts = centers.to(torch.int64) - half
    impl = resolve_backend(backend, image.device, kernel="triton", op=op)
    if impl == "triton":
        return _gather_triton(image, starts, patch, padding, coords)
    return gather_reference(image, starts, patch, padding, coords)


def grid_patches(image: torch.Tensor, patch_size: int | Sequence[int], stride: int | Sequence[int], *,
                 coords: str | None = None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """All patches of a regular grid covering the image (sliding windows): returns
    (patches (W, C [+ d], *patch_size), starts (W, d) int64). The last window of each axis is
    flush with the image end (MONAI rule), so no padding is ever needed."""
    op = "grid_patches"
    check_tensor("image", image, ndims=(3, 4), dtypes=FLOAT_DTYPES, op=op)
    d = image.ndim - 1
    patch = check_sizes("patch_size", patch_size, d, op=op)
    stride_t = check_sizes("stride", stride, d, op=op)
    check_fits(op, "patch_size", patch, image.shape[1:])
    starts = grid_starts(image.shape[1:], patch, stride_t, device=image.device)
    return extract_patches(image, starts, patch, padding="zero", coords=coords, backend=backend), starts
