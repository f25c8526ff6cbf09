"""Op 5: post-processing. CPU path vs scipy / scikit-image; GPU path (cupyx + RawKernel) vs the
CPU path; the RawKernel's CUDA source compiles with nvcc wherever nvcc exists."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from skimage.filters import threshold_otsu

from uad_kernels import (
    binary_opening,
    connected_components,
    grey_erosion,
    median_filter,
    otsu_threshold,
    remove_small_components,
)
from uad_kernels._common import has_cupy
from uad_kernels.postprocess import MASKED_HISTOGRAM_SRC, _otsu_from_hist


def blobs(shape=(37, 41, 29), seed=0):
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.random(shape), 1.5) > 0.52


@pytest.mark.parametrize("connectivity", [1, 2, 3])
def test_connected_components_cpu(connectivity):
    m = blobs()
    labels, n = connected_components(torch.from_numpy(m), connectivity=connectivity, min_size=20)
    assert isinstance(labels, torch.Tensor) and labels.dtype == torch.int32
    ref, nref = ndi.label(m, ndi.generate_binary_structure(3, connectivity))
    sizes = np.bincount(ref.ravel())
    big = [i for i in range(1, nref + 1) if sizes[i] >= 20]
    assert n == len(big) and set(np.unique(labels.numpy())) == set(range(n + 1))
    assert np.array_equal(labels.numpy() > 0, np.isin(ref, big))
    assert np.array_equal(remove_small_components(m, 20, connectivity=connectivity), np.isin(ref, big))


def test_filters_cpu_match_scipy():
    rng = np.random.default_rng(1)
    x = rng.random((9, 8, 7)).astype(np.float32)
    np.testing.assert_array_equal(median_filter(x, 3), ndi.median_filter(x, 3))
    np.testing.assert_array_equal(grey_erosion(torch.from_numpy(x), (3, 1, 2)).numpy(), ndi.grey_erosion(x, (3, 1, 2)))
    m = x > 0.4
    np.testing.assert_array_equal(binary_opening(m), ndi.binary_opening(m))
    np.testing.assert_array_equal(binary_opening(m, structure=np.ones((3, 3, 3)), iterations=2),
                                  ndi.binary_opening(m, np.ones((3, 3, 3)), iterations=2))


def test_otsu_cpu_is_skimage_and_histogram_formula_agrees():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 1, 4000), rng.normal(5, 1.5, 2000)]).astype(np.float32)
    t = otsu_threshold(torch.from_numpy(x))
    assert t == pytest.approx(float(threshold_otsu(x, nbins=256)), abs=1e-6)
    lo, hi = float(x.min()), float(x.max())
    counts, _ = np.histogram(x, 256, (lo, hi))  # the GPU path's formula, on numpy
    assert _otsu_from_hist(np, counts, lo, hi) == pytest.approx(t, abs=(hi - lo) / 256)
    mask = x > -1
    assert otsu_threshold(x, mask=mask) == pytest.approx(float(threshold_otsu(x[mask], nbins=256)), abs=1e-6)


@pytest.mark.parametrize("call,match", [
    (lambda: connected_components([1, 0, 1]), "mask must be a torch.Tensor, numpy.ndarray or cupy.ndarray"),
    (lambda: connected_components(np.ones((3, 3)), connectivity=3), r"connectivity must be in \[1, 2\]"),
    (lambda: connected_components(np.ones((3, 3)), min_size=-1), "min_size must be an int >= 0"),
    (lambda: median_filter(np.ones((3, 3)), (3, 3, 3)), "size must be a positive int or 2 positive ints"),
    (lambda: otsu_threshold(np.ones((3, 3)), mask=np.ones((2, 3))), "mask must have the shape of x"),
    (lambda: otsu_threshold(np.ones((3, 3)), bins=1), "bins must be an int >= 2"),
    (lambda: grey_erosion(np.ones((3, 3)), backend="triton"), "backend must be 'auto', 'reference' or 'cupy'"),
])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_rawkernel_source_compiles_with_nvcc(tmp_path):
    src = tmp_path / "masked_histogram.cu"
    src.write_text(MASKED_HISTOGRAM_SRC)
    res = subprocess.run(["nvcc", "--ptx", "-arch=sm_90", "-o", str(tmp_path / "k.ptx"), str(src)],
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    assert ".entry masked_histogram" in (tmp_path / "k.ptx").read_text(encoding="utf-8")


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and has_cupy()), reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("connectivity", [1, 3])
@pytest.mark.parametrize("min_size", [0, 20])
def test_connected_components_gpu_matches_cpu(connectivity, min_size):
    m = torch.from_numpy(blobs())
    lg, ng = connected_components(m.cuda(), connectivity=connectivity, min_size=min_size)
    lc, nc = connected_components(m, connectivity=connectivity, min_size=min_size)
    assert lg.is_cuda and ng == nc
    lg = lg.cpu().numpy()
    lc = lc.numpy()
    assert np.array_equal(lg > 0, lc > 0)
    pairs = {(a, b) for a, b in zip(lg.ravel(), lc.ravel()) if a}
    assert len(pairs) == nc  # same partition, labels may differ by a permutation


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and has_cupy()), reason="needs a CUDA GPU and CuPy")
def test_filters_gpu_match_cpu():
    x = torch.rand(37, 41, 29)
    xc = x.cuda()
    assert torch.equal(median_filter(xc, 3).cpu(), median_filter(x, 3))
    assert torch.equal(grey_erosion(xc, (3, 1, 2)).cpu(), grey_erosion(x, (3, 1, 2)))
    m = x > 0.4
    assert torch.equal(binary_opening(m.cuda()).cpu(), binary_opening(m))


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and has_cupy()), reason="needs a CUDA GPU and CuPy")
def test_otsu_gpu_within_one_bin_of_skimage():
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(40000, generator=g), torch.randn(20000, generator=g) * 1.5 + 5]).view(60, 1000)
    mask = torch.rand(60, 1000, generator=g) > 0.2
    for mk in (None, mask):
        t_cpu = otsu_threshold(x, mask=mk)
        t_gpu = otsu_threshold(x.cuda(), mask=None if mk is None else mk.cuda())
        vals = x[mk] if mk is not None else x
        assert abs(t_gpu - t_cpu) <= float(vals.max() - vals.min()) / 256 + 1e-6
