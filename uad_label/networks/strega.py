"""Compact context-encoding VAE (ceVAE) of StRegA (Chatterjee et al.) on axial 2D slices.

Paper configuration (FULL): encoder stages of 64 / 128 / 256 feature maps, each a 3x3 stride-2
convolution + batch norm + LeakyReLU + a residual block; a latent of 256 (mean and log-variance
from a convolution over the remaining spatial extent); decoder mirrored with 4x4 stride-2
transposed convolutions. The authors' published code (PUBLISHED) uses 16 / 64 / 256 / 1024 maps,
latent 1024, no batch norm and no residual blocks. Written by hand: MONAI's VarAutoEncoder
flattens into a dense latent and has neither per-stage residual blocks nor 4x4 transposed convs."""
from __future__ import annotations

import torch
import torch.nn as nn

FULL = {"channels": (64, 128, 256), "latent": 256, "batch_norm": True, "res_blocks": True,
        "input_size": (160, 192)}
PUBLISHED = {"channels": (16, 64, 256, 1024), "latent": 1024, "batch_norm": False, "res_blocks": False,
             "input_size": (160, 192)}
CPU = {"channels": (16, 32, 64), "latent": 64, "batch_norm": True, "res_blocks": True, "input_size": (80, 96)}


class ResBlock(nn.Module):
    def __init__(self, c: int, batch_norm: bool):
        super().__init__()
        norm = (lambda: nn.BatchNorm2d(c)) if batch_norm else nn.Identity
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), norm(), nn.LeakyReLU(0.2),
                                  nn.Conv2d(c, c, 3, padding=1), norm())
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x):
        return self.act(x + self.body(x))


class CeVAE(nn.Module):
    def __init__(self, channels=FULL["channels"], latent=FULL["latent"], batch_norm=True, res_blocks=True,
                 input_size=FULL["input_size"], in_channels: int = 1):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        levels = len(channels)
        size = tuple(int(s) for s in input_size)
        if any(s % (2 ** levels) for s in size):
            raise ValueError(f"input_size: expected sizes divisible by {2 ** levels}, received {size}")
        bottom = tuple(s // 2 ** levels for s in size)
        norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        enc, prev = [], in_channels
        for c in channels:
            enc += [nn.Conv2d(prev, c, 3, stride=2, padding=1), norm(c), nn.LeakyReLU(0.2)]
            if res_blocks:
                enc.append(ResBlock(c, batch_norm))
            prev = c
        self.encoder = nn.Sequential(*enc)
        self.to_latent = nn.Conv2d(prev, 2 * int(latent), bottom)
        dec = [nn.ConvTranspose2d(int(latent), prev, bottom), norm(prev), nn.LeakyReLU(0.2)]
        for c in list(reversed(channels))[1:] + [None]:
            if res_blocks:
                dec.append(ResBlock(prev, batch_norm))
            if c is None:
                dec.append(nn.ConvTranspose2d(prev, in_channels, 4, stride=2, padding=1))
            else:
                dec += [nn.ConvTranspose2d(prev, c, 4, stride=2, padding=1), norm(c), nn.LeakyReLU(0.2)]
                prev = c
        self.decoder = nn.Sequential(*dec)
        self.latent = int(latent)

    def encode(self, x):
        h = self.to_latent(self.encoder(x))
        return h[:, : self.latent], h[:, self.latent:].clamp(-10, 10)

    def forward(self, x, sample: bool = True, noise: torch.Tensor | None = None):
        """`noise`: the reparameterisation's standard normal draws (shape of the latent mean), e.g. drawn per
        sample so that a batch split over processes samples alike; default torch.randn_like."""
        mu, logvar = self.encode(x)
        if sample:
            eps = torch.randn_like(mu) if noise is None else noise.to(mu.device, mu.dtype).view_as(mu)
            z = mu + eps * torch.exp(0.5 * logvar)
        else:
            z = mu
        return self.decoder(z), mu, logvar


def build(**config) -> CeVAE:
    return CeVAE(**config)


def context_masks(x: torch.Tensor, max_squares: int = 3, max_size: int = 128, generator=None) -> torch.Tensor:
    """Context-encoding corruption: 0 to `max_squares` random squares of up to `max_size` pixels per
    image, each filled with one random value in [0, 1]."""
    out = x.clone()
    n, _, h, w = x.shape
    g = generator
    for i in range(n):
        for _ in range(int(torch.randint(0, max_squares + 1, (), generator=g))):
            s = int(torch.randint(1, min(max_size, h, w) + 1, (), generator=g))
            r = int(torch.randint(0, h - s + 1, (), generator=g))
            c = int(torch.randint(0, w - s + 1, (), generator=g))
            out[i, :, r:r + s, c:c + s] = float(torch.rand((), generator=g))
    return out


def loss_terms(net: CeVAE, x: torch.Tensor, x_masked: torch.Tensor, noise=None):
    """(KL, L1 reconstruction, L1 reconstruction of the masked input), each summed per image and
    averaged over the batch, as the published ceVAE code reduces them. `noise`: None, or the latent
    draws of the two passes (for x, for x_masked)."""
    n1, n2 = noise if noise is not None else (None, None)
    rec, mu, logvar = net(x, noise=n1)
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).flatten(1).sum(1).mean()
    l1 = (rec - x).abs().flatten(1).sum(1).mean()
    rec_ce, _, _ = net(x_masked, noise=n2)
    ce = (rec_ce - x).abs().flatten(1).sum(1).mean()
    return kl, l1, ce
