"""MRI ghosting artefact (StRegA's training augmentation), in MONAI's transform form.

MONAI has k-space spike and Gibbs transforms but no ghosting, and torchio (which StRegA used)
is not a dependency, hence this one. Ghosts come from scaling every ``num_ghosts``-th plane of
k-space along ``axis`` by ``1 - intensity``: in image space that subtracts a comb of copies of
the image shifted by multiples of ``N / num_ghosts``, so faint replicas appear along that axis.
The central ``restore`` fraction of k-space is left untouched, keeping the image contrast.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform

__all__ = ["Ghosting", "RandGhosting", "Ghostingd", "RandGhostingd"]


def _range(name: str, value, low: float, high: float | None, integer: bool = False) -> tuple[float, float]:
    """(lo, hi) from a number or a pair, checked against [low, high]."""
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2 or pair[0] > pair[1]:
        raise ValueError(f"{name}: expected a number or an increasing pair (lo, hi), received {value!r}")
    for v in pair:
        if v < low or (high is not None and v > high) or (integer and int(v) != v):
            kind = "integers" if integer else "numbers"
            bound = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise ValueError(f"{name}: expected {kind} in {bound}, received {value!r}")
    return float(pair[0]), float(pair[1])


class Ghosting(Transform):
    """Add ghosting along one spatial axis of a channel-first image (C, *spatial).

    num_ghosts: spacing of the scaled k-space planes (ghost period N / num_ghosts), >= 2.
    axis: spatial axis (0-based, channel excluded) along which the ghosts repeat.
    intensity: 0 leaves the image unchanged, 1 removes the scaled planes entirely.
    restore: fraction of central k-space planes kept unchanged, in [0, 1).
    """

    backend = [torch.Tensor, np.ndarray]

    def __init__(self, num_ghosts: int, axis: int = 0, intensity: float = 0.5, restore: float = 0.02) -> None:
        _range("num_ghosts", num_ghosts, 2, None, integer=True)
        _range("intensity", intensity, 0.0, 1.0)
        if not 0.0 <= restore < 1.0:
            raise ValueError(f"restore: expected a fraction in [0, 1), received {restore!r}")
        if int(axis) != axis or axis < 0:
            raise ValueError(f"axis: expected a non-negative spatial axis index, received {axis!r}")
        self.num_ghosts, self.axis, self.intensity, self.restore = int(num_ghosts), int(axis), float(intensity), restore

    def __call__(self, img):
        x = torch.as_tensor(img)
        spatial = x.ndim - 1
        if spatial < 1:
            raise ValueError(f"img: expected a channel-first image (C, *spatial), received shape {tuple(x.shape)}")
        if self.axis >= spatial:
            raise ValueError(f"axis: expected < {spatial} for an image of shape {tuple(x.shape)}, received {self.axis}")
        if self.intensity == 0.0:
            return img
        dims = tuple(range(1, x.ndim))
        ax = 1 + self.axis
        k = torch.fft.fftshift(torch.fft.fftn(x.to(torch.float32), dim=dims), dim=dims)
        n = k.shape[ax]
        gain = torch.ones(n, dtype=torch.float32)
        gain[:: self.num_ghosts] = 1.0 - self.intensity
        half = int(round(self.restore * n / 2))
        centre = n // 2
        gain[max(0, centre - half): centre + half + (1 if half else 0)] = 1.0
        shape = [1] * x.ndim
        shape[ax] = n
        k = k * gain.view(shape)
        out = torch.fft.ifftn(torch.fft.ifftshift(k, dim=dims), dim=dims).abs()
        if isinstance(img, np.ndarray):
            return out.numpy().astype(img.dtype, copy=False)
        return out.to(dtype=x.dtype)


class RandGhosting(RandomizableTransform):
    """Draw num_ghosts, axis and intensity, then apply :class:`Ghosting` with probability ``prob``
    (defaults follow torchio's RandomGhosting as StRegA used it)."""

    backend = Ghosting.backend

    def __init__(self, prob: float = 0.1, num_ghosts: int | Sequence[int] = (4, 10),
                 axes: Sequence[int] = (0, 1, 2), intensity: float | Sequence[float] = (0.5, 1.0),
                 restore: float = 0.02) -> None:
        RandomizableTransform.__init__(self, prob)
        self.num_ghosts = _range("num_ghosts", num_ghosts, 2, None, integer=True)
        self.intensity = _range("intensity", intensity, 0.0, 1.0)
        self.axes = tuple(int(a) for a in axes)
        if not self.axes or any(a < 0 for a in self.axes):
            raise ValueError(f"axes: expected a non-empty sequence of spatial axis indices, received {axes!r}")
        self.restore = restore
        self._params: tuple[int, int, float] | None = None

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        ghosts = int(self.R.randint(int(self.num_ghosts[0]), int(self.num_ghosts[1]) + 1))
        axis = int(self.axes[self.R.randint(len(self.axes))])
        self._params = (ghosts, axis, float(self.R.uniform(*self.intensity)))

    def __call__(self, img, randomize: bool = True):
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        ghosts, axis, intensity = self._params
        return Ghosting(ghosts, axis, intensity, self.restore)(img)


class Ghostingd(MapTransform):
    """Dictionary form of :class:`Ghosting`."""

    backend = Ghosting.backend

    def __init__(self, keys: KeysCollection, num_ghosts: int, axis: int = 0, intensity: float = 0.5,
                 restore: float = 0.02, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ghosting = Ghosting(num_ghosts, axis, intensity, restore)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.ghosting(d[key])
        return d


class RandGhostingd(RandomizableTransform, MapTransform):
    """Dictionary form of :class:`RandGhosting`: one draw per call, the same ghosts on every key."""

    backend = Ghosting.backend

    def __init__(self, keys: KeysCollection, prob: float = 0.1, num_ghosts: int | Sequence[int] = (4, 10),
                 axes: Sequence[int] = (0, 1, 2), intensity: float | Sequence[float] = (0.5, 1.0),
                 restore: float = 0.02, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, 1.0)
        self.rand = RandGhosting(prob, num_ghosts, axes, intensity, restore)

    def set_random_state(self, seed=None, state=None) -> "RandGhostingd":
        super().set_random_state(seed, state)
        self.rand.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.rand.randomize()
        for key in self.key_iterator(d):
            d[key] = self.rand(d[key], randomize=False)
        return d
