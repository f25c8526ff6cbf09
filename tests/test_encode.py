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


def test_large_map_is_gzipped_in_members_that_every_reader_takes_as_one(tmp_path, monkeypatch):
    """From 8 MB on a 2-core machine the map is compressed in one gzip member per core (in threads); SimpleITK (ITK's
    reader, as in 3D Slicer), nibabel and Python's gzip read the concatenation back voxel for voxel."""
    import os
    import zlib

    import nibabel as nib

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    rng = np.random.default_rng(1)
    arr = rng.random((48, 320, 160), dtype=np.float32)  # (z, y, x) 9.8 MB: two members
    arr[arr < 0.5] = 0
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.72, 0.72, 3.0))
    data = encode_image(img, ".nii.gz")
    first = zlib.decompressobj(31)
    first.decompress(data)
    assert first.unused_data[:2] == b"\x1f\x8b", "expected a second gzip member"
    back = _read(data, ".nii.gz", tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "x.nii.gz")).dataobj).transpose(2, 1, 0), arr)
    assert len(gzip.decompress(data)) == 352 + arr.nbytes
