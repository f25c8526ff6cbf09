"""The local box evaluator gives G's own output inside each box (borders, odd boxes, any start),
and its heat map equals uad_kernels.inpaint_heatmap with the same G."""
import pytest
import torch

from uad_label.networks.inpainting import InpaintGenerator
from uad_label.networks.inpainting_local import LocalBoxInpainter, local_inpaint_heatmap


def _generator(size: int, ngf: int = 4, upsample: str = "bicubic", seed: int = 0) -> InpaintGenerator:
    torch.manual_seed(seed)
    g = InpaintGenerator(ngf=ngf, num_downs=size.bit_length() - 1, upsample=upsample)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for m in g.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return g.eval()


def _full_boxes(g, image, starts, box, fill):
    copies = image[None].repeat(len(starts), 1, 1, 1)
    for i, (r, c) in enumerate(starts.tolist()):
        copies[i, :, r:r + box, c:c + box] = fill
    with torch.no_grad():
        full = g(copies)
    return torch.stack([full[i, :, r:r + box, c:c + box] for i, (r, c) in enumerate(starts.tolist())])


@pytest.mark.parametrize("size, box, upsample", [(32, 8, "bicubic"), (64, 16, "bicubic"), (64, 5, "bicubic"),
                                                 (32, 7, "bilinear"), (32, 1, "bicubic")])
def test_box_outputs_equal_the_full_generator(size, box, upsample):
    g = _generator(size, upsample=upsample)
    image = torch.rand(1, size, size)
    n = size - box
    starts = torch.tensor([[0, 0], [n, n], [0, n], [n, 0], [size // 2 - 3, size // 2 + 1], [1, 3], [n - 1, 2],
                           [5, n - 3]])
    local = LocalBoxInpainter(g)
    local.set_image(image)
    out = local(starts, box, 1.0)
    ref = _full_boxes(g, image, starts, box, 1.0)
    assert out.shape == ref.shape == (len(starts), 1, box, box)
    assert float(ref.abs().max()) > 0.01
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric, score_in_brain, reduce", [("l1", False, "mean"), ("l2", True, "max")])
def test_heatmap_equals_the_batched_kernel_path(metric, score_in_brain, reduce):
    from uad_kernels import inpaint_heatmap

    g = _generator(32, seed=1)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    brain = ((yy - 15.5) ** 2 + (xx - 14) ** 2) < 11 ** 2
    image = torch.rand(32, 32) * brain
    kw = dict(box=8, stride=3, fill=1.0, metric=metric, brain_mask=brain, only_brain=True,
              score_in_brain=score_in_brain, reduce=reduce)
    ref = inpaint_heatmap(image[None], g, batch_size=64, **kw)
    got = local_inpaint_heatmap(LocalBoxInpainter(g), image, batch_size=13, **kw)
    assert torch.equal(got.starts, ref.starts)
    torch.testing.assert_close(got.scores, ref.scores, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got.heatmap, ref.heatmap, rtol=1e-4, atol=1e-6)


def test_misuse_is_named():
    g = _generator(32)
    with pytest.raises(ValueError, match="eval mode"):
        LocalBoxInpainter(g.train())
    local = LocalBoxInpainter(g.eval())
    with pytest.raises(ValueError, match="set_image"):
        local(torch.zeros(1, 2, dtype=torch.long), 8, 1.0)
    with pytest.raises(ValueError, match=r"expected \(1, 32, 32\)"):
        local.set_image(torch.rand(1, 30, 32))
    local.set_image(torch.rand(1, 32, 32))
    with pytest.raises(ValueError, match="starts"):
        local(torch.zeros(3, dtype=torch.long), 8, 1.0)
    with pytest.raises(ValueError, match="metric"):
        local_inpaint_heatmap(local, torch.rand(32, 32), metric="l3", brain_mask=torch.ones(32, 32, dtype=bool))
