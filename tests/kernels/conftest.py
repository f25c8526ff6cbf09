"""Kernel tests. On a machine without CUDA the Triton kernels run in the Triton CPU interpreter
(TRITON_INTERPRET=1 is set here before any kernel module is imported); on a GPU machine the
compiled kernels run on CUDA tensors (tests marked `gpu`), and the CPU-interpreter variants are
skipped unless TRITON_INTERPRET=1 was set by the caller."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped, with the reason shown, where none is present)")


def _interp_ok() -> bool:
    from uad_kernels._common import has_triton, triton_interpret

    return has_triton() and triton_interpret()


# Where the Triton kernels are exercised: CPU tensors through the interpreter, CUDA tensors compiled.
KERNEL_DEVICES = [
    pytest.param("cpu", id="cpu-interpreter",
                 marks=pytest.mark.skipif(not _interp_ok(), reason="Triton interpreter off (TRITON_INTERPRET unset) "
                                          "or triton missing")),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu,
                                           pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]),
]


@pytest.fixture(params=KERNEL_DEVICES)
def kdev(request) -> str:
    return request.param


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
