"""uad_label.preprocess: geometry (RAS reorientation), template-space mode, normalisation,
template access. Fast unit tests; the raw-scan pipeline is in test_preprocess_raw.py."""
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from uad_label.preprocess import PreprocessOptions, preprocess
from uad_label.preprocess.geometry import RASReorientation, image_to_xyz, ras_affine

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"

DIRECTIONS = {
    "LPS": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "LAS (FSL MNI)": (1, 0, 0, 0, -1, 0, 0, 0, 1),
    "RAS": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "sagittal PIR": (0, 0, -1, 1, 0, 0, 0, -1, 0),
    "oblique": tuple(sitk.VersorTransform((0.3, 0.2, 1.0), 0.25).GetMatrix()),
}


def _image(direction, size=(9, 7, 5), spacing=(0.7, 0.9, 3.0), dtype=np.float32):
    arr = np.random.default_rng(1).random(size[::-1]).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((12.0, -30.5, 7.25))
    img.SetDirection(tuple(float(x) for x in direction))
    return img


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_ras_reorientation_is_exact_and_consistent(name):
    img = _image(DIRECTIONS[name])
    reo = RASReorientation.of(img)
    native = image_to_xyz(img)
    work = reo.to_ras(native)
    np.testing.assert_array_equal(reo.from_ras(work), native)
    # the work affine maps each work voxel to the same world point as its native voxel
    aff_n, aff_w = ras_affine(img), reo.affine
    sh = np.array(work.shape)
    for ijk in [(0, 0, 0), tuple(sh // 2), tuple(sh - 1), (sh[0] - 1, 0, 1)]:
        ijk = tuple(int(v) for v in ijk)
        w = reo.work_to_native_index([ijk])[0]
        np.testing.assert_allclose(aff_w @ (*ijk, 1), aff_n @ (*w, 1), atol=1e-6)
        assert work[ijk] == native[tuple(int(round(x)) for x in w)]
    # RAS+: the work axes point (mostly) towards +R, +A, +S
    assert np.all(np.diag(aff_w[:3, :3]) > 0) or name == "oblique"
    assert np.all(np.argmax(np.abs(aff_w[:3, :3]), axis=0) == [0, 1, 2])


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_resampling_on_reversed_axes_equals_the_transposed_way(name):
    """onto_grid_xyz / xyz_for_resampling skip image_to_xyz's and xyz_to_image's transposed copies: same voxels."""
    from uad_label.preprocess.case import onto_grid, onto_grid_xyz
    from uad_label.preprocess.geometry import xyz_for_resampling, xyz_to_image

    src = _image(DIRECTIONS[name], size=(23, 19, 11))
    grid = _image(DIRECTIONS["oblique"], size=(17, 13, 29), spacing=(1.1, 0.8, 1.3))
    centre = np.array(src.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in src.GetSize()]))
    offset = np.array(grid.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in grid.GetSize()]))
    grid.SetOrigin(tuple(np.array(grid.GetOrigin()) + centre - offset))  # the grids overlap
    tr = sitk.Euler3DTransform((0, 0, 0), 0.1, -0.05, 0.2, (1.5, -2.0, 0.5))
    for interp, ulps in ((sitk.sitkNearestNeighbor, 0), (sitk.sitkLinear, 1)):
        want = image_to_xyz(onto_grid(src, grid, tr, interp=interp, fill=-1.0))
        got = onto_grid_xyz(src, grid, tr, interp=interp, fill=-1.0)
        assert got.shape == want.shape == tuple(grid.GetSize()) and got.flags.c_contiguous
        assert (want != -1).mean() > 0.05  # the grids overlap
        assert np.all(np.abs(got - want) <= ulps * np.spacing(np.abs(want)))
        back_want = sitk.GetArrayFromImage(sitk.Resample(xyz_to_image(want, grid), src, tr.GetInverse(), interp))
        back = sitk.GetArrayFromImage(sitk.Resample(xyz_for_resampling(want, grid), src, tr.GetInverse(), interp))
        assert np.all(np.abs(back - back_want) <= ulps * np.spacing(np.abs(back_want)))
    with pytest.raises(ValueError, match="does not match the grid size"):
        xyz_for_resampling(np.zeros((3, 3, 3)), grid)


