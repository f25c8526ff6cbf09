import numpy as np
import pytest
import SimpleITK as sitk

from uad_label.detectors import available, get_detector
from uad_label.detectors.params import Param, validate
from uad_label.postprocess.components import component_table, slice_scores, threshold_mask
from uad_label.preprocess.geometry import image_to_xyz, xyz_to_image
from uad_label.results import index_to_ras, summarise, superior_axis


def test_param_validation_names_parameter_expectation_and_value():
    declared = (Param("box", 16, int, "box size", minimum=1), Param("norm", "l1", str, "norm", choices=("l1", "l2")),
                Param("t", None, float, "threshold", nullable=True))
    assert validate(declared, {"box": "8"}) == {"box": 8, "norm": "l1", "t": None}
    with pytest.raises(ValueError, match=r"parameter 'box': expected an integer >= 1, received 0"):
        validate(declared, {"box": 0})
    with pytest.raises(ValueError, match=r"parameter 'norm': expected one of \['l1', 'l2'\], received 'l3'"):
        validate(declared, {"norm": "l3"})
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['boxx'\]"):
        validate(declared, {"boxx": 3})
    with pytest.raises(ValueError, match="finite"):
        validate(declared, {"t": "nan"})
    with pytest.raises(ValueError, match="an integer"):
        validate(declared, {"box": 2.5})


def test_registry_lists_flair_and_refuses_unknown():
    assert "flair_threshold" in available()
    with pytest.raises(ValueError, match="detector: expected one of"):
        get_detector("nope")
    info = get_detector("flair_threshold").info()
    assert info["params"]["min_component_mm3"]["default"] == 20.0


def test_threshold_mask_removes_components_up_to_size_in_mm3():
    m = np.zeros((10, 10, 10), np.float32)
    m[1:4, 1:4, 1:4] = 1.0  # 27 voxels
    m[7, 7, 7:9] = 1.0  # 2 voxels
    assert threshold_mask(m, 0.5, 20, 1.0).sum() == 27
    assert threshold_mask(m, 0.5, 1.9, 1.0).sum() == 29
    # the same 2 voxels are 20 mm^3 on a 10 mm^3 grid: removed (<= 20), the 27-voxel blob kept
    assert threshold_mask(m, 0.5, 20, 10.0).sum() == 27
    assert threshold_mask(m, 0.5, 270, 10.0).sum() == 0


def test_component_table_rows_and_slice_scores():
    m = np.zeros((8, 9, 10), np.float32)
    m[1:3, 1:3, 1:3] = 0.8
    m[5:8, 5:8, 6:9] = 0.9
    mask = m > 0.5
    rows = component_table(mask, m, 2.0, lambda idx: idx * 2.0)
    assert [r["id"] for r in rows] == [1, 2]
    assert rows[0]["voxels"] == 27 and rows[0]["max_score"] == pytest.approx(0.9)
    assert rows[0]["volume_ml"] == pytest.approx(27 * 2.0 / 1000)
    assert rows[0]["centroid_ras"] == [12.0, 12.0, 14.0]
    assert rows[1]["bbox_index"] == [[1, 1, 1], [2, 2, 2]]
    brain = np.ones_like(mask)
    s = slice_scores(m, mask, brain, axis=2)
    # slice z=1: 4 voxels of 0.8 flagged, 8 * 9 - 4 normal voxels
    assert s[1] == pytest.approx(4 * 0.8 / (72 - 4))
    assert s[0] == 0.0


