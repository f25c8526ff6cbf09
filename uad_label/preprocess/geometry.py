"""Geometry helpers between SimpleITK images (LPS physical, arrays (z, y, x)) and the package's
work arrays ((x, y, z) in RAS+ voxel order, nibabel-style 4x4 RAS affines).

All reorientations here are exact axis permutations / flips of the voxel array (no resampling),
so going to RAS and back reproduces the input bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

__all__ = [
    "LPS_TO_RAS",
    "ras_affine",
    "image_to_xyz",
    "xyz_to_image",
    "axes_reversed",
    "xyz_for_resampling",
    "RASReorientation",
    "same_geometry",
    "lps_to_ras_points",
]

#: Diagonal flip between ITK's LPS physical space and nibabel's RAS world space.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def ras_affine(image: sitk.Image) -> np.ndarray:
    """4x4 affine from (i, j, k) voxel indices (SimpleITK index order) to RAS mm (nibabel)."""
    d = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    s = np.array(image.GetSpacing(), dtype=np.float64)
    o = np.array(image.GetOrigin(), dtype=np.float64)
    aff = np.eye(4)
    aff[:3, :3] = LPS_TO_RAS @ d @ np.diag(s)
    aff[:3, 3] = LPS_TO_RAS @ o
    return aff


def lps_to_ras_points(points: np.ndarray) -> np.ndarray:
    """(N, 3) LPS points -> RAS points (and back: the flip is its own inverse)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return pts * np.array([-1.0, -1.0, 1.0])


def image_to_xyz(image: sitk.Image, dtype=None) -> np.ndarray:
    """Voxel array of ``image`` indexed (i, j, k) like its SimpleITK index (a copy)."""
    arr = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return np.ascontiguousarray(arr)


def xyz_to_image(array: np.ndarray, reference: sitk.Image | None = None) -> sitk.Image:
    """SimpleITK image from an (i, j, k) array, with ``reference``'s geometry if given."""
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    if reference is not None:
        if tuple(reference.GetSize()) != tuple(arr.shape):
            raise ValueError(f"array shape {arr.shape} does not match the grid size {reference.GetSize()}")
        img.SetOrigin(reference.GetOrigin())
        img.SetSpacing(reference.GetSpacing())
        img.SetDirection(reference.GetDirection())
    return img


def axes_reversed(grid: sitk.Image) -> tuple[tuple, tuple, tuple, tuple]:
    """(size, spacing, origin, direction) of ``grid``'s voxels with the axes in reverse order (k, j, i):
    SimpleITK's (z, y, x) array of an image on that geometry is ``grid``'s (x, y, z) array, in C order.
    Resampling onto it (:func:`uad_label.preprocess.case.onto_grid_xyz`) or from an image on it
    (:func:`xyz_for_resampling`) gives the values of ``grid`` (nearest: bit for bit; linear: 1 voxel in 8.7 M
    one float32 ulp apart, raw patient01/study1's native maps identical) without the transposed copy of
    :func:`image_to_xyz` / :func:`xyz_to_image` (0.04-0.07 s per 1 mm brain volume). For resampling only: a file
    written on it has its axes in reverse order."""
    d = np.array(grid.GetDirection(), dtype=np.float64).reshape(3, 3)[:, ::-1]
    return (tuple(int(n) for n in grid.GetSize()[::-1]), tuple(grid.GetSpacing()[::-1]), tuple(grid.GetOrigin()),
            tuple(d.ravel()))


def xyz_for_resampling(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """An (i, j, k) array on ``grid`` as a SimpleITK image to resample from, without transposing it (its axes
    are reversed: :func:`axes_reversed`)."""
    arr = np.asarray(array)
    if tuple(grid.GetSize()) != tuple(arr.shape):
        raise ValueError(f"array shape {arr.shape} does not match the grid size {grid.GetSize()}")
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.astype(np.uint8) if arr.dtype == bool else arr))
    _, spacing, origin, direction = axes_reversed(grid)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tol``)."""
    return (tuple(a.GetSize()) == tuple(b.GetSize())
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


@dataclass(frozen=True)
class RASReorientation:
    """Exact permutation / flips of a native grid's voxel axes into RAS+ order.

    ``to_ras`` maps a native (i, j, k) array to the work (x, y, z) RAS array; ``from_ras`` is its
    exact inverse. ``affine`` is the RAS affine of the reoriented grid.
    """

    ornt: np.ndarray          # nibabel orientation native -> RAS
    native_shape: tuple       # (i, j, k) size of the native grid
    native_affine: np.ndarray # RAS affine of the native grid

    @classmethod
    def of(cls, image: sitk.Image) -> "RASReorientation":
        aff = ras_affine(image)
        return cls(io_orientation(aff), tuple(int(s) for s in image.GetSize()), aff)

    @property
    def inverse_ornt(self) -> np.ndarray:
        ras = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
        return ornt_transform(ras, self.ornt)

    @property
    def is_identity(self) -> bool:
        return bool(np.all(self.ornt == np.array([[0, 1], [1, 1], [2, 1]])))

    @property
    def ras_shape(self) -> tuple:
        shape = [0, 0, 0]
        for ax, (out_ax, _) in enumerate(self.ornt):
            shape[int(out_ax)] = self.native_shape[ax]
        return tuple(shape)

    @property
    def affine(self) -> np.ndarray:
        """RAS affine of the reoriented (work) grid."""
        return self.native_affine @ inv_ornt_aff(self.ornt, self.native_shape)

    def to_ras(self, native_xyz: np.ndarray) -> np.ndarray:
        if tuple(native_xyz.shape) != self.native_shape:
            raise ValueError(f"array shape {native_xyz.shape} != native grid {self.native_shape}")
        return np.ascontiguousarray(apply_orientation(native_xyz, self.ornt))

    def from_ras(self, ras_xyz: np.ndarray) -> np.ndarray:
        if tuple(ras_xyz.shape) != self.ras_shape:
            raise ValueError(f"array shape {ras_xyz.shape} != work grid {self.ras_shape}")
        return np.ascontiguousarray(apply_orientation(ras_xyz, self.inverse_ornt))

    def work_to_native_index(self, points_xyz: np.ndarray) -> np.ndarray:
        """(N, 3) work voxel coordinates -> native (i, j, k) voxel coordinates (continuous)."""
        pts = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
        m = inv_ornt_aff(self.ornt, self.native_shape)
        return pts @ m[:3, :3].T + m[:3, 3]