@pytest.mark.parametrize("name", ["LAS (FSL MNI)", "sagittal PIR", "oblique"])
def test_template_space_mode_roundtrip(name):
    flair = _image(DIRECTIONS[name])
    arr = sitk.GetArrayFromImage(flair)
    arr[:, :2, :] = 0
    flair = sitk.GetImageFromArray(arr)
    flair.CopyInformation(_image(DIRECTIONS[name]))
    t1 = sitk.Cast(flair * 2, sitk.sitkFloat32)
    case = preprocess({"T1": t1, "FLAIR": flair}, PreprocessOptions(preprocessed=True))
    assert case.reference == "FLAIR" and case.mode == "template-space"
    assert set(case.arrays) == {"T1", "FLAIR"}
    assert case.arrays["FLAIR"].dtype == np.float32 and case.brain.dtype == bool
    np.testing.assert_array_equal(case.brain, case.arrays["FLAIR"] != 0)
    np.testing.assert_array_equal(case.arrays["T1"], case.arrays["FLAIR"] * 2)
    back = case.to_native(case.arrays["FLAIR"])
    for attr in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(back, attr)() == getattr(flair, attr)()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(flair))
    mask_back = case.to_native(case.brain)
    assert mask_back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask_back), arr != 0)
    # native-RAS coordinates of a work voxel == world coordinates of the native voxel it came from
    pts = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    nat = case.work_voxel_to_native_index(pts)
    np.testing.assert_allclose(case.work_voxel_to_native_ras(pts),
                               (ras_affine(flair) @ np.c_[nat, np.ones(2)].T).T[:, :3], atol=1e-6)
    # to_work undoes to_native
    np.testing.assert_array_equal(case.to_work(back), case.arrays["FLAIR"])


def test_template_space_user_mask_and_errors():
    flair = _image(DIRECTIONS["LPS"])
    mask = sitk.Image(flair.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(flair)
    mask[2:5, 2:4, 1:3] = 1
    case = preprocess({"FLAIR": flair}, PreprocessOptions(preprocessed=True, brain_mask=mask))
    assert case.brain.sum() == 3 * 2 * 2
    with pytest.raises(ValueError, match="empty"):
        preprocess({"FLAIR": flair}, PreprocessOptions(preprocessed=True, brain_mask=mask * 0))
    with pytest.raises(ValueError, match="at least one"):
        preprocess({}, PreprocessOptions(preprocessed=True))
    with pytest.raises(ValueError, match="reference"):
        preprocess({"FLAIR": flair}, PreprocessOptions(preprocessed=True), reference="T2")
    # first modality is the reference when there is no FLAIR
    case = preprocess({"T2": flair, "T1": flair}, PreprocessOptions(preprocessed=True))
    assert case.reference == "T2"


def test_intensity_transforms():
    from skimage.exposure import equalize_hist as sk_eq

    from uad_label.transforms.intensity import equalise_in_brain, percentile_scale

    rng = np.random.default_rng(0)
    a = rng.normal(100, 20, (20, 20, 20)).astype(np.float32)
    m = np.zeros(a.shape, bool)
    m[5:15, 5:15, 5:15] = True
    p = percentile_scale(a, m, 1, 99)
    assert p.min() == 0 and p.max() == 1 and abs(np.mean(p[m] <= 0) - 0.01) < 0.005
    # the one in-brain equalisation (flair_threshold, ppr): scikit-image's values at the brain, 0 outside
    eq = equalise_in_brain(a, m, 64)
    np.testing.assert_allclose(eq[m], sk_eq(a, nbins=64, mask=m)[m], rtol=1e-6)
    assert eq.dtype == np.float32 and np.all(eq[~m] == 0)
    with pytest.raises(ValueError, match="empty"):
        percentile_scale(a, np.zeros_like(m))
    with pytest.raises(ValueError, match="empty"):
        equalise_in_brain(a, np.zeros_like(m))
    with pytest.raises(ValueError, match="shape"):
        percentile_scale(a, m[1:])


def test_template_files_match_nilearn_definition():
    from uad_label.template import load_template_brain_mask, load_template_t1, template_affine

    t1 = load_template_t1()
    mask = load_template_brain_mask()
    assert t1.GetSize() == (197, 233, 189) and mask.GetSize() == t1.GetSize()
    arr = sitk.GetArrayViewFromImage(t1)
    assert arr.max() == 1.0 and arr.min() == 0.0
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(mask), arr > 0.2)
    np.testing.assert_allclose(template_affine(), [[1, 0, 0, -98], [0, 1, 0, -134], [0, 0, 1, -72], [0, 0, 0, 1]])


@pytest.mark.skipif(not (SHARED / "mslub" / "patient26").exists(), reason="../shared/data/mslub absent")
def test_published_protocol_patient26_is_exact():
    nib = pytest.importorskip("nibabel")
    from uad_label.cases import find_modalities
    from uad_label.io import load_image

    files = find_modalities(SHARED / "mslub" / "patient26")
    imgs = {k: load_image(v) for k, v in files.items() if k in ("FLAIR", "T2")}
    case = preprocess(imgs, PreprocessOptions(preprocessed=True))
    ref = nib.as_closest_canonical(nib.load(files["FLAIR"]))
    assert case.shape == (182, 218, 182)
    np.testing.assert_array_equal(case.arrays["FLAIR"], ref.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(case.affine, ref.affine)
    np.testing.assert_array_equal(case.brain, ref.get_fdata() != 0)
    back = case.to_native(case.brain)
    assert back.GetSize() == imgs["FLAIR"].GetSize() and back.GetOrigin() == imgs["FLAIR"].GetOrigin()
    assert back.GetDirection() == imgs["FLAIR"].GetDirection()
