"""The fast segmenter's network and its tensor-level inference: MONAI's SegResNet (Myronenko 2018, without
the VAE branch), one logit channel, whole-volume or sliding-window inference (MONAI's), and test-time
augmentation by flips whose spread is the uncertainty. Shared by the detector and the trainer."""
from __future__ import annotations

import torch

from ..errors import InputError

# the flipped passes of test-time augmentation, in the order `tta` takes them (spatial axes of (X, Y, Z))
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))
NETWORK_KEYS = {"init_filters", "blocks_down", "blocks_up", "num_groups", "dropout_prob"}


def build(cfg: dict) -> torch.nn.Module:
    """SegResNet from a model card's `network` entry: in_channels, init_filters, blocks_down, blocks_up,
    num_groups (group norm; must divide init_filters), dropout_prob."""
    from monai.networks.nets import SegResNet

    groups = int(cfg.get("num_groups", 8))
    return SegResNet(spatial_dims=3, in_channels=int(cfg["in_channels"]), out_channels=1,
                     init_filters=int(cfg["init_filters"]), blocks_down=tuple(cfg["blocks_down"]),
                     blocks_up=tuple(cfg["blocks_up"]), norm=("GROUP", {"num_groups": groups}),
                     dropout_prob=cfg.get("dropout_prob"))


def set_prior(model: torch.nn.Module, prior: float) -> None:
    """Start the output at probability `prior` everywhere (the last convolution's bias = logit(prior); Lin et
    al.'s focal-loss initialisation): lesions are rare, and a network starting at 0.5 spends its first hundreds of
    steps learning that the background is background."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)][-1]
    with torch.no_grad():
        last.bias.fill_(float(torch.logit(torch.tensor(prior))))


def divisor(cfg: dict) -> int:
    """Input sizes must be multiples of this (one stride-2 convolution per level below the first)."""
    return 2 ** (len(cfg["blocks_down"]) - 1)


def check_network(cfg: dict) -> None:
    """InputError naming the setting when a network entry cannot build (checked before any data is read)."""
    unknown = sorted(set(cfg) - NETWORK_KEYS - {"in_channels"})
    if unknown:
        raise InputError(f"network: unknown key(s) {unknown}: expected some of {sorted(NETWORK_KEYS)}")
    down, up = list(cfg.get("blocks_down", ())), list(cfg.get("blocks_up", ()))
    if not down or len(up) != len(down) - 1 or not all(isinstance(b, int) and b >= 1 for b in down + up):
        raise InputError(f"network: expected blocks_down (n whole numbers >= 1) and blocks_up (n - 1 of them), "
                         f"received blocks_down={down}, blocks_up={up}")
    f, g = cfg.get("init_filters"), cfg.get("num_groups", 8)
    if not (isinstance(f, int) and isinstance(g, int) and f >= 1 and g >= 1 and f % g == 0):
        raise InputError(f"network: expected whole init_filters divisible by num_groups, received "
                         f"init_filters={f!r}, num_groups={g!r}")


def _logits(model, x, roi, overlap: float, sw_batch: int):
    """Logits of (1, C, X, Y, Z), X..Z multiples of the divisor: one call, or MONAI's Gaussian-blended
    sliding window of `roi` voxels."""
    if not roi:
        return model(x)
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(x, roi, sw_batch, model, overlap=overlap, mode="gaussian")


@torch.inference_mode()
def predict(model, x: torch.Tensor, tta: int = 0, roi=None, overlap: float = 0.25, sw_batch: int = 1,
            callback=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(probability, uncertainty or None) of x (1, C, X, Y, Z), each (X, Y, Z).

    The probability is the mean sigmoid over the plain pass and `tta` flipped passes (TTA_FLIPS, each flip
    undone on its output); the uncertainty is their variance divided by 0.25 (the largest variance of values in
    [0, 1]; PatchDDM's normalisation), so it lies in [0, 1]; None without flipped passes."""
    flips = ((),) + TTA_FLIPS[:tta]
    probs = []
    for i, axes in enumerate(flips):
        dims = [a + 2 for a in axes]
        xi = x.flip(dims) if dims else x
        p = torch.sigmoid(_logits(model, xi, roi, overlap, sw_batch).float())
        probs.append((p.flip(dims) if dims else p)[0, 0])
        if callback:
            callback(i + 1, len(flips))
    s = torch.stack(probs)
    mean = s.mean(0)
    unc = (s.var(0, unbiased=False) / 0.25).clamp(0, 1) if len(probs) > 1 else None
    return mean, unc
