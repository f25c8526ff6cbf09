"""uad_label.io: loading / saving in every supported format, DICOM series, modality discovery."""
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from uad_label.cases import find_modalities
from uad_label.errors import InputError
from uad_label.io import load_image, save_image


def _volume(size=(12, 10, 8), spacing=(0.7, 0.8, 3.0), direction=None, pixel=np.int16):
    arr = (np.arange(np.prod(size)).reshape(size[::-1]) % 1000).astype(pixel)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((-10.5, 20.25, 3.0))
    if direction is not None:
        img.SetDirection(direction)
    return img


def _same(a: sitk.Image, b: sitk.Image):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_save_load_roundtrip(tmp_path, ext):
    rot = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # non-trivial orientation
    img = _volume(direction=rot)
    p = save_image(img, tmp_path / "sub" / f"FLAIR{ext}")
    assert p.exists() and not [f for f in p.parent.iterdir() if ".tmp" in f.name]
    _same(load_image(p), img)


def test_save_is_atomic_replace(tmp_path):
    p = tmp_path / "x.nii.gz"
    save_image(_volume(), p)
    save_image(_volume(size=(5, 5, 5)), p)
    assert load_image(p).GetSize() == (5, 5, 5)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["x.nii.gz"]


def test_dicom_series_roundtrip(tmp_path):
    img = _volume(size=(16, 14, 6), spacing=(0.9, 0.9, 3.0))
    d = tmp_path / "FLAIR"
    d.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1.12345"
    for k in range(img.GetSize()[2]):
        sl = img[:, :, k]
        sl.SetMetaData("0020|000e", uid)  # series instance UID
        sl.SetMetaData("0020|000d", uid + ".1")
        sl.SetMetaData("0008|0060", "MR")
        sl.SetMetaData("0020|0032", "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, k)))))
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        sl.SetMetaData("0020|0013", str(k))
        sl.SetMetaData("0028|0030", "0.9\\0.9")
        writer.SetFileName(str(d / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    loaded = load_image(d)
    assert loaded.GetSize() == img.GetSize()
    np.testing.assert_allclose(loaded.GetSpacing(), img.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(loaded.GetOrigin(), img.GetOrigin(), atol=1e-3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded), sitk.GetArrayFromImage(img))
    # one file of the series loads the whole series
    assert load_image(d / "slice002.dcm").GetSize() == img.GetSize()
    # a DICOM series sub-folder is found as a modality
    assert find_modalities(tmp_path) == {"FLAIR": d}


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        load_image(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="bad.nii.gz"):
        load_image(bad)
    txt = tmp_path / "notes.txt"
    txt.write_text("x")
    with pytest.raises(ValueError, match="unsupported"):
        load_image(txt)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no DICOM series"):
        load_image(empty)
    two_d = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkFloat32), str(two_d))
    with pytest.raises(ValueError, match="3D"):
        load_image(two_d)
    rgb = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3), str(rgb))
    with pytest.raises(ValueError, match="components"):
        load_image(rgb)


def test_load_squeezes_single_volume_4d(tmp_path):
    arr = np.random.default_rng(0).random((1, 5, 6, 7)).astype(np.float32)
    p = tmp_path / "v.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=False), str(p))
    img = load_image(p)
    assert img.GetDimension() == 3 and img.GetSize() == (7, 6, 5)


def test_find_modalities(tmp_path):
    names = ["FLAIR.nii.gz", "t1.nrrd", "T2W.mha", "gt.nii.gz", "T1POST.nii.gz", "notes.txt",
             "study1_T1W_intrastudy_to_FLAIR.txt", "brainmask_extra.nii.gz"]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    found = find_modalities(tmp_path)
    assert found == {"FLAIR": tmp_path / "FLAIR.nii.gz", "T1": tmp_path / "t1.nrrd",
                     "T1POST": tmp_path / "T1POST.nii.gz", "T2": tmp_path / "T2W.mha",
                     "GT": tmp_path / "gt.nii.gz"}
    files = [tmp_path / "sub01_flair.nii.gz", tmp_path / "sub01-T1w.nii", Path("x/case_T2.mha")]
    assert find_modalities(files) == {"FLAIR": files[0], "T1": files[1], "T2": files[2]}
    assert find_modalities([Path("t1_to_flair.nii.gz")]) == {}  # ambiguous names are not guessed
    (tmp_path / "other_FLAIR.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="several images per modality"):
        find_modalities(tmp_path)
    with pytest.raises(FileNotFoundError):
        find_modalities(tmp_path / "nope")


SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "raw_clinical").exists(), reason="../shared/data/raw_clinical absent")
def test_find_modalities_raw_clinical_study():
    d = SHARED / "raw_clinical" / "patient01"
    with pytest.raises(ValueError, match="several"):
        find_modalities(d)  # two studies in one folder
    found = find_modalities(sorted(d.glob("study1_*")))
    assert set(found) == {"FLAIR", "T1", "T2"}
    img = load_image(found["FLAIR"])
    assert img.GetDimension() == 3 and img.GetSpacing()[2] > 2.5


