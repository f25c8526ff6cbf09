"""The evaluator: the published reference on the real MSLUB patient, and the CLI around it."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from phantoms import brain_phantom

from uad_label.cases import find_cases, split_name
from uad_label.evaluation.evaluate import evaluate


def uad(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "uad_label.cli.main", *args], capture_output=True, text=True,
                          encoding="utf-8", cwd=cwd, timeout=600)


def test_reference_numbers_on_mslub_patient26(patient26, tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "patient26").symlink_to(patient26)
    m = evaluate("flair_threshold", cases, tmp_path / "out", {"preprocessed": True}, progress=False)
    # computed outside the project with the published implementation (../shared/data/README.md)
    assert m["dsc_upper"] == pytest.approx(0.463, abs=0.003)
    assert m["auprc"] == pytest.approx(0.248, abs=0.002)
    assert m["auroc"] == pytest.approx(0.992, abs=0.001)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))
    for key in ("dsc_upper", "auprc", "auroc", "cases", "seconds", "per_case"):
        assert key in saved
    assert saved["cases"] == 1 and saved["per_case"][0]["case"] == "patient26"
    assert (tmp_path / "out" / "pr_curve.png").stat().st_size > 10_000


def _write_cases(root: Path, n=2):
    for i in range(n):
        d = root / f"case{i}"
        d.mkdir(parents=True)
        img, gt = brain_phantom(seed=i)
        sitk.WriteImage(img, str(d / "FLAIR.nii.gz"))
        sitk.WriteImage(gt, str(d / "GT.nii.gz"))


def test_evaluate_cli_prints_table_and_writes_outputs(tmp_path):
    _write_cases(tmp_path / "cases")
    r = uad("evaluate", "flair_threshold", str(tmp_path / "cases"), "--preprocessed", "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert "pooled over 2 case(s)" in r.stdout and "case1" in r.stdout
    m = json.loads((tmp_path / "o" / "metrics.json").read_text(encoding="utf-8"))
    assert m["cases"] == 2 and 0 < m["dsc_upper"] <= 1 and m["auroc"] > 0.9  # the blob is bright
    assert len(m["per_case"]) == 2


def test_evaluate_refuses_cases_without_ground_truth(tmp_path):
    d = tmp_path / "cases" / "a"
    d.mkdir(parents=True)
    img, _ = brain_phantom()
    sitk.WriteImage(img, str(d / "FLAIR.nii.gz"))
    r = uad("evaluate", "flair_threshold", str(tmp_path / "cases"), "--preprocessed")
    assert r.returncode == 2 and "without a ground truth" in r.stderr
    r = uad("evaluate", "flair_threshold", str(tmp_path / "missing"))
    assert r.returncode == 2 and "not a folder" in r.stderr


def test_flat_datastore_layout_is_discovered(tmp_path):
    img, gt = brain_phantom()
    sitk.WriteImage(img, str(tmp_path / "sub-000_FLAIR.nii.gz"))
    sitk.WriteImage(img, str(tmp_path / "sub-000_T1.nii.gz"))
    (tmp_path / "ground_truth").mkdir()
    sitk.WriteImage(gt, str(tmp_path / "ground_truth" / "sub-000.nii.gz"))
    cases = find_cases(tmp_path, require_gt=True)
    assert [c.case_id for c in cases] == ["sub-000"]
    assert set(cases[0].images) == {"FLAIR", "T1"} and cases[0].gt.name == "sub-000.nii.gz"
    assert split_name("p01_t2w.nrrd") == ("p01", "T2")
    assert split_name("scan.nii.gz") is None


def test_detect_cli_writes_float_map_mask_and_json(tmp_path):
    img, gt = brain_phantom(shape=(40, 44, 36))
    sitk.WriteImage(img, str(tmp_path / "scan.nrrd"))
    r = uad("detect", "flair_threshold", str(tmp_path / "scan.nrrd"), "--preprocessed", "-p", "threshold=0.95",
            "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    amap = sitk.ReadImage(str(tmp_path / "out" / "map.nii.gz"))
    mask = sitk.ReadImage(str(tmp_path / "out" / "mask.nii.gz"))
    info = json.loads((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))
    assert amap.GetPixelID() == sitk.sitkFloat32 and amap.GetSize() == img.GetSize()
    assert np.allclose(amap.GetDirection(), img.GetDirection()) and np.allclose(amap.GetOrigin(), img.GetOrigin())
    assert info["threshold"] == 0.95 and info["components"]
    found = sitk.GetArrayFromImage(mask) > 0
    assert (found & (sitk.GetArrayFromImage(gt) > 0)).sum() > 0.5 * (sitk.GetArrayFromImage(gt) > 0).sum()


def test_detect_cli_bad_parameter_is_a_clear_error(tmp_path):
    img, _ = brain_phantom(shape=(20, 20, 20))
    sitk.WriteImage(img, str(tmp_path / "s.nii.gz"))
    r = uad("detect", "flair_threshold", str(tmp_path / "s.nii.gz"), "-p", "min_component_mm3=-1",
            "--out", str(tmp_path))
    assert r.returncode == 2 and "parameter 'min_component_mm3'" in r.stderr
    r = uad("detect", "flair_threshold", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path))
    assert r.returncode == 2 and "does not exist" in r.stderr


@pytest.mark.parametrize("command", ["sample-data", "serve", "detect", "evaluate", "bench", "pseudo-label", "batch"])
def test_every_subcommand_has_help_with_an_example(command):
    r = uad(command, "--help")
    assert r.returncode == 0, r.stderr
    assert "example" in r.stdout.lower()


def test_pooled_ranking_metrics_equal_scikit_learn():
    """AUROC, AUPRC and the PR curve come from one sorted pass (uad_label.evaluation.metrics.ranking_curve);
    scikit-learn over every voxel is the reference."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    from uad_label.evaluation.metrics import evaluate_maps

    rng = np.random.default_rng(5)
    maps = [np.round(rng.random((11, 9, 8)), 3).astype(np.float32) for _ in range(3)]  # ties within and across maps
    gts = [rng.random(m.shape) < 0.05 + 0.3 * m for m in maps]
    ev = evaluate_maps(maps, gts, n_thresholds=20)
    r = ev.result()
    s = np.concatenate([m.ravel() for m in maps])
    y = np.concatenate([g.ravel() for g in gts])
    assert r["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert r["auprc"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    precision, recall = ev.pr_curve()
    ref_p, ref_r, _ = precision_recall_curve(y, s)
    np.testing.assert_allclose(precision, ref_p, atol=1e-12)
    np.testing.assert_allclose(recall, ref_r, atol=1e-12)
    ev.add(maps[0], np.zeros(maps[0].shape, bool))  # a case added later changes the result
    assert ev.result()["auroc"] != r["auroc"]
    assert np.isnan(evaluate_maps([maps[0]], [np.zeros(maps[0].shape, bool)]).result()["auprc"])
