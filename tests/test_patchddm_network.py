"""PatchDDM on tensors: the published U-Net, coordinate channels, tiled network calls and the ensemble's
mean and uncertainty (networks.patchddm, networks.patchddm_inference). Imports no SimpleITK, so the
GPU machine's image runs it."""
import pytest
import torch

from uad_label.networks.patchddm import PUBLISHED, PatchDDMUNet, coordinate_channels, norm_groups
from uad_label.networks.patchddm_inference import ensemble_maps, network_call, tile_roi

TINY = {"base_channels": 4, "channel_mult": [1, 2], "num_res_blocks": 1}


def test_published_unet_shape_and_averaging_skips():
    net = PatchDDMUNet(in_channels=7, **PUBLISHED)
    assert [b[0].conv1.out_channels for b in net.down_blocks] == [29, 87, 116, 116, 116, 116, 116]
    assert net.divisor == 64 and norm_groups(29) == 29 and norm_groups(116) == 29
    assert not any("attn" in n.lower() for n, _ in net.named_modules())
    # averaging skips keep each decoder level at its encoder width (a concatenating U-Net doubles it)
    assert [b[0].conv1.in_channels for b in net.up_blocks] == [116, 116, 116, 116, 116, 87, 29]
    assert 21e6 < sum(p.numel() for p in net.parameters()) < 22e6


def test_unet_forward_and_bad_sizes():
    net = PatchDDMUNet(in_channels=7, **TINY).eval()
    x = torch.randn(2, 7, 8, 6, 4)
    with torch.no_grad():
        out = net(x, torch.tensor([0, 999]))
    assert out.shape == (2, 1, 8, 6, 4)
    assert torch.count_nonzero(out) == 0  # zero-initialised output layer: eps = 0 before training
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.randn(1, 7, 7, 6, 4), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\(B, 7, X, Y, Z\)"):
        net(torch.randn(1, 6, 8, 6, 4), torch.tensor([1]))


def test_coordinates_span_whole_volume_and_survive_cropping():
    full = coordinate_channels((9, 5, 3))
    assert full.shape == (3, 9, 5, 3)
    assert full[0, 0].min() == -1 and full[0, -1].max() == 1 and full[2, :, :, 1].abs().max() == 0
    crop = coordinate_channels((4, 2, 2), start=(3, 1, 1), full=(9, 5, 3))
    torch.testing.assert_close(crop, full[:, 3:7, 1:3, 1:3])
    padded = coordinate_channels((12, 5, 3), full=(9, 5, 3))  # padding extrapolates the ramps
    torch.testing.assert_close(padded[:, :9], full)
    assert padded[0, 11, 0, 0] == pytest.approx(1 + 3 * 2 / 8)


def test_ensemble_maps_mean_variance_and_isolated_voxels():
    s = torch.zeros(4, 10, 10, 10)
    s[:, 2:6, 2:6, 2:6] = 1.0  # every sample agrees on a blob
    s[:2, 8, 8, 8] = 1.0  # two samples add an isolated speck
    s[:2, 0:2, 7:9, 0:2] = 1.0  # two samples add an 8-voxel component (kept)
    mean, unc, removed = ensemble_maps(s, True, 2)
    assert removed == 2 and mean[8, 8, 8] == 0 and unc[8, 8, 8] == 0
    assert mean[3, 3, 3] == 1 and unc[3, 3, 3] == 0
    assert mean[0, 7, 0] == 0.5 and unc[0, 7, 0] == pytest.approx(1.0)  # 2 of 4 samples: maximal uncertainty
    mean, unc, removed = ensemble_maps(s, False, 2)
    assert removed == 0 and mean[8, 8, 8] == 0.5
    _, unc1, _ = ensemble_maps(s[:1], True, 2)
    assert unc1.abs().max() == 0  # one sample has no spread


def test_tile_roi_rules():

    assert tile_roi(0, 8, (64, 64, 48)) is None
    assert tile_roi(64, 8, (64, 64, 48)) is None  # one tile = the whole volume: the published path
    assert tile_roi(32, 8, (64, 72, 24)) == (32, 32, 24)
    with pytest.raises(ValueError, match="parameter 'tile': expected 0 or a multiple of 8.*received 20"):
        tile_roi(20, 8, (64, 64, 64))
    with pytest.raises(ValueError, match="at least 16, received 8"):
        tile_roi(8, 8, (64, 64, 64))


def test_tiles_cut_the_whole_volume_coordinates_and_share_the_timestep():
    """A pointwise stand-in network makes tiled = whole exactly when every tile sees the whole
    volume's coordinate ramps and the step's timestep; ramps rebuilt per tile would break it."""

    class Pointwise(torch.nn.Module):
        def forward(self, x, t):
            assert t.shape == (x.shape[0],)
            return x[:, 3:4] * 2 - x[:, 4:5] + x[:, 5:6] ** 2 + x[:, 6:7] * x[:, 0:1] + t.view(-1, 1, 1, 1, 1) * 1e-3

    size = (20, 16, 12)
    cond = torch.cat([torch.rand(3, *size), coordinate_channels(size)])[None].expand(2, -1, -1, -1, -1)
    x = torch.cat([cond, torch.randn(2, 1, *size)], 1)
    t = torch.full((2,), 640)
    whole = network_call(Pointwise(), None)(x, t)
    tiled = network_call(Pointwise(), (8, 8, 8), overlap=0.5)(x, t)
    assert tiled.shape == whole.shape == (2, 1, *size)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


def test_tiled_unet_stays_close_to_the_whole_volume():
    """GroupNorm statistics differ per tile, so tiling is an approximation; large overlapping tiles
    keep the predicted noise close to the whole-volume prediction."""

    torch.manual_seed(0)
    net = PatchDDMUNet(in_channels=7, base_channels=8, channel_mult=(1, 2), num_res_blocks=1).eval()
    for p in net.out.parameters():
        torch.nn.init.normal_(p, std=0.05)
    size = (24, 24, 16)
    x = torch.cat([torch.rand(1, 3, *size), coordinate_channels(size)[None], torch.randn(1, 1, *size)], 1)
    t = torch.tensor([300])
    with torch.inference_mode():
        whole = network_call(net, None)(x, t)
        tiled = network_call(net, (16, 16, 16), overlap=0.5)(x, t)
    rel = float((tiled - whole).abs().mean() / whole.abs().mean())
    assert 0 < rel < 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_channels_last_forward_close_to_fp32():
    net = PatchDDMUNet(in_channels=7, base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1).cuda().eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 7, 32, 32, 32, device="cuda")
    t = torch.tensor([500], device="cuda")
    with torch.inference_mode():
        ref = net(x, t)
        net_cl = net.to(memory_format=torch.channels_last_3d)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = net_cl(x.contiguous(memory_format=torch.channels_last_3d), t).float()
    assert (out - ref).abs().mean() < 0.05 * ref.abs().mean() + 1e-3


