"""Op 2: sliding-window inpainting. Reference vs per-window loop oracle; Triton vs reference."""
from __future__ import annotations

import pytest
import torch

from uad_kernels import finalize_heatmap, inpaint_batch, inpaint_heatmap, inpaint_scores, inpaint_windows
from uad_kernels.testing import assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def box_slices(start, box):
    return tuple(slice(s, s + b) for s, b in zip(start, box))


def oracle(recon, image, starts, box, metric, mask, reduce):
    """Per-window loop (test-only) of scores and the overlap-averaged / max heat map."""
    spatial = image.shape[1:]
    heat = torch.zeros(spatial)
    count = torch.zeros(spatial)
    scores = []
    for k, st in enumerate(starts.tolist()):
        sl = box_slices(st, box)
        e = (recon[k][(slice(None), *sl)].float() - image[(slice(None), *sl)].float())
        e = e.abs() if metric == "l1" else e ** 2
        if mask is not None:
            w = mask[sl].float().expand_as(e)
            s = (e * w).sum() / w.sum() if w.sum() > 0 else torch.tensor(0.0)
        else:
            s = e.mean()
        scores.append(s)
        heat[sl] = torch.maximum(heat[sl], s) if reduce == "max" else heat[sl] + s
        count[sl] += 1
    return torch.stack(scores), finalize_heatmap(heat, count, reduce)


CASES = [((2, 11, 9), (4, 3), (3, 2)), ((1, 7, 6, 5), (3, 4, 2), 2), ((1, 8, 8), (8, 8), 1), ((3, 5, 7), (1, 1), 3)]


@pytest.mark.parametrize("metric", ["l1", "l2"])
@pytest.mark.parametrize("reduce", ["mean", "max"])
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("shape,box,stride", CASES)
def test_reference_matches_loop_oracle(shape, box, stride, metric, reduce, use_mask):
    torch.manual_seed(0)
    image = torch.randn(shape)
    mask = torch.rand(shape[1:]) > 0.7 if use_mask else None
    starts = inpaint_windows(shape[1:], box, stride)
    copies = inpaint_batch(image, starts, box, fill=-1.5, backend="reference")
    for k, st in enumerate(starts.tolist()):
        expect = image.clone()
        expect[(slice(None), *box_slices(st, box))] = -1.5
        assert torch.equal(copies[k], expect)
    recon = torch.randn_like(copies)
    scores, heat, count = inpaint_scores(recon, image, starts, box, metric=metric, brain_mask=mask, reduce=reduce,
                                         backend="reference")
    o_scores, o_heat = oracle(recon, image, starts, box, metric, mask, reduce)
    assert_close(scores, o_scores)
    assert_close(finalize_heatmap(heat, count, reduce), o_heat)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,box,stride", CASES)
def test_triton_batch_matches_reference(kdev, dtype, shape, box, stride):
    torch.manual_seed(1)
    image = torch.randn(shape).to(dtype).to(kdev)
    starts = inpaint_windows(shape[1:], box, stride, device=kdev)
    got = inpaint_batch(image, starts, box, fill=0.25, backend="triton")
    ref = inpaint_batch(image, starts, box, fill=0.25, backend="reference")
    assert got.dtype == dtype
    assert_close(got, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric,reduce,use_mask", [("l1", "mean", False), ("l2", "max", True), ("l1", "max", False),
                                                    ("l2", "mean", True)])
@pytest.mark.parametrize("shape,box,stride", CASES[:3])
def test_triton_scores_heatmap_match_reference(kdev, dtype, metric, reduce, use_mask, shape, box, stride):
    torch.manual_seed(2)
    image = torch.randn(shape).to(dtype).to(kdev)
    mask = (torch.rand(shape[1:]) > 0.6).to(kdev) if use_mask else None
    starts = inpaint_windows(shape[1:], box, stride, device=kdev)
    recon = torch.randn((len(starts), *shape)).to(dtype).to(kdev)
    s1, h1, c1 = inpaint_scores(recon, image, starts, box, metric=metric, brain_mask=mask, reduce=reduce,
                                backend="triton")
    s2, h2, c2 = inpaint_scores(recon, image, starts, box, metric=metric, brain_mask=mask, reduce=reduce,
                                backend="reference")
    assert_close(s1, s2, torch.float32)
    assert_close(h1, h2, torch.float32)
    assert torch.equal(c1, c2)


