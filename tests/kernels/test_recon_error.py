"""Op 3: reconstruction error map. Reference vs a numpy oracle; Triton vs reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from uad_kernels import error_map
from uad_kernels.testing import assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def oracle(x, r, mode, mask, mean, std, eps, clamp, dim, bins, hrange):
    x = x.float().numpy().astype(np.float64)
    r = r.float().numpy().astype(np.float64)
    e = x - r
    e = {"signed": e, "abs": np.abs(e), "squared": e ** 2, "positive": np.maximum(e, 0)}[mode]
    if mean is not None:
        e = e - mean.numpy()
    if std is not None:
        e = e / (std.numpy() + eps)
    if clamp is not None:
        e = np.clip(e, clamp[0], clamp[1])
    valid = np.broadcast_to(mask.numpy() != 0, e.shape) if mask is not None else np.ones(e.shape, bool)
    e = np.where(valid, e, 0.0)
    ax = dim % e.ndim
    ev = np.moveaxis(e, ax, 0).reshape(e.shape[ax], -1)
    vv = np.moveaxis(valid, ax, 0).reshape(e.shape[ax], -1)
    cnt = vv.sum(1)
    scores = np.where(cnt > 0, ev.sum(1) / np.maximum(cnt, 1), 0.0)
    hist, _ = np.histogram(e[valid], bins=bins, range=hrange)
    return e, scores, hist


SHAPES = [((2, 9, 7, 5), -1), ((2, 9, 7, 5), 1), ((37,), 0), ((3, 4, 5), 0), ((1,), 0), ((5, 33), -1)]


@pytest.mark.parametrize("mode", ["signed", "abs", "squared", "positive"])
@pytest.mark.parametrize("shape,dim", SHAPES)
def test_reference_matches_numpy_oracle(mode, shape, dim):
    torch.manual_seed(0)
    x, r = torch.randn(shape), torch.randn(shape)
    trailing = shape[1:] if len(shape) > 1 else shape
    mask = torch.rand(trailing) > 0.3
    mean, std = torch.randn(trailing) * 0.1, torch.rand(trailing) + 0.5
    got = error_map(x, r, mode=mode, brain_mask=mask, mean=mean, std=std, clamp=(-1.0, 2.0), slice_dim=dim, bins=16,
                    backend="reference")
    e, scores, hist = oracle(x, r, mode, mask, mean, std, 1e-6, (-1.0, 2.0), dim, 16, (-1.0, 2.0))
    torch.testing.assert_close(got.map, torch.from_numpy(e).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.slice_scores, torch.from_numpy(scores).float(), rtol=1e-5, atol=1e-5)
    # bin edges may differ by float rounding for values exactly on an edge: allow a handful
    assert int((got.histogram - torch.from_numpy(hist)).abs().sum()) <= 2
    assert got.bin_edges.shape == (17,) and float(got.bin_edges[0]) == -1.0 and float(got.bin_edges[-1]) == 2.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["signed", "abs", "squared", "positive"])
@pytest.mark.parametrize("shape,dim", SHAPES[:4])
def test_triton_matches_reference(kdev, dtype, mode, shape, dim):
    torch.manual_seed(1)
    x = torch.randn(shape).to(dtype).to(kdev)
    r = torch.randn(shape).to(dtype).to(kdev)
    trailing = shape[1:] if len(shape) > 1 else shape
    mask = (torch.rand(trailing) > 0.3).to(kdev)
    mean, std = (torch.randn(trailing) * 0.1).to(kdev), (torch.rand(trailing) + 0.5).to(kdev)
    kw = dict(mode=mode, brain_mask=mask, mean=mean, std=std, clamp=(-1.0, None), slice_dim=dim, bins=10,
              hist_range=(-1.0, 3.0))
    a = error_map(x, r, backend="triton", **kw)
    b = error_map(x, r, backend="reference", **kw)
    assert a.map.dtype == dtype
    assert_close(a.map, b.map)
    assert_close(a.slice_scores, b.slice_scores, torch.float32, scale=10)
    assert int((a.histogram - b.histogram).abs().sum()) <= 2


@pytest.mark.parametrize("with_range", [False, True])
def test_triton_without_optional_inputs(kdev, with_range):
    torch.manual_seed(2)
    x, r = torch.randn(3, 6, 7, device=kdev), torch.randn(3, 6, 7, device=kdev)
    kw = dict(hist_range=(0.0, 2.0)) if with_range else {}
    a = error_map(x, r, backend="triton", **kw)
    b = error_map(x, r, backend="reference", **kw)
    assert_close(a.map, b.map)
    assert_close(a.slice_scores, b.slice_scores)
    assert torch.equal(a.histogram, b.histogram)
    if not with_range:
        assert int(a.histogram.sum()) == x.numel()


def test_histogram_counts_only_brain_voxels():
    x = torch.ones(4, 4)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2] = True
    res = error_map(x, torch.zeros(4, 4), brain_mask=mask, bins=4, hist_range=(0.0, 2.0))
    assert res.histogram.tolist() == [0, 0, 8, 0]
    assert res.slice_scores.tolist() == [1.0] * 4  # mean over the brain voxels of each slice
    assert float(res.map[3].abs().sum()) == 0


@pytest.mark.parametrize("call,match", [
    (lambda: error_map(torch.zeros(3, 3), torch.zeros(3, 4)), "recon must have the image shape"),
    (lambda: error_map(torch.zeros(3, 3, dtype=torch.int64), torch.zeros(3, 3)), "image must have dtype"),
    (lambda: error_map(torch.zeros(3, 3), torch.zeros(3, 3), mode="l1"), "mode must be one of"),
    (lambda: error_map(torch.zeros(3, 3), torch.zeros(3, 3), brain_mask=torch.ones(2, 3)),
     "brain_mask must have the image shape"),
    (lambda: error_map(torch.zeros(3, 3), torch.zeros(3, 3), slice_dim=2), r"slice_dim must be an int in \[-2, 2\)"),
    (lambda: error_map(torch.zeros(3, 3), torch.zeros(3, 3), bins=0), "bins must be a positive int"),
    (lambda: error_map(torch.zeros(3, 3), torch.zeros(3, 3), clamp=(2, 1)), "clamp lo must be <= hi"),
    (lambda: error_map(torch.zeros(3, 3), torch.zeros(3, 3, device="meta")), "same device"),
])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_error_map_past_2_31_elements_cuda():
    n = 2 ** 31 + 4099
    x = torch.zeros(n, dtype=torch.float16, device="cuda")
    r = torch.zeros(n, dtype=torch.float16, device="cuda")
    x[-3:] = 2.0
    res = error_map(x.view(1, -1), r.view(1, -1), slice_dim=0, bins=4, hist_range=(0.0, 4.0))
    assert float(res.map[0, -1]) == 2.0 and float(res.map[0, -4]) == 0.0
    assert int(res.histogram[2]) == 3
    del x, r, res
    torch.cuda.empty_cache()
