"""Package-level behaviour: lazy imports, dispatch rules, the tolerance rule."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import uad_kernels
from uad_kernels import _common, error_map
from uad_kernels.testing import tolerance


def test_import_needs_neither_triton_nor_cupy():
    """With triton and cupy made unimportable, the package imports and every op runs its reference."""
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('triton', 'cupy', 'cupyx', 'monai'):
                    raise ImportError('blocked ' + name)
        sys.meta_path.insert(0, Block())
        import torch, uad_kernels
        assert not any(m.split('.')[0] in ('triton', 'cupy') for m in sys.modules)
        from uad_kernels import (gather_patches, inpaint_batch, inpaint_windows, error_map, sliding_window_inference,
                                 median_filter)
        x = torch.randn(1, 8, 8)
        gather_patches(x, torch.tensor([[1, 2]]), 3)
        inpaint_batch(x, inpaint_windows((8, 8), 4, 2), 4)
        error_map(x, x)
        sliding_window_inference(x[None], (4, 4), 2, lambda t: t)
        median_filter(x, 3)
        print('ok')
    """)
    env = dict(os.environ, UAD_KERNELS_BACKEND="")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr


def test_lazy_exports():
    assert set(uad_kernels.__all__) >= {"gather_patches", "error_map", "overlap_add", "otsu_threshold"}
    with pytest.raises(AttributeError):
        uad_kernels.not_an_op  # noqa: B018


def test_dispatch_rules(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("UAD_KERNELS_BACKEND", raising=False)
    assert _common.resolve_backend("auto", cpu, kernel="triton", op="t") == "reference"
    if _common.has_triton():
        assert _common.resolve_backend("auto", cuda, kernel="triton", op="t") == "triton"
    assert _common.resolve_backend("reference", cuda, kernel="triton", op="t") == "reference"
    monkeypatch.setenv("UAD_KERNELS_BACKEND", "reference")
    assert _common.resolve_backend("auto", cuda, kernel="triton", op="t") == "reference"
    monkeypatch.delenv("UAD_KERNELS_BACKEND")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs TRITON_INTERPRET=1"):
        _common.resolve_backend("triton", cpu, kernel="triton", op="t")
    with pytest.raises(ValueError, match="backend must be 'auto', 'reference' or 'triton'"):
        _common.resolve_backend("cupy", cpu, kernel="triton", op="t")


def test_cpu_auto_never_calls_the_kernel(monkeypatch):
    import uad_kernels.recon_error as em

    def boom(*a, **k):
        raise AssertionError("kernel called for CPU tensors under backend='auto'")

    monkeypatch.setattr(em, "_triton_error_map", boom)
    monkeypatch.delenv("UAD_KERNELS_BACKEND", raising=False)
    error_map(torch.zeros(3, 3), torch.ones(3, 3))


def test_tolerance_rule():
    assert tolerance(torch.float32) == {"rtol": 1e-5, "atol": 1e-5}
    assert tolerance(torch.float16)["rtol"] == pytest.approx(4 * 2 ** -10)
    assert tolerance(torch.bfloat16)["rtol"] == pytest.approx(4 * 2 ** -7)


def test_one_dispatch_rule_for_every_op(monkeypatch):
    """Post-processing dispatches through resolve_backend like the Triton ops: a bad
    UAD_KERNELS_BACKEND is named, not silently taken as auto (it was, before one rule)."""
    import numpy as np

    from uad_kernels import postprocess

    monkeypatch.setenv("UAD_KERNELS_BACKEND", "bogus")
    with pytest.raises(ValueError, match="backend must be one of"):
        postprocess.remove_small_components(np.ones((4, 4, 4), bool), min_size=2)
    with pytest.raises(ValueError, match="backend must be one of"):
        error_map(torch.zeros(3, 3), torch.ones(3, 3))
    monkeypatch.setenv("UAD_KERNELS_BACKEND", "reference")
    assert postprocess.remove_small_components(np.ones((4, 4, 4), bool), min_size=2).all()
    monkeypatch.delenv("UAD_KERNELS_BACKEND")
    with pytest.raises(ValueError, match="backend must be 'auto', 'reference' or 'cupy'"):
        postprocess.remove_small_components(np.ones((4, 4, 4), bool), min_size=2, backend="triton")
