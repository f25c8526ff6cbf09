"""Calibration from approved labels: thresholds chosen by cross-validation beat the fixed default on
held-out cases; cards are written atomically, refused when corrupt, and used by detection."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from uad_label.detectors import get_detector
from uad_label.detectors.calibration_card import CalibrationCardError, read_card
from uad_label.errors import InputError
from uad_label.evaluation.calibrate import MIN_CASES, calibrate, weight_grid
from uad_label.evaluation.metrics import dice

SHAPE = (40, 44, 36)


def _smooth_noise(rng):
    """Unit-variance noise correlated over ~2 voxels: bright tissue forms blobs the component filter keeps."""
    from scipy.ndimage import gaussian_filter

    n = gaussian_filter(rng.standard_normal(SHAPE), 1.5)
    return n / n.std()


def lesion_case(seed: int, n_lesions: int = 2, radius: float = 2.0):
    """(FLAIR, T1, lesion mask) as (x, y, z) arrays: a noisy ellipsoid 'brain' with small bright blobs
    (about 0.3% of the brain: the fixed default 0.99 flags the top 1%, three times too much)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    brain = (grid ** 2).sum(0) < 0.8
    flair = np.where(brain, 100 + 8 * _smooth_noise(rng), 0).astype(np.float32)
    t1 = np.where(brain, 80 + 8 * _smooth_noise(rng), 0).astype(np.float32)
    gt = np.zeros(SHAPE, np.uint8)
    idx = np.indices(SHAPE)
    for _ in range(n_lesions):
        c = np.array(SHAPE) // 2 + rng.integers(-7, 8, 3)
        gt[((idx - c[:, None, None, None]) ** 2).sum(0) <= radius ** 2] = 1
    gt &= brain
    flair[gt > 0] = 150 + 8 * rng.standard_normal(int(gt.sum()))
    t1[gt > 0] = 70 + 8 * rng.standard_normal(int(gt.sum()))
    return flair, t1, gt


def _image(a):
    im = sitk.GetImageFromArray(np.ascontiguousarray(a.transpose(2, 1, 0)))
    im.SetOrigin((10.0, 20.0, -5.0))
    return im


