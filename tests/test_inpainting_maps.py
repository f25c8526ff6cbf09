"""One slice's inpainting heat map on tensors (networks.inpainting_maps): the exact map equals the
published per-window loop of the same G with either engine, on the CPU and on CUDA; R's fast map
averages its predicted box errors. Imports no SimpleITK, so the GPU machine's image runs it."""
import numpy as np
import pytest
import torch

from uad_label.networks.inpainting import InpaintConfig, build_generator
from uad_label.networks.inpainting_maps import exact_slice_map, fast_slice_map


def _loop_heatmap(g, img, brain, box, stride, fill):
    """The published per-window loop: one G pass per window position touching the brain."""
    S = img.shape[-1]
    heat = torch.zeros(S, S)
    count = torch.zeros(S, S)
    with torch.no_grad():
        for x0 in list(range(0, S - box + 1, stride)):
            for y0 in list(range(0, S - box + 1, stride)):
                if not brain[x0:x0 + box, y0:y0 + box].any():
                    continue
                copy = img.clone()
                copy[x0:x0 + box, y0:y0 + box] = fill
                rec = g(copy[None, None])[0, 0]
                score = (rec[x0:x0 + box, y0:y0 + box] - img[x0:x0 + box, y0:y0 + box]).abs().mean()
                heat[x0:x0 + box, y0:y0 + box] += score
                count[x0:x0 + box, y0:y0 + box] += 1
    return heat / count.clamp_min(1)


def _disk(S, r):
    yy, xx = np.mgrid[:S, :S]
    return torch.from_numpy(((yy - S / 2) ** 2 + (xx - S / 2) ** 2) < r * r)


def _random_case(size: int, box: int):
    """(config, random G, disk brain, random slice inside it)."""
    torch.manual_seed(0)
    cfg = InpaintConfig(slice_size=size, ngf=4, box=box)
    brain = _disk(size, 3 * size // 8)
    return cfg, build_generator(cfg).eval(), brain, torch.rand(size, size) * brain


@pytest.mark.parametrize("engine", ["batched", "local"])
def test_batched_heatmap_equals_a_per_window_loop_of_the_same_generator(engine):
    cfg, g, brain, img = _random_case(32, 8)
    batched, used = exact_slice_map(g, img, brain, box=8, stride=3, fill=cfg.fill, batch_size=17,  # odd batch
                                    engine=engine)
    assert used == engine
    loop = _loop_heatmap(g, img, brain, 8, 3, cfg.fill)
    assert batched.shape == (32, 32)
    assert float(loop.max()) > 0
    torch.testing.assert_close(batched, loop, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("engine", ["batched", "local"])
def test_batched_heatmap_on_cuda_matches_the_cpu_loop_within_bf16_tolerance(engine):
    cfg, g, brain, img = _random_case(64, 16)
    loop = _loop_heatmap(g, img, brain, 16, 4, cfg.fill)
    batched, _ = exact_slice_map(g.cuda(), img.cuda(), brain.cuda(), box=16, stride=4, fill=cfg.fill,
                                 batch_size=512, engine=engine)
    torch.testing.assert_close(batched.cpu(), loop, rtol=0.05, atol=0.02)


def test_exact_map_names_a_bad_engine():
    cfg = InpaintConfig(slice_size=32, ngf=4, box=8)
    with pytest.raises(ValueError, match="parameter 'engine'.*received 'fused'"):
        exact_slice_map(build_generator(cfg).eval(), torch.rand(32, 32), _disk(32, 12), box=8, stride=4,
                        fill=cfg.fill, batch_size=8, engine="fused")


def test_fast_map_spreads_the_regressor_scores_over_each_box():
    """A regressor that answers the masked copy's mean intensity: boxes over the bright half hide
    bright pixels and score lower; the map is the overlap average of the scores times err_scale."""
    class MeanOf(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(1, 2, 3))

    img = torch.zeros(24, 24)
    img[:, 12:] = 1.0
    brain = torch.zeros(24, 24, dtype=torch.bool)
    brain[4:20, 4:20] = True
    heat = fast_slice_map(MeanOf(), img, brain, box=8, stride=4, fill=0.0, err_scale=2.0, batch_size=5)
    assert heat.shape == (24, 24)
    assert float(heat[10, 2]) > float(heat[10, 20]) > 0
    assert float(heat.max()) <= 2.0 * float(img.mean()) + 1e-6
    box_score = 2.0 * float((img.sum() - img[0:8, 16:24].sum()) / img.numel())  # the corner window alone
    assert float(heat[0, 23]) == pytest.approx(box_score, rel=1e-5)