def test_summarise_in_a_rotated_lps_grid():
    arr = np.zeros((12, 14, 10), np.float32)
    arr[3:7, 4:8, 2:6] = 1.0
    ref = sitk.Image(12, 14, 10, sitk.sitkFloat32)
    ref.SetSpacing((0.5, 0.5, 3.0))
    ref.SetOrigin((10.0, -5.0, 2.0))
    ref.SetDirection((1, 0, 0, 0, 0, -1, 0, 1, 0))  # k axis along anterior-posterior... j along S
    img = xyz_to_image(arr, ref)
    assert np.array_equal(image_to_xyz(img), arr)
    brain = xyz_to_image(np.ones_like(arr, np.uint8), ref)
    assert superior_axis(img) == 1
    mask, info, ids = summarise(img, brain, 0.5, min_component_mm3=20)
    assert image_to_xyz(mask).sum() == 64  # 64 voxels * 0.75 mm^3 = 48 mm^3 > 20
    assert np.array_equal(ids > 0, sitk.GetArrayViewFromImage(mask) > 0) and set(np.unique(ids)) == {0, 1}
    comp = info["components"][0]
    assert comp["volume_ml"] == pytest.approx(64 * 0.75 / 1000)
    expected = index_to_ras(img, np.array([[4.5, 5.5, 3.5]]))[0]
    assert comp["centroid_ras"] == pytest.approx(expected.tolist(), abs=1e-3)
    lps = img.TransformContinuousIndexToPhysicalPoint((4.5, 5.5, 3.5))
    assert comp["centroid_ras"] == pytest.approx([-lps[0], -lps[1], lps[2]], abs=1e-3)
    assert len(info["slice_scores"]["values"]) == 14


def test_parameters_are_validated_once(monkeypatch):
    """A request's parameters are validated where they enter; the detector takes them as they are."""
    from uad_label.detectors import get_detector
    from uad_label.detectors import params as params_module

    det = get_detector("flair_threshold")
    p = det.validate({"threshold": "0.5"})
    assert p["threshold"] == 0.5 and p.detector == "flair_threshold"
    calls = []
    original = params_module.validate
    monkeypatch.setattr("uad_label.detectors.base.validate", lambda *a, **k: calls.append(a) or original(*a, **k))
    assert det.validate(p) is p and calls == []
    with pytest.raises(ValueError, match="nbins"):  # another detector's parameters are checked anew
        get_detector("ppr").validate(p)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="unknown parameter"):
        det.validate({"thresold": 0.5})


def test_server_task_takes_the_routes_validated_parameters(monkeypatch, tmp_path):
    """The ASGI route validates once and the parameters ride along in the request (through MONAI Label's
    deep copies); the infer task and the detector do not validate them again."""
    import copy

    from phantoms import brain_phantom

    from uad_label.detectors import get_detector
    from uad_label.server import tasks

    img, _ = brain_phantom()
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(img, str(path))
    validated, _ = tasks.split_request("flair_threshold", {"preprocessed": True, "threshold": 0.9})
    request = copy.deepcopy({"model": "flair_threshold", "image": str(path), "preprocessed": True,
                             "threshold": 0.9, tasks.VALIDATED: validated})
    other = copy.deepcopy(request)
    other[tasks.VALIDATED] = get_detector("ppr").validate({})
    calls = []
    monkeypatch.setattr("uad_label.detectors.base.validate", lambda *a, **k: calls.append(a))
    _, info = tasks.run_infer_request("flair_threshold", request)
    assert calls == [] and info["threshold"] == 0.9 and info["threshold_source"] == "request"
    with pytest.raises(TypeError):  # parameters of another detector are validated anew (here: the stub)
        tasks.run_infer_request("flair_threshold", other)
    assert len(calls) == 1


def test_detect_without_findings_gives_the_same_map_mask_and_scores():
    """`findings=False` (uad evaluate) leaves out the findings table, the slice scores and the finalize hook;
    the map, the mask and every other entry of the result are those of the full result."""
    from phantoms import brain_phantom

    from uad_label.detectors import get_detector

    img, _ = brain_phantom(seed=3)
    det = get_detector("flair_threshold")
    full = det.detect({"FLAIR": img}, {"preprocessed": True, "threshold": 0.9})
    lean = det.detect({"FLAIR": img}, {"preprocessed": True, "threshold": 0.9}, findings=False)
    assert len(full.info["components"]) >= 1 and lean.info["component_count"] == len(full.info["components"])
    for image in ("anomaly_map", "mask"):
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(getattr(lean, image)),
                                      sitk.GetArrayViewFromImage(getattr(full, image)))
    np.testing.assert_array_equal(lean.component_ids > 0, full.component_ids > 0)
    skipped = {"components", "slice_scores", "latencies"}
    assert {k: v for k, v in full.info.items() if k not in skipped} == \
        {k: v for k, v in lean.info.items() if k not in skipped | {"component_count"}}
    assert "components" not in lean.info and "slice_scores" not in lean.info
