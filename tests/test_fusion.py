"""The fusion detector: common scale, rules, member maps in the result, members run once per case."""
import os

import numpy as np
import pytest
import SimpleITK as sitk
from test_calibration import PARAMS, _image, lesion_case

from uad_label.detectors import get_detector
from uad_label.detectors.fusion import MEMBER_CACHE, combine
from uad_label.errors import InputError
from uad_label.transforms.intensity import brain_quantile

FAST = {**PARAMS, "members": "flair_threshold,tissue_outlier",
        "member_params": '{"tissue_outlier": {"atlas": false, "iterations": 5}}'}


@pytest.fixture(autouse=True)
def no_cards(tmp_path, monkeypatch):
    monkeypatch.setenv("UAD_WEIGHTS_DIR", str(tmp_path / "weights"))
    MEMBER_CACHE.clear()
    yield
    MEMBER_CACHE.clear()


def _xyz(image):
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def test_brain_quantile_is_the_mid_rank_inside_the_brain():
    v = np.array([[[5.0, 1.0, 3.0, 3.0, 9.0]]])
    brain = np.array([[[True, True, True, True, False]]])
    q = brain_quantile(v, brain)
    # ranks 4, 1, 2.5, 2.5 of 4 voxels -> (r - 0.5) / 4; outside the brain 0
    assert q.ravel().tolist() == pytest.approx([0.875, 0.125, 0.5, 0.5, 0.0])
    # the scale does not matter: any increasing transform gives the same quantiles
    assert np.array_equal(brain_quantile(np.exp(v), brain), q)


def test_rules():
    a = np.array([0.9, 0.2, 0.0], np.float32)
    b = np.array([0.5, 0.8, 0.0], np.float32)
    assert combine([a, b], [3, 1], "mean") == pytest.approx([0.8, 0.35, 0.0])
    assert combine([a, b], [1, 1], "product") == pytest.approx([np.sqrt(0.45), 0.4, 0.0], rel=1e-5)
    # logistic: sigmoid(b0 + sum w logit q)
    lo = combine([a[:2], b[:2]], [1.0, 2.0], "logistic", intercept=-1.0)
    z = -1 + np.log(a[:2] / (1 - a[:2])) + 2 * np.log(b[:2] / (1 - b[:2]))
    assert lo == pytest.approx(1 / (1 + np.exp(-z)), rel=1e-5)
    # a zero weight removes a member from the mean and the product
    assert combine([a, b], [1, 0], "mean") == pytest.approx(a)
    assert combine([a[:2], b[:2]], [1, 0], "product") == pytest.approx(a[:2], rel=1e-5)
    with pytest.raises(ValueError, match="one per member"):
        combine([a, b], [1], "mean")


def _case(tmp_path, seed=0):
    flair, t1, gt = lesion_case(seed)
    paths = {}
    for name, arr in (("FLAIR", flair), ("T1", t1)):
        paths[name] = tmp_path / f"c{seed}_{name}.nii.gz"
        sitk.WriteImage(_image(arr), str(paths[name]))
    return paths, gt


def test_fused_map_and_member_maps_in_the_result(tmp_path):
    paths, gt = _case(tmp_path)
    r = get_detector("fusion").detect(paths, {**FAST, "weights": "3,1"})
    assert set(r.extras) == {"member_flair_threshold", "member_tissue_outlier"}
    fused = _xyz(r.anomaly_map)
    q1, q2 = _xyz(r.extras["member_flair_threshold"]), _xyz(r.extras["member_tissue_outlier"])
    brain = _xyz(r.brain) > 0
    assert 0 <= q1.min() and q1.max() < 1 and np.all(q1[~brain] == 0)
    assert fused == pytest.approx(0.75 * q1 + 0.25 * q2, abs=1e-6)  # template space: the work grid is the native
    info = r.info["fusion"]
    assert info["members"] == ["flair_threshold", "tissue_outlier"] and info["weights"] == [3.0, 1.0]
    assert info["weights_source"] == "request" and "tissue_outlier" in info["member_info"]
    assert r.info["threshold"] == 0.99 and "uncalibrated" in r.info["threshold_source"]
    assert fused[gt > 0].mean() > 0.95 > fused[brain & (gt == 0)].mean()  # the lesions rank high in both


def test_members_run_once_per_case(tmp_path, monkeypatch):
    calls = {}
    for name in ("flair_threshold", "tissue_outlier"):
        det = get_detector(name)
        real = det.compute_map

        def counting(case, params, progress, real=real, name=name):
            calls[name] = calls.get(name, 0) + 1
            return real(case, params, progress)

        monkeypatch.setattr(det, "compute_map", counting)
    fusion = get_detector("fusion")
    paths, _ = _case(tmp_path)
    a = fusion.detect(paths, FAST)
    fusion.detect(paths, {**FAST, "rule": "product", "threshold": 0.9, "min_component_mm3": 0})
    fusion.detect(paths, {**FAST, "weights": "1,2"})
    assert calls == {"flair_threshold": 1, "tissue_outlier": 1}
    # another member parameter: that member runs again, the other does not
    fusion.detect(paths, {**FAST, "member_params": '{"tissue_outlier": {"atlas": false, "iterations": 4}}'})
    assert calls == {"flair_threshold": 1, "tissue_outlier": 2}
    # a changed image file (new mtime) is a new case; the same pixels in memory are cached by content
    os.utime(paths["FLAIR"], ns=(1, 1))
    b = fusion.detect(paths, FAST)
    assert calls == {"flair_threshold": 2, "tissue_outlier": 3}
    assert np.array_equal(_xyz(a.anomaly_map), _xyz(b.anomaly_map))
    images = {m: sitk.ReadImage(str(p)) for m, p in paths.items()}
    fusion.detect(images, FAST)
    fusion.detect(images, {**FAST, "weights": "1,3"})
    assert calls == {"flair_threshold": 3, "tissue_outlier": 4}


def test_default_members_and_refusals(tmp_path):
    fusion = get_detector("fusion")
    p = fusion.validate({})
    assert p["members"].split(",")[:2] == ["flair_threshold", "tissue_outlier"] and "samseg" not in p["members"]
    for bad, message in ((({"members": "flair_threshold,nope"}), "parameter 'members'"),
                         ({"members": "fusion"}, "parameter 'members'"),
                         ({"members": "flair_threshold,flair_threshold"}, "parameter 'members'"),
                         ({"members": "flair_threshold,tissue_outlier", "weights": "1"}, "expected 2 finite"),
                         ({"weights": "1,-1"}, "non-negative"),
                         ({"member_params": '{"ppr": {}}'}, "keyed by members"),
                         ({"member_params": "{"}, "expected a JSON object")):
        with pytest.raises(InputError, match=message):
            fusion.validate(bad)
    paths, _ = _case(tmp_path)
    with pytest.raises(InputError, match="rule=logistic needs fitted coefficients"):
        fusion.detect(paths, {**FAST, "rule": "logistic"})
    with pytest.raises(InputError, match="unknown parameter"):  # a member's parameters are its own
        fusion.detect(paths, {**FAST, "member_params": '{"tissue_outlier": {"nbins": 3}}'})
