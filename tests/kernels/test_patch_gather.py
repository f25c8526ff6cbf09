"""Op 1: patch gather. Reference vs a per-patch loop oracle; Triton kernel vs reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from uad_kernels import extract_patches, gather_patches, grid_patches, grid_starts
from uad_kernels.testing import assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NP_MODE = {"zero": "constant", "reflect": "reflect", "replicate": "edge"}


def oracle(image, centers, patch, padding, coords):
    """One patch at a time with numpy.pad (a loop: test-only)."""
    img = image.float().numpy()
    d = img.ndim - 1
    m = max(patch) + max(img.shape[1:]) + 8
    padded = np.pad(img, [(0, 0)] + [(m, m)] * d, mode=NP_MODE[padding])
    out = []
    for c in centers.tolist():
        s = [ci - p // 2 for ci, p in zip(c, patch)]
        sl = tuple(slice(si + m, si + m + p) for si, p in zip(s, patch))
        vals = padded[(slice(None), *sl)]
        if coords:
            grids = np.meshgrid(*[np.arange(si, si + p) / max(n - 1, 1) for si, p, n in zip(s, patch, img.shape[1:])],
                                indexing="ij")
            if coords == "symmetric":
                grids = [2 * g - 1 for g in grids]
            vals = np.concatenate([vals, np.stack(grids)], 0)
        out.append(vals)
    return torch.from_numpy(np.stack(out).astype(np.float32))


def rand_centers(shape, n, margin, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(-margin, s + margin, (n,), generator=g) for s in shape], 1)


@pytest.mark.parametrize("padding", ["zero", "reflect", "replicate"])
@pytest.mark.parametrize("coords", [None, "unit", "symmetric"])
@pytest.mark.parametrize("shape,patch", [((3, 37, 41, 29), (5, 6, 7)), ((2, 13, 9), (4, 7)), ((1, 1, 1), (3, 2)),
                                         ((2, 4, 3), (9, 10))])
def test_reference_matches_loop_oracle(shape, patch, padding, coords):
    torch.manual_seed(0)
    image = torch.randn(shape)
    centers = rand_centers(shape[1:], 6, 4 + max(patch))
    got = gather_patches(image, centers, patch, padding=padding, coords=coords, backend="reference")
    assert got.shape == (6, shape[0] + (len(patch) if coords else 0), *patch) and got.is_contiguous()
    torch.testing.assert_close(got, oracle(image, centers, patch, padding, coords), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding", ["zero", "reflect", "replicate"])
@pytest.mark.parametrize("shape,patch,coords", [((3, 37, 41, 29), (5, 6, 7), "unit"), ((2, 13, 9), (4, 7), "symmetric"),
                                                ((1, 1, 1), (3, 2), "unit"), ((2, 5, 1, 3), (2, 3, 4), None)])
def test_triton_matches_reference(kdev, dtype, padding, shape, patch, coords):
    torch.manual_seed(1)
    image = torch.randn(shape).to(dtype).to(kdev)
    centers = rand_centers(shape[1:], 5, 3 + max(patch), seed=2).to(kdev)
    got = gather_patches(image, centers, patch, padding=padding, coords=coords, backend="triton")
    ref = gather_patches(image, centers, patch, padding=padding, coords=coords, backend="reference")
    assert got.dtype == dtype and got.shape == ref.shape and got.is_contiguous()
    assert_close(got, ref)


def test_triton_non_contiguous_image(kdev):
    torch.manual_seed(3)
    image = torch.randn(9, 7, 2).permute(2, 0, 1).to(kdev)  # (2, 9, 7), channels last in memory
    centers = rand_centers((9, 7), 4, 3).to(kdev)
    assert_close(gather_patches(image, centers, (3, 5), padding="reflect", backend="triton"),
                 gather_patches(image, centers, (3, 5), padding="reflect", backend="reference"))


def test_grid_patches_cover_and_match_slicing(kdev):
    torch.manual_seed(4)
    image = torch.randn(2, 11, 10).to(kdev)
    patches, starts = grid_patches(image, (4, 3), (3, 3), backend="triton")
    assert starts[:, 0].unique().tolist() == [0, 3, 6, 7] and starts[:, 1].unique().tolist() == [0, 3, 6, 7]
    for k, (x, y) in enumerate(starts.tolist()):
        assert torch.equal(patches[k], image[:, x:x + 4, y:y + 3])


def test_grid_starts_published_protocol():
    starts = grid_starts((256, 256), 16, 4)
    assert starts.shape == (3721, 2)  # 61 x 61, the whole slice covered
    assert starts[-1].tolist() == [240, 240] and starts[1].tolist() == [0, 4]
    covered = torch.zeros(256, 256)
    for x in starts[:, 0].unique().tolist():
        covered[x:x + 16] = 1
    assert covered.all()


def test_extract_patches_corner_form():
    image = torch.arange(2 * 5 * 6, dtype=torch.float32).view(2, 5, 6)
    got = extract_patches(image, torch.tensor([[1, 2]]), (2, 3))
    assert torch.equal(got[0], image[:, 1:3, 2:5])


@pytest.mark.parametrize("call,match", [
    (lambda: gather_patches(torch.zeros(5, 5), torch.zeros(1, 2, dtype=torch.long), 3),
     "image must have 3 or 4 dimensions"),
    (lambda: gather_patches(torch.zeros(1, 5, 5, dtype=torch.int32), torch.zeros(1, 2, dtype=torch.long), 3),
     "image must have dtype"),
    (lambda: gather_patches(torch.zeros(1, 5, 5), torch.zeros(1, 2), 3), "centers must have an integer dtype"),
    (lambda: gather_patches(torch.zeros(1, 5, 5), torch.zeros(1, 3, dtype=torch.long), 3),
     r"centers must have shape \(N, 2\)"),
    (lambda: gather_patches(torch.zeros(1, 5, 5), torch.zeros(1, 2, dtype=torch.long), (3, 0)),
     "patch_size must be positive"),
    (lambda: gather_patches(torch.zeros(1, 5, 5), torch.zeros(1, 2, dtype=torch.long), 3, padding="wrap"),
     "padding must be one of"),
    (lambda: gather_patches(torch.zeros(1, 5, 5), torch.zeros(1, 2, dtype=torch.long), 3, coords="pixel"),
     "coords must be one of"),
    (lambda: grid_patches(torch.zeros(1, 5, 5), 6, 1),
     r"patch_size \(6, 6\) must not be larger than the image \(5, 5\)"),
    (lambda: grid_patches(torch.zeros(1, 5, 5), 2, 0), "stride must be positive"),
    (lambda: gather_patches(torch.zeros(1, 5, 5), torch.zeros(1, 2, dtype=torch.long, device="meta"), 3),
     "same device"),
    (lambda: gather_patches(torch.zeros(1, 5, 5), torch.zeros(1, 2, dtype=torch.long), 3, backend="cuda"),
     "backend must be one of"),
])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gather_64bit_offsets_cuda():
    """Output past 2^31 elements: the last patch must land at the right place."""
    image = torch.randn(1, 64, 64, 64, device="cuda", dtype=torch.float16)
    n = (2 ** 31) // (32 ** 3) + 2
    centers = torch.zeros(n, 3, dtype=torch.long, device="cuda") + 32
    centers[-1] = torch.tensor([10, 20, 30], device="cuda")
    out = gather_patches(image, centers, 32)
    assert out.numel() > 2 ** 31
    assert torch.equal(out[-1], gather_patches(image, centers[-1:], 32, backend="reference")[0])
    del out
    torch.cuda.empty_cache()


@pytest.mark.parametrize("shape,patch", [((3, 37, 41, 29), (5, 6, 7)), ((2, 13, 9), (13, 1))])
def test_reference_inside_image_fast_path_matches_oracle(shape, patch):
    """All patches inside the image take the unfold path of the reference."""
    torch.manual_seed(5)
    image = torch.randn(shape)
    g = torch.Generator().manual_seed(6)
    centers = torch.stack([torch.randint(p // 2, s - (p - p // 2) + 1, (7,), generator=g)
                           for s, p in zip(shape[1:], patch)], 1)
    got = gather_patches(image, centers, patch, backend="reference")
    torch.testing.assert_close(got, oracle(image, centers, patch, "zero", None), rtol=0, atol=0)
