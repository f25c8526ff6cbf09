"""The server's in-memory result encoding: what a client reads back is the image it was sent (voxels in
the right order, geometry, voxel type), for every extension and a requested dtype."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from uad_label.server.encode import encode_image


def _image(dtype=np.float32) -> sitk.Image:
    rng = np.random.default_rng(0)
    arr = (rng.random((5, 7, 11)) * 100).astype(dtype)  # (z, y, x): three different axis lengths
    arr[arr < 30] = 0
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.9, 3.0))
    img.SetOrigin((-10.0, 20.0, 5.5))
    c, s = np.cos(0.3), np.sin(0.3)
    img.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    return img


def _read(data: bytes, ext: str, tmp_path) -> sitk.Image:
    path = tmp_path / f"x{ext}"
    path.write_bytes(data)
    return sitk.ReadImage(str(path))


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd"])
def test_encoded_image_reads_back_identical(ext, tmp_path):
    img = _image()
    data = encode_image(img, ext)
    if ext == ".nii.gz":
        assert data[:2] == b"\x1f\x8b" and gzip.decompress(data)[:4] == (348).to_bytes(4, "little")
    back = _read(data, ext, tmp_path)
    assert back.GetSize() == img.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-5)


def test_requested_dtype_is_cast_in_voxel_order(tmp_path):
    img = _image()
    back = _read(encode_image(img, ".nii.gz", np.dtype("uint8")), ".nii.gz", tmp_path)
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img).astype(np.uint8))
