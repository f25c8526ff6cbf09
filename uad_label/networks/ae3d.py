"""3D residual autoencoder of Oliinyk et al. ("Software for anomaly detection in MRI images"):
an input convolution, five residual down-blocks (32, 64, 128, 256, 512 channels; convolution,
ReLU, BatchNorm3d), a 1024-channel bottleneck and the mirrored decoder. MONAI's AutoEncoder with
residual units provides the blocks; only the input convolution is added in front of it."""
from __future__ import annotations

import torch.nn as nn

FULL = {"channels": (32, 64, 128, 256, 512), "bottleneck": 1024, "stem": 16}
CPU = {"channels": (8, 16, 32, 64, 96), "bottleneck": 128, "stem": 8}


class ResidualAE3D(nn.Module):
    def __init__(self, channels=FULL["channels"], bottleneck=FULL["bottleneck"], stem=FULL["stem"],
                 in_channels: int = 1):
        super().__init__()
        from monai.networks.blocks import Convolution
        from monai.networks.nets import AutoEncoder

        channels = tuple(int(c) for c in channels)
        self.stem = Convolution(3, in_channels, int(stem), kernel_size=3, act="RELU", norm="BATCH",
                                adn_ordering="AN")
        self.ae = AutoEncoder(spatial_dims=3, in_channels=int(stem), out_channels=in_channels, channels=channels,
                              strides=(2,) * len(channels), num_res_units=1, inter_channels=[int(bottleneck)],
                              act="RELU", norm="BATCH")

    def forward(self, x):
        return self.ae(self.stem(x))


def build(channels=FULL["channels"], bottleneck=FULL["bottleneck"], stem=FULL["stem"], in_channels: int = 1):
    return ResidualAE3D(channels, bottleneck, stem, in_channels)


def levels(config: dict) -> int:
    return len(config["channels"])
