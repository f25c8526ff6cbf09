"""Wrong-modality guard (uad_label.preprocess.contrast): real and synthetic scans sent under the
wrong modality are refused with a message naming the contrast; the right ones pass; grids that are
not in template space are not judged."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from uad_label.io import load_image
from uad_label.preprocess import PreprocessOptions, preprocess
from uad_label.preprocess.contrast import check_modality_contrast, contrast_signature

MODS = ("FLAIR", "T1", "T2")


def _case(image, declared):
    return preprocess({declared: image}, PreprocessOptions(preprocessed=True), reference=declared)


@pytest.fixture(scope="module")
def p26_images(patient26):
    return {m: load_image(patient26 / f"{m}.nii.gz") for m in MODS}


# (true contrast, declared): refused with the named reason; FLAIR sent as T1 passes on this patient
# (GM/WM 1.00 is within T1's tolerance) -- the documented blind spot
REFUSED = [("T1", "FLAIR", "grey matter is darker"), ("T2", "FLAIR", "CSF is brighter"),
           ("T2", "T1", "CSF is brighter"), ("FLAIR", "T2", "CSF is not brighter"),
           ("T1", "T2", "CSF is not brighter")]


@pytest.mark.parametrize("true, declared, reason", REFUSED)
def test_real_scan_under_the_wrong_modality_is_refused(p26_images, true, declared, reason):
    with pytest.raises(ValueError, match=rf"images\['{declared}'\].*not have {declared} contrast.*{reason}"
                                         r".*check_contrast"):
        check_modality_contrast(_case(p26_images[true], declared), declared)


@pytest.mark.parametrize("mod", MODS)
def test_real_scan_under_its_own_modality_passes_with_its_signature(p26_images, mod):
    sig = check_modality_contrast(_case(p26_images[mod], mod), mod)
    assert sig is not None and min(sig["voxels"].values()) > 5000
    if mod == "T2":
        assert sig["csf_wm"] > 1.5
    else:
        assert sig["csf_wm"] < 1.0
    if mod == "T1":
        assert sig["gm_wm"] < 0.9


def test_synthetic_subject_contrasts_are_told_apart():
    from uad_label.synth import make_subject

    s = make_subject(3, False, "template", downsample=2)
    for true in MODS:
        for declared in MODS:
            case = _case(s.images[true], declared)
            if true == declared:
                assert check_modality_contrast(case, declared) is not None
            else:
                with pytest.raises(ValueError, match=f"not have {declared} contrast"):
                    check_modality_contrast(case, declared)


def test_grids_outside_template_space_are_not_judged():
    arr = np.zeros((40, 48, 36), np.float32)
    arr[8:32, 8:40, 8:28] = np.random.default_rng(0).random((24, 32, 20)) + 1  # a box "brain" at the origin
    img = sitk.GetImageFromArray(arr.transpose(2, 1, 0).copy())
    case = _case(img, "FLAIR")
    assert contrast_signature(case, "FLAIR") is None and check_modality_contrast(case, "FLAIR") is None


def test_detectors_refuse_the_wrong_modality_unless_told_not_to(p26_images):
    from uad_label.detectors.flair_threshold import FlairThreshold

    det = FlairThreshold()
    with pytest.raises(ValueError, match="not have FLAIR contrast"):
        det.detect({"FLAIR": p26_images["T1"]}, {"preprocessed": True})
    res = det.detect({"FLAIR": p26_images["T1"]}, {"preprocessed": True, "check_contrast": False})
    assert res.info["contrast"] == {}
    ok = det.detect({"FLAIR": p26_images["FLAIR"]}, {"preprocessed": True})
    assert ok.info["contrast"]["FLAIR"]["gm_wm"] >= 0.9 and "contrast_check" in ok.info["latencies"]


@pytest.mark.parametrize("radius", [1, 2, 3, 5])
def test_eroded_by_ball_equals_itk_binary_erode(radius):
    from uad_label.preprocess.contrast import eroded_by_ball

    rng = np.random.default_rng(radius)
    noise = sitk.GetImageFromArray(rng.standard_normal((31, 35, 33)).astype(np.float32))
    blobs = sitk.SmoothingRecursiveGaussian(noise, 2.5) > -0.02  # blobs with holes, touching the border
    expected = sitk.GetArrayFromImage(sitk.BinaryErode(blobs, [radius] * 3)) > 0
    assert 0 < expected.sum() < sitk.GetArrayViewFromImage(blobs).sum()
    np.testing.assert_array_equal(eroded_by_ball(blobs, radius), expected)


def test_eroded_by_ball_equals_itk_binary_erode_on_the_template():
    from uad_label.preprocess.contrast import eroded_by_ball
    from uad_label.template import load_template_brain_mask

    mask = load_template_brain_mask()
    expected = sitk.GetArrayFromImage(sitk.BinaryErode(mask, [12] * 3)) > 0
    np.testing.assert_array_equal(eroded_by_ball(mask, 12), expected)


def test_shipped_template_regions_are_the_computed_ones():
    """uad_label/assets/template_regions.nii.gz is what compute_template_regions() gives (rewrite it with
    write_template_regions() when the definition or the template changes); the loader uses it in the template's
    own geometry."""
    from uad_label.preprocess.contrast import REGIONS_FILE, _template_regions, compute_template_regions

    assert REGIONS_FILE.exists()
    computed, loaded = compute_template_regions(), _template_regions()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(REGIONS_FILE))),
                                  sitk.GetArrayFromImage(computed))
    assert (loaded.GetSize(), loaded.GetOrigin(), loaded.GetSpacing(), loaded.GetDirection()) == \
        (computed.GetSize(), computed.GetOrigin(), computed.GetSpacing(), computed.GetDirection())
    assert set(np.unique(sitk.GetArrayViewFromImage(loaded))) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("shipped", ["absent", "other grid"])
def test_template_regions_are_computed_without_a_matching_shipped_file(tmp_path, monkeypatch, shipped):
    from uad_label.preprocess import contrast

    path = tmp_path / "regions.nii.gz"
    if shipped == "other grid":
        sitk.WriteImage(sitk.Image(5, 6, 7, sitk.sitkUInt8), str(path))
    computed = sitk.Image(2, 2, 2, sitk.sitkUInt8)
    monkeypatch.setattr(contrast, "REGIONS_FILE", path)
    monkeypatch.setattr(contrast, "compute_template_regions", lambda: computed)
    contrast._template_regions.cache_clear()
    try:
        assert contrast._template_regions() is computed
    finally:
        contrast._template_regions.cache_clear()
