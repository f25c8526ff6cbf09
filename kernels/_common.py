"""Shared helpers: backend dispatch, argument validation, optional-dependency probes.

Nothing here imports Triton or CuPy at module import time, nor torch: the post-processing ops on NumPy arrays
(uad_label's components of every detector) dispatch without it (1.5 s of CPU saved per `uad evaluate`).
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

BACKENDS = ("auto", "reference", "triton", "cupy")
ENV_BACKEND = "UAD_KERNELS_BACKEND"


@functools.lru_cache(maxsize=None)
def has_triton() -> bool:
    """True when the `triton` package imports (first called when a kernel module loads)."""
    try:
        if importlib.util.find_spec("triton") is None:
            return False
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - missing or broken install: use the references
        return False
    return True


@functools.lru_cache(maxsize=None)
def has_cupy() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        if importlib.util.find_spec("cupy") is None:
            return False
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no driver, no device, wrong toolkit: all mean "no CuPy"
        return False


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def __getattr__(name: str):
    if name == "FLOAT_DTYPES":  # the float dtypes the kernels take (torch imported on first use)
        import torch

        return (torch.float32, torch.float16, torch.bfloat16)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_backend(backend: str | None, device: torch.device | str, *, kernel: str, op: str) -> str:
    """Pick the implementation for one call.

    ``backend`` is "auto" (default), "reference", or the op's kernel backend (``kernel``:
    "triton" or "cupy"). The environment variable UAD_KERNELS_BACKEND, when set, replaces
    "auto" (so ``UAD_KERNELS_BACKEND=reference`` forces every op onto the torch reference).

    auto: CUDA tensors -> the kernel when its package is importable, else the reference;
    CPU tensors -> the reference. A forced "triton" on CPU tensors needs TRITON_INTERPRET=1
    (the Triton interpreter), which is how the parity tests run the kernels without a GPU.
    ``device`` is a torch.device or its type ("cpu", "cuda").
    """
    device_type = device if isinstance(device, str) else device.type
    if backend is None or backend == "auto":
        backend = os.environ.get(ENV_BACKEND, "auto") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device_type == "cuda":
            ok = has_triton() if kernel == "triton" else has_cupy()
            return kernel if ok else "reference"
        return "reference"
    if backend == "reference":
        return "reference"
    if backend != kernel:
        raise ValueError(f"{op}: backend must be 'auto', 'reference' or {kernel!r} for this op, got {backend!r}")
    if kernel == "cupy" and not has_cupy():
        raise ValueError(f"{op}: backend='cupy' requested but CuPy with a CUDA device is not available")
    if kernel == "triton":
        if not has_triton():
            raise ValueError(f"{op}: backend='triton' requested but the triton package is not installed")
        if device_type != "cuda" and not triton_interpret():
            raise ValueError(
                f"{op}: backend='triton' on {device_type} tensors needs TRITON_INTERPRET=1 "
                f"(the Triton CPU interpreter); got TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r}"
            )
    return backend


# ----------------------------------------------------------------------------- validation
def check_tensor(name: str, t, *, ndims: Sequence[int] | None = None, dtypes=None, op: str) -> torch.Tensor:
    import torch

    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndims is not None and t.ndim not in tuple(ndims):
        raise ValueError(f"{op}: {name} must have {' or '.join(map(str, ndims))} dimensions, "
                         f"got {t.ndim} (shape {tuple(t.shape)})")
    if dtypes is not None and t.dtype not in tuple(dtypes):
        raise ValueError(f"{op}: {name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    return t


def check_same_device(op: str, **tensors) -> torch.device:
    items = [(k, v) for k, v in tensors.items() if v is not None]
    dev = items[0][1].device
    for k, v in items[1:]:
        if v.device != dev:
            raise ValueError(f"{op}: {k} must be on the same device as {items[0][0]} ({dev}), got {v.device}")
    return dev


def check_sizes(name: str, value, d: int, *, op: str, minimum: int = 1) -> tuple[int, ...]:
    """An int or a sequence of d ints, each >= minimum."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * d
    try:
        out = tuple(int(v) for v in value)
        if any(float(v) != int(v) for v in value):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"{op}: {name} must be an int or a sequence of {d} ints, got {value!r}") from None
    if len(out) != d:
        raise ValueError(f"{op}: {name} must have {d} entries (one per spatial dimension), got {len(out)}: {out}")
    if any(v < minimum for v in out):
        what = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{op}: {name} must be {what} in every dimension, got {out}")
    return out


def check_choice(name: str, value, choices, *, op: str):
    if value not in choices:
        raise ValueError(f"{op}: {name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_fits(op: str, name: str, window: Sequence[int], spatial: Sequence[int]) -> None:
    if any(w > s for w, s in zip(window, spatial)):
        raise ValueError(f"{op}: {name} {tuple(window)} must not be larger than the image {tuple(spatial)}")


# ----------------------------------------------------------------------------- grids
def axis_starts(n: int, window: int, stride: int) -> list[int]:
    """Start indices along one axis covering [0, n): 0, stride, ... and a last window flush with
    the end (the rule of monai.data.utils.dense_patch_slices)."""
    if window >= n:
        return [0]
    count = math.ceil((n - window) / stride) + 1
    return [min(i * stride, n - window) for i in range(count)]


def grid_starts(spatial_shape: Sequence[int], window: Sequence[int] | int, stride: Sequence[int] | int,
                *, device=None) -> torch.Tensor:
    """(W, d) int64 window corners of a regular grid that covers the whole image, in C order
    (the last axis fastest, as MONAI's dense_patch_slices). 256 with window 16 and stride 4 gives
    61 starts per axis (0..240), so the image is covered to its last row."""
    import torch

    op = "grid_starts"
    spatial = tuple(int(s) for s in spatial_shape)
    d = len(spatial)
    window = check_sizes("window", window, d, op=op)
    stride = check_sizes("stride", stride, d, op=op)
    check_fits(op, "window", window, spatial)
    axes = [torch.tensor(axis_starts(n, w, s), dtype=torch.int64) for n, w, s in zip(spatial, window, stride)]
    mesh = torch.meshgrid(*axes, indexing="ij")
    out = torch.stack([m.reshape(-1) for m in mesh], dim=1)
    return out.to(device) if device is not None else out


def pad_to3(values: Sequence[int], fill: int) -> tuple[int, int, int]:
    v = tuple(values)
    return v + (fill,) * (3 - len(v))


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()
