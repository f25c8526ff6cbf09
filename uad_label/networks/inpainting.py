"""Networks of the sliding-window inpainting detector (issue 4).

- G, `InpaintGenerator`: the pix2pix U-Net (Isola et al., `unet_256` skip blocks) with one channel in
  and out and bicubic upsampling + 3x3 conv in the decoder instead of transposed convolutions (the
  published choice over bilinear). Written by hand: MONAI's UNet has neither the pix2pix skip-block
  layout nor bicubic upsampling, and the GPU benchmark machine has no MONAI.
- D, `PatchDiscriminator`: the pix2pix PatchGAN discriminator (training only).
- R, `ErrorRegressor`: the published error regressor (1,558,273 parameters) that predicts G's box
  error from the masked slice alone.

Plain torch (no MONAI: the GPU benchmark machine has none).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class InpaintConfig:
    """Everything inference needs to rebuild G / R and cut slices as in training (stored in the
    model card and in the checkpoint's `config` entry)."""
    slice_size: int = 256  # network slice, square (published 256)
    scale: int = 1  # work volume downsampled by this factor before slicing (demo: 2)
    ngf: int = 64  # G base width (published 64)
    box: int = 16  # training box (published 16)
    fill: float = 1.0  # box fill value in normalised units ("white": the per-slice 99th percentile)
    percentile: float = 99.0  # per-slice normalisation: brain percentile mapped to 1
    clip: float = 2.0  # normalised intensities clipped to [0, clip]
    err_scale: float = 0.5  # R predicts clamp(box error / err_scale, 0, 1)

    @property
    def num_downs(self) -> int:
        return int(round(math.log2(self.slice_size)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InpaintConfig":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


class _UnetBlock(nn.Module):
    """pix2pix skip block: down (LeakyReLU, 4x4 stride-2 conv, BN) -> inner -> up (ReLU, bicubic x2,
    3x3 conv, BN), output concatenated with the input (except the outermost block)."""

    def __init__(self, outer: int, inner: int, input_nc: int | None = None, sub: nn.Module | None = None,
                 outermost: bool = False, innermost: bool = False, upsample: str = "bicubic"):
        super().__init__()
        self.outermost = outermost
        input_nc = outer if input_nc is None else input_nc
        down = nn.Conv2d(input_nc, inner, 4, 2, 1, bias=False)
        up_in = inner if innermost else inner * 2
        up = [nn.ReLU(), nn.Upsample(scale_factor=2, mode=upsample, align_corners=False),
              nn.Conv2d(up_in, outer, 3, 1, 1, bias=outermost)]
        if outermost:
            layers = [down, sub, *up]
        elif innermost:
            layers = [nn.LeakyReLU(0.2), down, *up, nn.BatchNorm2d(outer)]
        else:
            layers = [nn.LeakyReLU(0.2), down, nn.BatchNorm2d(inner), sub, *up, nn.BatchNorm2d(outer)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class InpaintGenerator(nn.Module):
    """G: (N, 1, S, S) slice with a filled box -> (N, 1, S, S) inpainted slice; S = 2**num_downs
    (the innermost feature map is 1x1, as unet_256 at 256). Linear output (normalised intensities
    are in [0, clip], not [-1, 1])."""

    def __init__(self, ngf: int = 64, num_downs: int = 8, in_ch: int = 1, out_ch: int = 1,
                 upsample: str = "bicubic"):
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"InpaintGenerator: num_downs must be >= 5 (slice >= 32), got {num_downs}")
        self.slice_size = 2 ** num_downs
        block = _UnetBlock(ngf * 8, ngf * 8, innermost=True, upsample=upsample)
        for _ in range(num_downs - 5):
            block = _UnetBlock(ngf * 8, ngf * 8, sub=block, upsample=upsample)
        block = _UnetBlock(ngf * 4, ngf * 8, sub=block, upsample=upsample)
        block = _UnetBlock(ngf * 2, ngf * 4, sub=block, upsample=upsample)
        block = _UnetBlock(ngf, ngf * 2, sub=block, upsample=upsample)
        self.net = _UnetBlock(out_ch, ngf, input_nc=in_ch, sub=block, outermost=True, upsample=upsample)

    def forward(self, x):
        if x.ndim != 4 or x.shape[-1] != self.slice_size or x.shape[-2] != self.slice_size:
            raise ValueError(f"InpaintGenerator: expected (N, C, {self.slice_size}, {self.slice_size}), "
                             f"got {tuple(x.shape)}")
        return self.net(x)


def build_generator(cfg: InpaintConfig) -> InpaintGenerator:
    return InpaintGenerator(ngf=cfg.ngf, num_downs=cfg.num_downs)


class PatchDiscriminator(nn.Module):
    """D: the pix2pix PatchGAN (NLayerDiscriminator; 70x70 receptive field at 3 layers), conditioned
    on the masked input: input = cat(masked slice, real or inpainted slice); output = patch logits.
    Written by hand rather than MONAI's PatchDiscriminator (same layout): importing `monai` costs
    over a minute on the shared CPU machine, for every training run and test."""

    def __init__(self, in_channels: int = 2, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, num_layers + 1):
            nxt = channels * min(2 ** i, 8)
            layers += [nn.Conv2d(ch, nxt, 4, 2 if i < num_layers else 1, 1, bias=False), nn.BatchNorm2d(nxt),
                       nn.LeakyReLU(0.2)]
            ch = nxt
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def patch_discriminator(in_channels: int = 2, channels: int = 64, num_layers: int = 3) -> nn.Module:
    return PatchDiscriminator(in_channels, channels, num_layers)


class ErrorRegressor(nn.Module):
    """R, the published layer table: four 3x3 stride-2 convs with 64, 128, 256, 512 channels and
    LeakyReLU, one BatchNorm (on 128), 2x2 max-pooling after stages 2 and 3, max-pooling after
    stage 4 to the 4x4 map the final 4x4 conv reads (adaptive: the identity on a 256 slice, where
    stage 4 is already 4x4), final 4x4 conv to one value, sigmoid. 1,558,273 parameters.
    Input: the masked slice (N, 1, S, S); output (N,) in (0, 1): the predicted box error / err_scale."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(1, 64, 3, 2, 1), nn.LeakyReLU(0.2))
        self.stage2 = nn.Sequential(nn.Conv2d(64, 128, 3, 2, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
                                    nn.MaxPool2d(2))
        self.stage3 = nn.Sequential(nn.Conv2d(128, 256, 3, 2, 1), nn.LeakyReLU(0.2), nn.MaxPool2d(2))
        self.stage4 = nn.Sequential(nn.Conv2d(256, 512, 3, 2, 1), nn.LeakyReLU(0.2))
        self.head = nn.Conv2d(512, 1, 4)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != 1 or min(x.shape[-2:]) < 32:
            raise ValueError(f"ErrorRegressor: expected (N, 1, H, W) with H, W >= 32, got {tuple(x.shape)}")
        h = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        h = F.adaptive_max_pool2d(h, 4)
        return torch.sigmoid(self.head(h)).flatten(1)[:, 0]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