def write_cases(root: Path, n: int, layout: str = "folders", first_seed: int = 0) -> Path:
    """n labelled cases: one folder per case with a GT, or a MONAI Label datastore with labels/final."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        flair, t1, gt = lesion_case(first_seed + i)
        if layout == "folders":
            d = root / f"case{i:02d}"
            d.mkdir()
            for name, a in (("FLAIR", flair), ("T1", t1), ("GT", gt)):
                sitk.WriteImage(_image(a), str(d / f"{name}.nii.gz"))
        else:
            sitk.WriteImage(_image(flair), str(root / f"case{i:02d}_FLAIR.nii.gz"))
            sitk.WriteImage(_image(t1), str(root / f"case{i:02d}_T1.nii.gz"))
            (root / "labels" / "final").mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(_image(gt), str(root / "labels" / "final" / f"case{i:02d}_FLAIR.nii.gz"))
    return root


PARAMS = {"preprocessed": True, "check_contrast": False, "min_component_mm3": 5}


@pytest.fixture()
def weights_dir(tmp_path, monkeypatch):
    d = tmp_path / "weights"
    monkeypatch.setenv("UAD_WEIGHTS_DIR", str(d))
    return d


def test_calibrated_threshold_beats_default_on_held_out_folds(tmp_path, weights_dir):
    data = write_cases(tmp_path / "cases", 6)
    card = calibrate("flair_threshold", data, PARAMS, folds=3, progress=False)
    assert card["baseline"]["threshold"] == 0.99 and card["baseline"]["source"].startswith("default")
    assert len(card["folds"]) == 3 and sum(len(f["held_out"]) for f in card["folds"]) == 6
    for fold in card["folds"]:  # every held-out fold: chosen without its cases, better than the default
        assert fold["dice_held_out"] > fold["dice_held_out_default"] + 0.1, fold
    assert card["dice_cv"]["calibrated"] > card["dice_cv"]["default"] + 0.1
    assert card["threshold"] > 0.99  # lesions are ~0.3% of the brain: fewer voxels than the top 1%
    path = Path(card["path"])
    assert path == weights_dir / "flair_threshold.calibration.json"
    assert json.loads(path.read_text())["threshold"] == card["threshold"]


def test_detection_uses_a_valid_card_and_says_so(tmp_path, weights_dir):
    data = write_cases(tmp_path / "cases", 4, layout="datastore")
    card = calibrate("flair_threshold", data, PARAMS, folds=2, progress=False)
    assert {c["label_kind"] for c in card["cases"]} == {"final label"}
    flair, _, gt = lesion_case(99)
    img = _image(flair)
    det = get_detector("flair_threshold")
    r = det.detect({"FLAIR": img}, PARAMS)
    assert r.info["threshold"] == pytest.approx(card["threshold"])
    assert r.info["threshold_source"].startswith("calibrated") and str(weights_dir) in r.info["threshold_source"]
    mask = sitk.GetArrayFromImage(r.mask).transpose(2, 1, 0) > 0
    default = det.detect({"FLAIR": img}, {**PARAMS, "threshold": 0.99})
    mask0 = sitk.GetArrayFromImage(default.mask).transpose(2, 1, 0) > 0
    assert dice(mask, gt > 0) > dice(mask0, gt > 0)  # an unseen case, too
    # a card made for other map parameters does not apply
    r2 = det.detect({"FLAIR": img}, {**PARAMS, "nbins": 128})
    assert r2.info["threshold"] == 0.99 and r2.info["threshold_source"].startswith("default")


def test_card_is_written_atomically(tmp_path, weights_dir, monkeypatch):
    data = write_cases(tmp_path / "cases", 4)
    card = calibrate("flair_threshold", data, PARAMS, folds=2, progress=False)
    before = Path(card["path"]).read_bytes()

    import uad_label.atomic as atomic

    def failing_write(path, data, fsync=False):  # the writer dies half-way through the new card
        with atomic.atomic_path(path) as tmp:
            tmp.write_bytes(data[: len(data) // 2])
            raise OSError("disk full")

    monkeypatch.setattr(atomic, "write_bytes", failing_write)
    with pytest.raises(OSError, match="disk full"):
        calibrate("flair_threshold", data, {**PARAMS, "min_component_mm3": 3}, folds=2, progress=False)
    assert Path(card["path"]).read_bytes() == before
    assert [p.name for p in weights_dir.iterdir()] == ["flair_threshold.calibration.json"]


@pytest.mark.parametrize("content, message", [
    ('{"kind": "uad-calibration", "version": 1, "detector": "flair_threshold", "thres', "unreadable JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"kind": "uad-calibration", "version": 1, "detector": "flair_threshold", "threshold": "high", '
     '"map_params": {}, "cases": [1], "folds": [1]}', "'threshold': expected a finite number"),
    ('{"kind": "uad-calibration", "version": 1, "detector": "ppr", "threshold": 0.5, '
     '"map_params": {}, "cases": [1], "folds": [1]}', "expected detector 'flair_threshold'"),
    ('{"kind": "uad-calibration", "version": 1, "detector": "flair_threshold", "threshold": 0.5, '
     '"map_params": {"nbins": 256}, "folds": [1]}', "'cases': expected a non-empty list"),
])
def test_corrupt_card_is_refused_not_used(tmp_path, weights_dir, content, message):
    weights_dir.mkdir()
    (weights_dir / "flair_threshold.calibration.json").write_text(content)
    flair, _, _ = lesion_case(1)
    with pytest.raises(CalibrationCardError, match=message) as exc:
        get_detector("flair_threshold").detect({"FLAIR": _image(flair)}, PARAMS)
    assert "uad calibrate flair_threshold" in str(exc.value)
    # an explicit threshold needs no card
    r = get_detector("flair_threshold").detect({"FLAIR": _image(flair)}, {**PARAMS, "threshold": 0.98})
    assert r.info["threshold_source"] == "request"


def test_too_few_labelled_cases_are_refused_with_the_number_needed(tmp_path, weights_dir):
    data = write_cases(tmp_path / "cases", MIN_CASES - 1)
    with pytest.raises(InputError, match=f"needs at least {MIN_CASES} labelled cases.*found {MIN_CASES - 1}"):
        calibrate("flair_threshold", data, PARAMS, progress=False)
    assert read_card("flair_threshold") is None  # nothing written


def test_calibrate_cli_and_refusal(tmp_path, weights_dir):
    data = write_cases(tmp_path / "cases", 4)
    env = {**os.environ, "UAD_WEIGHTS_DIR": str(weights_dir)}
    cmd = [sys.executable, "-m", "uad_label.cli.main", "calibrate", "flair_threshold", "--data", str(data),
           "--preprocessed", "-p", "check_contrast=false", "-p", "min_component_mm3=5", "--folds", "2"]
    r = subprocess.run(cmd, capture_output=True, encoding="utf-8", env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "cross-validated pooled Dice" in r.stdout and (weights_dir / "flair_threshold.calibration.json").exists()
    r = subprocess.run(cmd + ["--min-cases", "9"], capture_output=True, encoding="utf-8", env=env, timeout=600)
    assert r.returncode == 2 and "needs at least 9 labelled cases" in r.stderr


def test_fusion_weights_are_calibrated_and_used(tmp_path, weights_dir):
    data = write_cases(tmp_path / "cases", 4)
    params = {**PARAMS, "members": "flair_threshold,tissue_outlier",
              "member_params": {"tissue_outlier": {"atlas": False}}}
    card = calibrate("fusion", data, params, folds=2, progress=False)
    assert card["rule"] == "mean" and len(card["weights"]) == 2 and sum(card["weights"]) == pytest.approx(1)
    assert card["dice_cv"]["calibrated"] >= card["dice_cv"]["default"]
    flair, t1, _ = lesion_case(7)
    r = get_detector("fusion").detect({"FLAIR": _image(flair), "T1": _image(t1)}, params)
    assert r.info["fusion"]["weights"] == card["weights"]
    assert r.info["fusion"]["weights_source"].startswith("calibration card")
    assert r.info["threshold"] == pytest.approx(card["threshold"])


def test_weight_grid_covers_the_simplex():
    g = weight_grid(2)
    assert len(g) == 11 and [1.0, 0.0] in g and [0.5, 0.5] in g
    g3 = weight_grid(3)  # steps of 1/4 (15 points) and equal weights
    assert all(sum(w) == pytest.approx(1, abs=1e-5) for w in g3) and len(g3) == 16 and [0.333333] * 3 in g3


def test_saving_final_labels_recalibrates_through_the_train_task(tmp_path):
    """Real server: `calibrate_flair_threshold` is a train task; with finetune_model naming it, saving a final
    label re-calibrates, and the next inference uses the new card and says so."""
    import time

    import requests
    from server_fixture import Server

    studies = write_cases(tmp_path / "studies", 4, layout="datastore")
    (studies / "manifest.json").write_text(json.dumps({"geometry": "template"}))  # template-space input
    last = studies / "labels" / "final" / "case03_FLAIR.nii.gz"
    label_bytes = last.read_bytes()
    last.unlink()  # three final labels on disk; the fourth comes through the API and triggers the task
    weights = tmp_path / "weights"
    server = Server(studies, tmp_path / "server.log", env={"UAD_WEIGHTS_DIR": str(weights)},
                    conf={"models": "flair_threshold", "weights_dir": str(weights),
                          "finetune_model": "calibrate_flair_threshold", "finetune_every": "1"})
    try:
        info = requests.get(server.url + "/info/", timeout=30).json()
        assert "calibrate_flair_threshold" in info["trainers"]
        label = tmp_path / "label.nii.gz"
        label.write_bytes(label_bytes)
        with open(label, "rb") as f:
            r = requests.put(server.url + "/datastore/label", params={"image": "case03_FLAIR", "tag": "final"},
                             files={"label": ("label.nii.gz", f)}, timeout=60)
        assert r.status_code == 200, r.text
        assert "finetune" in r.json() and "error" not in (r.json()["finetune"] or {}), r.json()
        card = weights / "flair_threshold.calibration.json"
        deadline = time.time() + 300
        while time.time() < deadline and not card.exists():
            time.sleep(2)
        assert card.exists(), requests.get(server.url + "/train/", timeout=10).text
        threshold = json.loads(card.read_text())["threshold"]
        r = requests.post(server.url + "/infer/flair_threshold", params={"image": "case00_FLAIR"},
                          data={"params": json.dumps(PARAMS)}, timeout=120)
        assert r.status_code == 200, r.text[:500]
        assert f"calibrated: {threshold:.4g}" in r.text
    finally:
        server.stop()