def test_chunked_accumulation_equals_one_shot(kdev):
    torch.manual_seed(3)
    image = torch.randn(2, 12, 10, device=kdev)
    starts = inpaint_windows((12, 10), 4, 2, device=kdev)
    recon = torch.randn(len(starts), 2, 12, 10, device=kdev)
    s_all, h_all, c_all = inpaint_scores(recon, image, starts, 4, backend="triton")
    heat = torch.zeros(12, 10, device=kdev)
    count = torch.zeros(12, 10, device=kdev)
    for i in range(0, len(starts), 7):
        inpaint_scores(recon[i:i + 7], image, starts[i:i + 7], 4, heat=heat, count=count, backend="triton")
    assert_close(heat, h_all)
    assert torch.equal(count, c_all)


def test_windows_only_brain_and_full_cover():
    assert inpaint_windows((256, 256), 16, 4).shape == (3721, 2)
    mask = torch.zeros(40, 40, dtype=torch.bool)
    mask[20, 20] = True
    starts = inpaint_windows((40, 40), 8, 4, brain_mask=mask)
    assert len(starts) > 0
    for x, y in starts.tolist():  # every kept box holds the brain voxel, every dropped one does not
        assert x <= 20 < x + 8 and y <= 20 < y + 8
    assert len(starts) == 4  # starts 16 and 20 on each axis


def test_inpaint_heatmap_end_to_end(kdev):
    """An oracle model that inpaints perfectly except in a 'lesion' gives a heat map peaking there."""
    torch.manual_seed(4)
    healthy = torch.zeros(1, 24, 24, device=kdev)
    image = healthy.clone()
    image[0, 10:13, 10:13] = 5.0

    def model(copies):  # restores the healthy image under the box, keeps the rest
        return torch.where(copies == -1.0, healthy.expand_as(copies), copies)

    backend = "triton" if kdev == "cpu" else "auto"
    res = inpaint_heatmap(image, model, box=4, stride=2, fill=-1.0, batch_size=10, backend=backend)
    ref = inpaint_heatmap(image, model, box=4, stride=2, fill=-1.0, batch_size=1000, backend="reference")
    assert res.starts.shape == (121, 2) and res.scores.shape == (121,)
    assert_close(res.heatmap, ref.heatmap)
    peak = torch.nonzero(res.heatmap == res.heatmap.max())
    assert ((peak >= 8) & (peak <= 14)).all()
    assert res.heatmap[0, 0] == 0 and res.heatmap[23, 23] == 0


@pytest.mark.parametrize("call,match", [
    (lambda: inpaint_batch(torch.zeros(1, 8, 8), torch.zeros(1, 2, dtype=torch.long), 9), "box .* must not be larger"),
    (lambda: inpaint_batch(torch.zeros(1, 8, 8), torch.tensor([[5, 0]]), 4), r"starts must lie in \[0, image - box\]"),
    (lambda: inpaint_batch(torch.zeros(8, 8), torch.zeros(1, 2, dtype=torch.long), 4), "image must have 3 or 4"),
    (lambda: inpaint_windows((8, 8), 4, 0), "stride must be positive"),
    (lambda: inpaint_windows((8, 8), 4, 2, brain_mask=torch.ones(7, 8)), r"brain_mask must have shape \(8, 8\)"),
    (lambda: inpaint_scores(torch.zeros(2, 1, 8, 8), torch.zeros(1, 8, 8), torch.zeros(1, 2, dtype=torch.long), 4),
     r"recon must have shape \(K, \*image.shape\)"),
    (lambda: inpaint_scores(torch.zeros(1, 1, 8, 8), torch.zeros(1, 8, 8), torch.zeros(1, 2, dtype=torch.long), 4,
                            metric="l3"), "metric must be one of"),
    (lambda: inpaint_heatmap(torch.zeros(1, 8, 8), lambda x: x, box=4, only_brain=True), "brain_mask is required"),
])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
