"""PatchDDM inference on tensors: calling the eps network on the whole volume or tile by tile, and
turning an ensemble of samples into mean and uncertainty.

Kept apart from the detector (which needs SimpleITK for its I/O) so that the GPU benchmark and
tests run on machines that hold only torch and numpy. See detectors/patchddm.py and docs/patchddm.md.
"""
from __future__ import annotations

from uad_kernels import remove_small_components, sliding_window_inference


def network_call(model, roi: tuple[int, ...] | None, overlap: float = 0.5, cuda: bool = False):
    """eps = net(cat(cond, x_t), t) over the whole volume at once, or tile by tile (roi) with
    Gaussian overlap-add through uad_kernels.sliding_window_inference."""
    import torch

    def whole(x, t):
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            return model(x, t).float()

    if roi is None:
        return whole

    def tiled(x, t):

        # every tile of one call shares the step's timestep; the coordinate channels are the whole
        # volume's ramps cut with the tile, so a position means the same in every tile
        return sliding_window_inference(x, roi, 1, lambda p: whole(p, t[:1].expand(p.shape[0])),
                                        overlap=overlap, mode="gaussian")

    return tiled


def tile_roi(tile: int, divisor: int, grid: tuple[int, ...]) -> tuple[int, ...] | None:
    """Tile size per axis for a padded model grid, or None for whole-volume inference. Axes shorter
    than the tile are covered by one tile of their full length (no padding with fake coordinates)."""
    if tile <= 0:
        return None
    if tile % divisor or tile < 2 * divisor:
        # at least 2 voxels at the deepest level: GroupNorm needs more than one value per group
        raise ValueError(f"parameter 'tile': expected 0 or a multiple of {divisor} (the network's downsampling "
                         f"factor) of at least {2 * divisor}, received {tile}")
    roi = tuple(min(tile, g) for g in grid)
    return None if roi == tuple(grid) else roi


def ensemble_maps(samples, remove_isolated: bool = True, isolated_voxels: int = 2):
    """(mean, normalised variance, voxels removed) of samples (N, X, Y, Z) in [0, 1].

    With remove_isolated, each sample's foreground (>= 0.5) components of at most isolated_voxels
    voxels (26-connected) are set to 0 first. The variance is divided by 0.25, the largest variance of
    values in [0, 1], so the uncertainty lies in [0, 1] (1: half the samples say lesion)."""
    import torch

    s = samples.float().clone()
    removed = 0
    if remove_isolated and isolated_voxels > 0:
        for i in range(s.shape[0]):
            fg = s[i] >= 0.5
            keep = torch.as_tensor(remove_small_components(fg, isolated_voxels + 1, connectivity=3), device=s.device)
            drop = fg & ~keep
            removed += int(drop.sum())
            s[i][drop] = 0.0
    mean = s.mean(0)
    unc = (s.var(0, unbiased=False) / 0.25).clamp(0, 1) if s.shape[0] > 1 else torch.zeros_like(mean)
    return mean, unc, removed
