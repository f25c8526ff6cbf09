"""Reconstruction detectors (baur_ae, ae3d, strega): shared pipeline, tiny end-to-end training on
phantoms, serving, errors. The networks here are a few kB; quality is measured by the benchmarks."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from phantoms import brain_phantom

from uad_label import weights as weights_mod
from uad_label.detectors import get_detector
from uad_label.training import TrainRequest, get_trainer
from uad_label.transforms.canvas import Canvas
from uad_label.transforms.intensity import median_normalise as normalise
from uad_label.transforms.residual import residual_map
from uad_label.weights import UntrainedError

TINY = {
    "baur_ae": {"network": {"channels": [4, 8], "latent_channels": 2, "kernel_size": 3}},
    "ae3d": {"network": {"channels": [4, 8], "bottleneck": 8, "stem": 2}},
    "strega": {"network": {"channels": [4, 8], "latent": 8, "batch_norm": True, "res_blocks": True},
               "augmented_copies": 0, "batch_size": 8, "max_squares": 1},
}


def tissue_phantom(shape=(40, 44, 36), modality="T2", seed=0, lesion=False) -> sitk.Image:
    """Ellipsoid brain: central CSF ventricle, white matter, a grey-matter rim; contrast of `modality`."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((g ** 2).sum(0))
    level = {"T1": (40.0, 80.0, 110.0), "T2": (200.0, 120.0, 80.0), "FLAIR": (30.0, 110.0, 90.0)}[modality]
    img = np.where(r < 0.9, level[1], 0.0)  # GM
    img[r < 0.75] = level[2]  # WM
    img[r < 0.3] = level[0]  # CSF
    img = np.where(r < 0.9, img + 4 * rng.standard_normal(shape), 0).astype(np.float32)
    if lesion:
        c = np.array(shape) // 2 + np.array([8, -6, 4])
        img[((np.indices(shape) - c[:, None, None, None]) ** 2).sum(0) <= 9] = 1.6 * max(level)
    im = sitk.GetImageFromArray(np.ascontiguousarray(img.transpose(2, 1, 0)))
    im.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    return im


def _datastore(path, modality, n=3):
    path.mkdir()
    cases = []
    for i in range(n):
        img = tissue_phantom(modality=modality, seed=i) if modality != "FLAIR" else \
            brain_phantom(shape=(40, 44, 36), seed=i, lesion=False)[0]
        sitk.WriteImage(img, str(path / f"sub-{i:03d}_{modality}.nii.gz"))
        cases.append({"id": f"sub-{i:03d}", "healthy": True})
    (path / "manifest.json").write_text(json.dumps({"geometry": "template", "cases": cases}))
    return path


@pytest.fixture
def no_package_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(weights_mod, "PACKAGE_WEIGHTS", tmp_path / "no_package_weights")
    monkeypatch.setenv("UAD_WEIGHTS_DIR", str(tmp_path / "weights"))
    return tmp_path / "weights"


def test_canvas_round_trip_and_coverage():
    brain = np.zeros((30, 34, 26), bool)
    brain[5:25, 6:30, 4:20] = True
    vol = np.random.default_rng(0).random(brain.shape).astype(np.float32) * brain
    cv = Canvas.around(brain, (32, 32, 24), 1)
    assert cv.coverage(brain) == 1.0
    back = cv.to_work(cv.to_canvas(vol))
    np.testing.assert_array_equal(back[brain], vol[brain])
    cv2 = Canvas.around(brain, (16, 16, 12), 2)
    assert tuple(cv2.to_canvas(vol).shape) == (1, 1, 16, 16, 12)
    const = cv2.to_work(cv2.to_canvas(brain.astype(np.float32)))
    assert np.allclose(const[8:22, 9:27, 6:18], 1.0)
    small = Canvas.around(brain, (8, 8, 8), 1)
    assert small.coverage(brain) < 0.2  # a canvas smaller than the brain says so


