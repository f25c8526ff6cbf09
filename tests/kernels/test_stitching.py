"""Op 4: overlap-add stitching, against monai.inferers.sliding_window_inference."""
from __future__ import annotations

import pytest
import torch

from uad_kernels import importance_map, overlap_add, sliding_window_inference, sliding_window_starts
from uad_kernels.testing import assert_close

monai = pytest.importorskip("monai", reason="monai is not installed: stitching parity with MONAI not tested")
from monai.data.utils import compute_importance_map, dense_patch_slices  # noqa: E402
from monai.inferers import sliding_window_inference as monai_swi  # noqa: E402


def make_predictor(cin, cout, d, device):
    torch.manual_seed(0)
    conv = (torch.nn.Conv3d if d == 3 else torch.nn.Conv2d)(cin, cout, 3, padding=1).to(device)
    return lambda t: conv(t.float())


@pytest.mark.parametrize("roi,mode", [((7, 8, 5), "gaussian"), ((16, 16), "gaussian"), ((3, 4, 5), "constant"),
                                      ((9, 9, 9), "gaussian")])
def test_importance_map_equals_monai(roi, mode):
    assert torch.equal(importance_map(roi, mode), compute_importance_map(roi, mode))


@pytest.mark.parametrize("image,roi,overlap", [((37, 41, 29), (16, 16, 16), 0.5), ((256, 256, 256), (96, 96, 96), 0.5),
                                               ((10, 7), (10, 3), 0.25), ((13, 9), (4, 4), 0.6)])
def test_window_grid_equals_monai(image, roi, overlap):
    interval = [r if r == s else max(int(r * (1 - overlap)), 1) for r, s in zip(roi, image)]
    expect = [[s.start for s in sl] for sl in dense_patch_slices(image, roi, interval)]
    assert sliding_window_starts(image, roi, overlap).tolist() == expect


CASES = [((2, 2, 13, 11, 9), (6, 5, 4), 0.5, "gaussian"),   # odd sizes, batch of 2
         ((1, 1, 5, 11, 9), (8, 5, 4), 0.25, "constant"),  # window larger than the image on axis 0: padding
         ((1, 3, 17, 12), (6, 6), 0.5, "gaussian")]        # 2D, 3 channels


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("shape,roi,overlap,mode", CASES)
def test_sliding_window_inference_equals_monai(shape, roi, overlap, mode, backend):
    if backend == "triton":
        from uad_kernels._common import triton_interpret
        if not triton_interpret():
            pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    pred = make_predictor(shape[1], 2, len(roi), "cpu")
    with torch.no_grad():
        expect = monai_swi(x, roi, 4, pred, overlap=overlap, mode=mode)
    got = sliding_window_inference(x, roi, 4, pred, overlap=overlap, mode=mode, backend=backend)
    assert got.shape == expect.shape
    assert_close(got, expect.float(), scale=10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape,roi,overlap,mode", CASES + [((1, 1, 64, 70, 50), (32, 32, 32), 0.5, "gaussian")])
def test_sliding_window_inference_equals_monai_cuda(shape, roi, overlap, mode):
    x = torch.randn(shape, device="cuda")
    pred = make_predictor(shape[1], 2, len(roi), "cuda")
    with torch.no_grad():
        expect = monai_swi(x, roi, 4, pred, overlap=overlap, mode=mode)
    got = sliding_window_inference(x, roi, 4, pred, overlap=overlap, mode=mode)
    assert_close(got, expect.float(), scale=10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_weight", [False, True])
def test_overlap_add_triton_matches_reference(kdev, dtype, with_weight):
    g = torch.Generator().manual_seed(2)
    spatial, roi = (9, 7, 5), (4, 3, 5)
    starts = sliding_window_starts(spatial, roi, 0.5).to(kdev)
    patches = torch.randn((len(starts), 2, *roi), generator=g).to(dtype).to(kdev)
    w = importance_map(roi, "gaussian", device=kdev) if with_weight else None
    outs = []
    for backend in ("triton", "reference"):
        out = torch.zeros(2, *spatial, device=kdev)
        count = torch.zeros(spatial, device=kdev)
        overlap_add(patches, starts, out, w, count, backend=backend)
        outs.append((out, count))
    assert_close(outs[0][0], outs[1][0], torch.float32, scale=10)
    assert_close(outs[0][1], outs[1][1], torch.float32)


@pytest.mark.parametrize("call,match", [
    (lambda: overlap_add(torch.zeros(1, 1, 3, 3), torch.zeros(1, 2, dtype=torch.long), torch.zeros(2, 5, 5)),
     "out must have 1 channels"),
    (lambda: overlap_add(torch.zeros(1, 1, 3, 3), torch.tensor([[3, 0]]), torch.zeros(1, 5, 5)), "starts must lie in"),
    (lambda: overlap_add(torch.zeros(1, 1, 3, 3), torch.zeros(1, 2, dtype=torch.long),
                         torch.zeros(1, 5, 5, dtype=torch.float16)),
     "out must have dtype"),
    (lambda: sliding_window_starts((8, 8), (4, 4), 1.0), r"overlap must be in \[0, 1\)"),
    (lambda: sliding_window_inference(torch.zeros(1, 1, 8, 8), (4, 0), 2, lambda t: t), "roi_size must be positive"),
    (lambda: sliding_window_inference(torch.zeros(1, 1, 8, 8), 4, 0, lambda t: t), "sw_batch_size must be a positive"),
    (lambda: sliding_window_inference(torch.zeros(1, 1, 8, 8), 4, 2, lambda t: t[:, :, :2]), "predictor must return"),
])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
