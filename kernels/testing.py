"""Test helpers shared by tests/kernels and the benchmarks (importable on any machine)."""
from __future__ import annotations

import torch


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """The one tolerance rule of the kernel tests: rtol = atol = max(4 * eps(dtype), 1e-5).

    float32 -> 1e-5, float16 -> 3.9e-3, bfloat16 -> 3.1e-2. Kernels and references both
    accumulate in float32 and round once to the output dtype, so they differ by float32
    summation order plus at most one rounding step of the output dtype."""
    eps = torch.finfo(dtype).eps
    tol = max(4.0 * eps, 1e-5)
    return {"rtol": tol, "atol": tol}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, scale: float = 1.0):
    """torch.testing.assert_close with `tolerance(dtype)` (default: the dtype of ``expected``),
    optionally widened by ``scale`` for values that went through a long float32 sum."""
    tol = tolerance(dtype or expected.dtype)
    torch.testing.assert_close(actual.cpu(), expected.cpu(), rtol=tol["rtol"] * scale, atol=tol["atol"] * scale,
                               check_dtype=True)