def test_normalise_median_and_errors():
    brain = np.zeros((8, 8, 8), bool)
    brain[2:6, 2:6, 2:6] = True
    vol = np.where(brain, 200.0, 7.0)
    out = normalise(vol, brain)
    assert np.allclose(out[brain], 0.5) and (out[~brain] == 0).all()
    with pytest.raises(ValueError, match="empty mask"):
        normalise(vol, np.zeros_like(brain))
    with pytest.raises(ValueError, match="3D"):
        normalise(vol[0], brain[0])
    bad = vol.copy()
    bad[3, 3, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        normalise(bad, brain)


def test_residual_modes_filters_and_healthy_mean():
    img = torch.zeros(1, 12, 12, 12)
    rec = torch.zeros_like(img)
    img[0, 6, 6, 6] = 1.0  # a single bright voxel: kept unfiltered, removed by the median / erosion
    rec[0, 2, 2, 2] = 1.0  # darker than its reconstruction: abs keeps it, positive drops it
    brain = torch.ones(12, 12, 12, dtype=torch.bool)
    brain[0] = False
    m, per_slice = residual_map(img, rec, brain, "abs")
    assert m[6, 6, 6] == 1 and m[2, 2, 2] == 1 and per_slice.shape == (12,)
    m, _ = residual_map(img, rec, brain, "positive")
    assert m[6, 6, 6] == 1 and m[2, 2, 2] == 0
    for f in ("median", "erosion"):
        m, _ = residual_map(img, rec, brain, "abs", filter=f, filter_size=3)
        assert float(m.max()) == 0.0
    block = torch.zeros_like(img)
    block[0, 3:9, 3:9, 3:9] = 1.0
    m, _ = residual_map(block, rec * 0, brain, "abs", filter="median", filter_size=3)
    assert m[6, 6, 6] == 1.0  # a lesion-sized region survives
    mean = torch.full((12, 12, 12), 0.25)
    m, _ = residual_map(block, rec * 0, brain, "abs", healthy_mean=mean)
    assert m[6, 6, 6] == pytest.approx(0.75) and float(m.min()) == 0.0  # floored at zero
    with pytest.raises(ValueError, match="filter"):
        residual_map(img, rec, brain, "abs", filter="gauss")


@pytest.mark.parametrize("name", ["baur_ae", "ae3d"])
def test_volume_autoencoder_trains_serves_and_checks(tmp_path, no_package_weights, name):
    ds = _datastore(tmp_path / "ds", "FLAIR")
    overrides = {**TINY[name], "canvas": [16, 16, 16], "factor": 2, "epochs": 2, "batch_size": 2}
    if name == "ae3d":
        overrides["exclude_above"] = 1.25  # the phantoms' lesion-free brains: nothing is that bright
    summary = get_trainer(name)(TrainRequest([ds], "cpu", no_package_weights, "cpu", overrides))
    assert summary["epochs"] == 2 and np.isfinite(summary["best_val_loss"])
    card = json.loads((no_package_weights / f"{name}.json").read_text(encoding="utf-8"))
    assert card["exclude_above"] == overrides.get("exclude_above")
    assert len(card["excluded_brain_fraction"]) == 3 and all(0 <= f < 1
                                                             for f in card["excluded_brain_fraction"].values())
    assert card["detector"] == name and card["data"]["n_val"] == 1 and card["data"]["n_train"] == 2
    assert "abs/median5/raw" in card["thresholds"] and card["loss"] == ("l1" if name == "baur_ae" else "mse")
    det = get_detector(name)
    assert det.info()["trained"] is True
    img, _ = brain_phantom(shape=(40, 44, 36), seed=9, lesion=True)
    res = det.detect({"FLAIR": img}, {"preprocessed": True, "filter": "median"})
    arr = sitk.GetArrayFromImage(res.anomaly_map)
    brain = sitk.GetArrayFromImage(img) > 0
    assert arr.shape == brain.shape and (arr[~brain] == 0).all() and arr[brain].max() > 0
    assert res.info["threshold"] == pytest.approx(card["thresholds"]["abs/median5/raw"])
    assert "healthy validation" in res.info["threshold_source"] and "detect" in res.info["latencies"]
    res2 = det.detect({"FLAIR": img}, {"preprocessed": True, "subtract_healthy_mean": True, "filter": "median"})
    assert sitk.GetArrayFromImage(res2.anomaly_map).sum() < arr.sum()  # the healthy mean residual came off
    with pytest.raises(ValueError, match="missing \\['FLAIR'\\]"):
        det.detect({"T1": img}, {"preprocessed": True})
    with pytest.raises(ValueError, match="filter"):
        det.detect({"FLAIR": img}, {"preprocessed": True, "filter": "gauss"})
    # a model card that says T1: the FLAIR request is refused by name
    card["modality"] = "T1"
    (no_package_weights / f"{name}.json").write_text(json.dumps(card))
    (no_package_weights / f"{name}.pt").touch()  # new mtime: the detector reloads
    with pytest.raises(ValueError, match="trained on T1"):
        det.detect({"FLAIR": img}, {"preprocessed": True})


def test_untrained_detectors_say_so(no_package_weights):
    img, _ = brain_phantom(shape=(20, 20, 20), lesion=False)
    for name, mod in (("baur_ae", "FLAIR"), ("ae3d", "FLAIR"), ("strega", "T2")):
        det = get_detector(name)
        assert det.info()["trained"] is False
        with pytest.raises(UntrainedError, match=f"uad train {name}"):
            det.detect({mod: img}, {"preprocessed": True})


def test_loss_weights_leave_bright_brain_voxels_and_their_neighbours_out():
    from uad_label.training.recon_common import loss_weights, weighted_loss

    x = torch.full((2, 1, 8, 8, 8), 0.5)
    b = torch.zeros_like(x, dtype=torch.bool)
    b[:, :, 1:7, 1:7, 1:7] = True
    x[0, 0, 3, 3, 3] = 0.8  # 1.6 x the brain median, inside the brain
    x[1, 0, 0, 0, 0] = 0.8  # as bright, outside the brain: background stays in the loss
    w = loss_weights(x, b, 1.25)
    assert w[0, 0, 2:5, 2:5, 2:5].sum() == 0 and w[0].sum() == 8 ** 3 - 27
    assert w[1].sum() == 8 ** 3
    assert torch.equal(loss_weights(x, b, None), torch.ones_like(x))
    pred = torch.rand_like(x)
    ones = torch.ones_like(x)
    assert weighted_loss(pred, x, ones, "l1") == pytest.approx(float(torch.nn.functional.l1_loss(pred, x)))
    assert weighted_loss(pred, x, ones, "mse") == pytest.approx(float(torch.nn.functional.mse_loss(pred, x)))
    pred[0, 0, 3, 3, 3] = 100.0  # an error on an excluded voxel does not count
    assert weighted_loss(pred, x, w, "l1") < 1.0
    with pytest.raises(ValueError, match="exclude_above: expected a ratio to the brain median above 1"):
        loss_weights(x, b, 0.9)
    with pytest.raises(ValueError, match="exclude_above: .* received 'high'"):
        loss_weights(x, b, "high")


def test_bad_overrides_and_canvas(tmp_path, no_package_weights):
    ds = _datastore(tmp_path / "ds", "FLAIR")
    with pytest.raises(ValueError, match="unknown setting"):
        get_trainer("baur_ae")(TrainRequest([ds], "cpu", no_package_weights, "cpu", {"epochz": 1, "steps": 1}))
    with pytest.raises(ValueError, match="divisible by 16"):
        get_trainer("ae3d")(TrainRequest([ds], "cpu", no_package_weights, "cpu",
                                         {**TINY["ae3d"], "canvas": [20, 16, 16],
                                          "network": {"channels": [2] * 4}}))


def test_strega_trains_and_default_threshold_is_otsu_with_area_opening(tmp_path, no_package_weights):
    ds = _datastore(tmp_path / "ds", "T2")
    overrides = {**TINY["strega"], "canvas": [16, 16, 16], "factor": 2, "epochs": 1}
    summary = get_trainer("strega")(TrainRequest([ds], "cpu", no_package_weights, "cpu", overrides))
    assert summary["steps"] >= 1 and np.isfinite(summary["best_val_loss"])
    card = json.loads((no_package_weights / "strega.json").read_text(encoding="utf-8"))
    assert card["loss_weights"] == {"kl": 0.5, "l1": 0.01, "ce": 1.0} and card["modality"] == "T2"
    det = get_detector("strega")
    img = tissue_phantom(seed=5, lesion=True)
    res = det.detect({"T2": img}, {"preprocessed": True, "area_opening_px": 8, "min_component_mm3": 0})
    assert res.info["threshold"] == 1.0 and "Otsu" in res.info["threshold_source"]
    arr = sitk.GetArrayFromImage(res.anomaly_map)
    assert np.isfinite(arr).all() and arr.max() > 0
    vol = det.detect({"T2": img}, {"preprocessed": True, "otsu": "volume"})
    assert "volume" in vol.info["threshold_source"]
    with pytest.raises(ValueError, match="missing \\['T2'\\]"):
        det.detect({"FLAIR": img}, {"preprocessed": True})


def test_context_masks_and_loss_terms():
    from uad_label.networks import strega

    g = torch.Generator().manual_seed(0)
    x = torch.zeros(64, 1, 32, 32)
    xm = strega.context_masks(x, max_squares=3, max_size=8, generator=g)
    changed = (xm != x).flatten(1).sum(1)
    assert changed.max() <= 3 * 64 and (changed == 0).any() and (changed > 0).any()
    net = strega.build(channels=(4, 8), latent=4, input_size=(32, 32))
    kl, l1, ce = strega.loss_terms(net, x[:4], xm[:4])
    assert all(torch.isfinite(t) for t in (kl, l1, ce))
    net.eval()
    r1, mu, _ = net(x[:2], sample=False)
    r2, _, _ = net(x[:2], sample=False)
    assert torch.equal(r1, r2)  # inference is deterministic (latent mean)
    with pytest.raises(ValueError, match="divisible by 4"):
        strega.build(channels=(4, 8), latent=4, input_size=(30, 32))


def test_export_slices_writes_pngs(tmp_path, no_package_weights):
    from uad_label.detectors.ae3d import export_slices
    from uad_label.results import DetectionResult

    img, gt = brain_phantom(shape=(30, 30, 24), seed=1, lesion=True)
    amap = sitk.Cast(gt, sitk.sitkFloat32)
    info = {"threshold": 0.5, "slice_scores": {"axis": 2, "values": sitk.GetArrayFromImage(gt).sum((1, 2)).tolist()}}
    files = export_slices(DetectionResult(amap, gt, info), img, tmp_path / "png", n=3)
    assert 1 <= len(files) <= 3 and all(f.stat().st_size > 1000 for f in files)
    assert all(f.read_bytes()[:4] == b"\x89PNG" for f in files)
