"""Basic 3D convolutional autoencoder of Baur et al. ("Autoencoders for unsupervised anomaly
segmentation in brain MR images: a comparative study"), as Bieder et al. used it as baseline:
strided 5x5x5 convolutions down, transposed convolutions up, a spatial bottleneck. Built from
MONAI's AutoEncoder (conv + norm + activation units), so nothing is written by hand."""
from __future__ import annotations

FULL = {"channels": (32, 64, 128, 128), "latent_channels": 16, "kernel_size": 5}
CPU = {"channels": (16, 32, 64, 64), "latent_channels": 16, "kernel_size": 5}


def build(channels=FULL["channels"], latent_channels=FULL["latent_channels"], kernel_size=FULL["kernel_size"],
          in_channels: int = 1):
    from monai.networks.nets import AutoEncoder

    channels = tuple(int(c) for c in channels)
    return AutoEncoder(spatial_dims=3, in_channels=in_channels, out_channels=in_channels, channels=channels,
                       strides=(2,) * len(channels), kernel_size=kernel_size, up_kernel_size=kernel_size,
                       inter_channels=[int(latent_channels)], act=("LEAKYRELU", {"negative_slope": 0.2}),
                       norm="BATCH")


def levels(config: dict) -> int:
    """Number of stride-2 levels: inputs must be divisible by 2**levels."""
    return len(config["channels"])
