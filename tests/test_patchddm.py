"""PatchDDM segmenter: crops, component uncertainty, trainer data and a tiny train -> detect run (the
network and the tensor-level inference are in test_patchddm_network.py)."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.phantoms import brain_phantom
from uad_label.detectors.patchddm import add_component_uncertainty
from uad_label.training.patchddm import labelled_cases, sample_crop

TINY = {"base_channels": 4, "channel_mult": [1, 2], "num_res_blocks": 1}


def test_crops_stay_inside_and_lesion_crops_hold_the_lesion():
    rng = np.random.default_rng(0)
    starts = np.array([sample_crop((50, 60, 40), 32, rng) for _ in range(300)])
    assert starts.min() >= 0 and (starts.max(0) <= [18, 28, 8]).all() and (starts.max(0) >= [15, 24, 6]).all()
    lesion = np.array([[45, 3, 20]])
    for _ in range(20):
        s = sample_crop((50, 60, 40), 32, rng, lesion)
        assert all(s[i] <= lesion[0, i] < s[i] + 32 for i in range(3))


def test_component_uncertainty_uses_the_findings_labelling():
    """Per-finding uncertainty over the voxels of that finding, from the one labelling of the mask (the
    old nearest-centroid match gave a ring the statistics of the blob at its centre)."""
    from uad_label.postprocess.components import component_rows, threshold_labels

    score = np.zeros((16, 16, 16), np.float32)
    score[2:14, 2:14, 7:9] = 0.9  # a ring ...
    score[4:12, 4:12, 7:9] = 0.0
    score[7:9, 7:9, 7:9] = 0.95  # ... around a blob: the ring's centroid lies in the blob
    unc = np.where(score == 0.9, 0.2, 0.0).astype(np.float32)
    unc[7:9, 7:9, 7:9] = 0.8
    labels, n = threshold_labels(score, 0.5, 0, 1.0, 26)
    rows, ids = component_rows(labels, n, score, 1.0, lambda x: x)
    assert n == 2 and [r["voxels"] for r in rows] == [8, 160]
    add_component_uncertainty(rows, ids, unc)
    assert rows[0]["mean_uncertainty"] == pytest.approx(0.8) and rows[1]["mean_uncertainty"] == pytest.approx(0.2)


def _write_case(folder: Path, case: str, seed: int, gt_dir: Path | None):
    flair, gt = brain_phantom((24, 24, 16), seed=seed, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    for mod, scale in (("FLAIR", 1.0), ("T1", 0.5), ("T2", 2.0)):
        sitk.WriteImage(sitk.Cast(flair * scale, sitk.sitkFloat32), str(folder / f"{case}_{mod}.nii.gz"))
    if gt_dir is not None:
        gt_dir.mkdir(exist_ok=True, parents=True)
        sitk.WriteImage(gt, str(gt_dir / f"{case}.nii.gz"))
    return gt


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pddm")
    synth = root / "synth"
    synth.mkdir()
    for i in range(2):
        _write_case(synth, f"sub-{i:03d}", i, synth / "ground_truth")
    (synth / "manifest.json").write_text(json.dumps({"kind": "synthetic", "geometry": "template"}))
    store = root / "store"  # a MONAI Label local datastore: images + labels/final/<image id>.nii.gz
    store.mkdir()
    gt = _write_case(store, "case-a", 5, None)
    _write_case(store, "case-b", 6, None)
    (store / "labels" / "final").mkdir(parents=True)
    sitk.WriteImage(gt, str(store / "labels" / "final" / "case-a_FLAIR.nii.gz"))
    return root


def test_trainer_prefers_final_labels_and_falls_back_to_synthetic(tiny_data):
    real, synth = labelled_cases([tiny_data / "store", tiny_data / "synth"])
    assert [c["id"] for c in real] == ["case-a"] and real[0]["kind"] == "final label"  # case-b has no label
    assert [c["id"] for c in synth] == ["sub-000", "sub-001"] and all(c["preprocessed"] for c in synth)
    real, synth = labelled_cases([tiny_data / "synth"], holdout={"sub-001"})
    assert [c["id"] for c in synth] == ["sub-000"]


def test_tiny_train_then_segment_with_uncertainty(tiny_data, tmp_path, monkeypatch):
    import uad_label.detectors  # noqa: F401  (registers the trainer)
    from uad_label.active.scoring import mean_uncertainty
    from uad_label.detectors.patchddm import PatchDDM
    from uad_label.training import TrainRequest, train

    out = tmp_path / "w"
    summary = train("patchddm", TrainRequest(
        [tiny_data / "synth"], "cpu", out, "cpu",
        {"steps": 3, "crop": 8, "spacing_mm": 2.0, "batch_size": 2, "network": TINY, "preprocessed": True}))
    assert summary["steps"] == 3 and summary["source"] == "synthetic" and (out / "patchddm.pt").exists()
    card = json.loads((out / "patchddm.json").read_text(encoding="utf-8"))
    assert card["spacing_mm"] == 2.0 and card["data"]["cases"] == ["sub-000", "sub-001"]
    assert card["schedule"] == {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}

    monkeypatch.setenv("UAD_WEIGHTS_DIR", str(out))
    det = PatchDDM()
    images = {m: tiny_data / "synth" / f"sub-001_{m}.nii.gz" for m in ("FLAIR", "T1", "T2")}
    calls = []
    params = {"preprocessed": True, "steps": 2, "ensemble": 3, "members_per_batch": 2}
    threads = torch.get_num_threads()
    res = det.detect(images, params, progress=lambda f, m: calls.append((f, m)))
    assert torch.get_num_threads() == threads  # a request never changes the process's threads
    with pytest.raises(ValueError, match="threads"):
        det.validate({"threads": 1})  # a process setting (UAD_THREADS), not a request parameter
    unc = res.extras["uncertainty"]
    assert unc.GetPixelID() == sitk.sitkFloat32 and unc.GetSize() == (24, 24, 16)
    assert res.anomaly_map.GetPixelID() == sitk.sitkFloat32
    u = sitk.GetArrayFromImage(unc)
    p = sitk.GetArrayFromImage(res.anomaly_map)
    assert 0 <= u.min() and u.max() <= 1 and 0 <= p.min() and p.max() <= 1
    info = res.info
    assert info["steps"] == 2 and info["ensemble"] == 3 and info["threshold"] == 0.5
    assert info["mean_uncertainty"] == mean_uncertainty(res) and 0 <= info["mean_uncertainty"] <= 1
    assert all("mean_uncertainty" in c for c in info["components"])
    assert "sampling" in info["latencies"] and info["model_grid"] == [12, 12, 8]
    assert sum("DDIM step" in m for _, m in calls) == 4  # 2 steps x 2 batches of members
    again = det.detect(images, params, progress=lambda f, m: None)  # same seed, same samples
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again.anomaly_map), p)
    tiled = det.detect(images, {**params, "tile": 8}, progress=lambda f, m: None)
    assert tiled.info["tile"] == [8, 8, 8] and info["tile"] is None
    pt = sitk.GetArrayFromImage(tiled.anomaly_map)
    assert pt.shape == p.shape and 0 <= pt.min() and pt.max() <= 1
    with pytest.raises(ValueError, match="tile.*multiple of 2"):
        det.detect(images, {**params, "tile": 3})
    with pytest.raises(ValueError, match="missing"):
        det.detect({"FLAIR": images["FLAIR"]}, params)


def test_shipped_demo_weights_load_with_their_card():
    from uad_label.networks.patchddm import build
    from uad_label.weights import PACKAGE_WEIGHTS

    path = PACKAGE_WEIGHTS / "patchddm.pt"
    if not path.exists():
        pytest.skip(f"no demo weights at {path}")
    card = json.loads(path.with_suffix(".json").read_text())
    for key in ("network", "schedule", "spacing_mm", "modalities", "data", "training", "limitations", "metrics"):
        assert key in card, key
    net = build(card["network"])
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))  # strict: every tensor matches
    assert path.stat().st_size < 8 * 2**20