def _nifti(path, array, affine, dtype, slope_inter=None):
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array, dtype), affine)
    img.header.set_data_dtype(dtype)
    if slope_inter is not None:
        img.header.set_slope_inter(*slope_inter)
    nib.save(img, str(path))
    return path


def _itk_reading(path):
    image = sitk.ReadImage(str(path))
    return image[:, :, :, 0] if image.GetDimension() == 4 else image


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8", ">f8", "<i2"])
def test_nifti_read_once_is_itks_reading(tmp_path, ext, dtype):
    """Float NIfTI is decompressed once (NaN checked on that array); the image equals ITK's own reading: pixel
    type, voxels (infinities set to 0 as ITK does), geometry, metadata (ITK's reader adds ITK_original_*)."""
    from uad_label.io import _float_nifti_once

    rng = np.random.default_rng(0)
    values = rng.random((9, 10, 11)) * 100
    if dtype[1] == "f":
        values[1, 2, 3], values[4, 4, 4] = np.inf, -np.inf
    affine = np.array([[0.0, -0.9, 0.0, 10.0], [1.1, 0.0, 0.0, -20.0], [0.0, 0.0, 2.5, 5.0], [0, 0, 0, 1]])
    path = _nifti(tmp_path / f"scan{ext}", values, affine, dtype)
    loaded, itk = load_image(path), _itk_reading(path)
    assert loaded.GetPixelID() == itk.GetPixelID()
    _same(loaded, itk)
    assert (loaded.GetOrigin(), loaded.GetSpacing(), loaded.GetDirection()) == \
        (itk.GetOrigin(), itk.GetSpacing(), itk.GetDirection())
    def header(image):
        return {k: image.GetMetaData(k) for k in image.GetMetaDataKeys() if not k.startswith("ITK_original_")}

    assert header(loaded) == header(itk) and len(header(itk)) > 10
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    assert (_float_nifti_once(path, reader) is not None) == (dtype[1] == "f")  # floats take the one-pass path


def test_nifti_read_once_falls_back_to_itk_for_scaled_and_4d(tmp_path):
    from uad_label.io import _float_nifti_once

    values = np.random.default_rng(1).random((6, 7, 8)).astype(np.float32)
    for name, array, scaling in (("scaled", values, (2.0, 1.0)), ("one_volume", values[..., None], None)):
        path = _nifti(tmp_path / f"{name}.nii.gz", array, np.eye(4), "<f4", scaling)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        assert _float_nifti_once(path, reader) is None
        _same(load_image(path), _itk_reading(path))


@pytest.mark.parametrize("name", ["nan.nii.gz", "nan.nii", "nan_4d.nii.gz", "nan_scaled.nii.gz"])
def test_nifti_with_nan_is_refused_naming_the_count(tmp_path, name):
    values = np.random.default_rng(2).random((6, 7, 8)).astype(np.float32)
    values[1, 2, 3] = values[2, 2, 2] = np.nan
    array = values[..., None] if "4d" in name else values
    path = _nifti(tmp_path / name, array, np.eye(4), "<f4", (2.0, 0.0) if "scaled" in name else None)
    assert not np.isnan(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).any()  # ITK alone would say nothing
    with pytest.raises(InputError, match=rf"{name}: 2 voxel\(s\) are NaN; expected finite intensities"):
        load_image(path)


def test_atomic_writes_get_the_mode_open_gives_not_mkstemps_0600(tmp_path):
    from uad_label.atomic import write_text

    write_text(tmp_path / "card.json", "{}")
    (tmp_path / "plain.json").write_text("{}")  # what open() gives under this process's umask
    mode = (tmp_path / "card.json").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.json").stat().st_mode & 0o777
    # under the usual umask 022 that is 0644; before, mkstemp's 0600 left cards and weights unreadable to others
