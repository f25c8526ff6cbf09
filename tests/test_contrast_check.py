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
