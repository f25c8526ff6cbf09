"""Patch position regression (detector `ppr`): network equivalences (dense / strided / per patch),
the three inference paths against each other, coordinates across template grids, region scores,
training, serving and refusals. Tiny volumes and networks (CPU, seconds)."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from phantoms import brain_phantom

from uad_label.detectors.ppr import hemisphere_scores
from uad_label.networks.ppr import PATCH, STRIDE, PPRNet
from uad_label.networks.ppr_maps import (
    BOX_MM,
    brain_bbox,
    coarse_map,
    exact_map,
    patch_map,
    ras_to_unit,
    refine_blocks,
    unit_affine,
)

CPU = torch.device("cpu")


def _net(c=1, width=2, seed=0):
    torch.manual_seed(seed)
    net = PPRNet(c, width)
    with torch.no_grad():  # a few training-mode passes so the spectral-norm vectors are not the init ones
        net(torch.randn(2, c, PATCH, PATCH, PATCH))
    return net.eval()


def test_dense_and_strided_outputs_equal_patch_by_patch():
    net = _net(c=2)
    x = torch.randn(1, 2, 30 + 9, 30 + 7, 30 + 6)
    with torch.no_grad():
        dense = net.dense(x)
        dilated = net.dense(x, "dilated")
        strided = net(x[..., :31 + 4, :31 + 4, :31 + 4])
        assert dense.shape == (1, 3, 9, 7, 6) and strided.shape == (1, 3, 2, 2, 2)
        torch.testing.assert_close(dense, dilated, rtol=1e-5, atol=1e-6)
        for (i, j, k) in [(0, 0, 0), (8, 6, 5), (3, 1, 4), (5, 2, 0)]:
            one = net(x[..., i:i + PATCH, j:j + PATCH, k:k + PATCH])[0, :, 0, 0, 0]
            torch.testing.assert_close(dense[0, :, i, j, k], one, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(strided[0, :, 1, 0, 1], dense[0, :, 4, 0, 4], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(1, 1, 31, 31, 31))
    with pytest.raises(ValueError, match="method"):
        net.dense(x, "fast")


def _toy(shape=(15, 13, 14), seed=1):
    rng = np.random.default_rng(seed)
    brain = np.zeros(shape, bool)
    brain[3:-3, 2:-2, 4:-3] = True
    brain[5:8, 5:7, 6:8] = False  # a hole: not a box
    img = torch.from_numpy(np.where(brain, rng.random(shape), 0).astype(np.float32))[None]
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-10.0, -20.0, 5.0)
    return img, brain, affine


def test_exact_patch_and_coarse_maps_agree():
    net = _net()
    img, brain, affine = _toy()
    m, b = unit_affine(affine)
    bbox = brain_bbox(brain)
    exact = exact_map(net, img, m, b, bbox, CPU, slab_voxels=150)  # several slabs
    patches = patch_map(net, img, brain, m, b, CPU, chunk=37)  # the gather-kernel path
    bt = torch.from_numpy(brain)
    torch.testing.assert_close(exact[bt], patches[bt], rtol=1e-4, atol=1e-3)
    assert float(exact[bt].min()) > 0
    # coarse: exact at the stride-4 nodes of the brain box, interpolated between them
    coarse = coarse_map(net, img, m, b, bbox, CPU)
    lo = bbox[0]
    nodes = exact[lo[0]::STRIDE, lo[1]::STRIDE, lo[2]::STRIDE]
    torch.testing.assert_close(coarse[lo[0]::STRIDE, lo[1]::STRIDE, lo[2]::STRIDE], nodes, rtol=1e-4, atol=1e-3)
    assert not torch.allclose(coarse[bt], exact[bt], atol=1e-3)  # in between it is an approximation
    # refining everything gives the exact map back
    refined = coarse.clone()
    n = refine_blocks(net, img, refined, bt, m, b, CPU, block=8, batch=3)
    assert n > 0
    torch.testing.assert_close(refined[bt], exact[bt], rtol=1e-4, atol=1e-3)


def test_positions_agree_between_template_and_fsl_grids():
    from uad_label.template import template_affine

    tmpl = template_affine()
    fsl = np.diag([1.0, 1.0, 1.0, 1.0])
    fsl[:3, 3] = (-90.0, -126.0, -72.0)  # FSL MNI152 182x218x182 after reorientation to RAS
    point = np.array([12.0, -30.0, 20.0])  # RAS mm
    vt = np.linalg.solve(tmpl[:3, :3], point - tmpl[:3, 3])
    vf = np.linalg.solve(fsl[:3, :3], point - fsl[:3, 3])
    mt, bt = unit_affine(tmpl)
    mf, bf = unit_affine(fsl)
    np.testing.assert_allclose(mt @ vt + bt, ras_to_unit(point))
    np.testing.assert_allclose(mf @ vf + bf, ras_to_unit(point))
    assert not np.allclose(vt, vf)  # different voxels, same coordinate
    np.testing.assert_allclose(ras_to_unit([[-98, -134, -72], [98, 98, 116]]), [[0, 0, 0], [1, 1, 1]])


def test_hemisphere_scores_split_at_mni_x_zero():
    shape = (10, 4, 4)
    affine = np.eye(4)
    affine[0, 3] = -4.5  # x mm = i - 4.5: i <= 4 left, i >= 5 right
    brain = np.ones(shape, bool)
    emap = np.zeros(shape, np.float32)
    emap[1, 2, 2] = 7.0
    emap[8, 1, 1] = 3.0
    s = hemisphere_scores(emap, brain, affine)
    assert s["left_hemisphere"]["max_error_mm"] == 7.0 and s["right_hemisphere"]["max_error_mm"] == 3.0
    assert s["left_hemisphere"]["voxels"] == s["right_hemisphere"]["voxels"] == 80


def _datastore(root, n=3):
    root.mkdir()
    cases = []
    for i in range(n):
        img, _ = brain_phantom(shape=(16, 18, 14), seed=i, lesion=False)
        sitk.WriteImage(img, str(root / f"sub-{i:03d}_FLAIR.nii.gz"))
        cases.append({"id": f"sub-{i:03d}", "healthy": True})
    (root / "manifest.json").write_text(json.dumps({"cases": cases}))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from uad_label.training import TrainRequest
    from uad_label.training.ppr import train

    tmp = tmp_path_factory.mktemp("ppr")
    _datastore(tmp / "ds")
    summary = {}
    for sampling in ("uniform", "crops"):
        summary[sampling] = train(TrainRequest([tmp / "ds"], "cpu", tmp / sampling, "cpu",
                                               {"steps": 3, "width": 2, "eval_every": 2, "eval_batches": 1,
                                                "patches": 8,
                                                "crops": 1, "crop_grid": 2, "sampling": sampling,
                                                "preprocessed": True}))
    return tmp, summary


def test_training_writes_weights_and_card(tiny_weights):
    tmp, summary = tiny_weights
    for sampling in ("uniform", "crops"):
        card = json.loads((tmp / sampling / "ppr.json").read_text(encoding="utf-8"))
        assert card["steps"] == 3 and card["settings"]["sampling"] == sampling
        assert card["network"]["width"] == 2 and card["modalities"] == ["FLAIR"]
        assert np.isfinite(card["final_train_loss"]) and card["healthy_error_mm"]["q99.9"] > 0
        assert card["data"]["held_out_volume"] == "sub-002_FLAIR.nii.gz"
    from uad_label.training import TrainRequest
    from uad_label.training.ppr import train

    with pytest.raises(ValueError, match="unknown setting"):
        train(TrainRequest([tmp / "ds"], "cpu", tmp / "x", "cpu", {"epochs": 2}))


def test_detector_serves_modes_and_region_scores(tiny_weights, monkeypatch):
    from uad_label.detectors import get_detector

    tmp, _ = tiny_weights
    monkeypatch.setenv("UAD_WEIGHTS_DIR", str(tmp / "crops"))
    det = get_detector("ppr")
    img, gt = brain_phantom(shape=(14, 16, 12), seed=7)
    maps = {}
    for mode in ("exact", "patches", "coarse"):
        res = det.detect({"FLAIR": img}, {"preprocessed": True, "mode": mode, "refine_fraction": 0.05})
        arr = sitk.GetArrayFromImage(res.anomaly_map)
        assert arr.shape == sitk.GetArrayFromImage(img).shape and arr.dtype == np.float32
        info = res.info
        assert info["ppr"]["mode"] == mode
        assert set(info["region_scores"]) == {"left_hemisphere", "right_hemisphere"}
        assert "heldout" in info["threshold_source"] or "held-out" in info["threshold_source"]
        maps[mode] = arr
        if mode == "coarse":
            level = info["ppr"]["refine_level_mm"]
    brain = sitk.GetArrayFromImage(img) > 0
    np.testing.assert_allclose(maps["exact"][brain], maps["patches"][brain], rtol=1e-4, atol=1e-3)
    assert (maps["exact"][~brain] == 0).all() and (maps["exact"][brain] > 0).all()
    # every voxel at or above the refinement level was recomputed exactly
    top = maps["coarse"][brain] >= level + 1e-3
    assert top.sum() > 0
    assert np.abs(maps["coarse"][brain][top] - maps["exact"][brain][top]).max() < 1e-3
    with pytest.raises(ValueError, match="mode"):
        det.detect({"FLAIR": img}, {"preprocessed": True, "mode": "fast"})


def test_refusals(tiny_weights, monkeypatch, tmp_path):
    from uad_label.detectors import get_detector
    from uad_label.preprocess import RegistrationError
    from uad_label.weights import UntrainedError

    tmp, _ = tiny_weights
    monkeypatch.setenv("UAD_WEIGHTS_DIR", str(tmp / "crops"))
    det = get_detector("ppr")
    params = det.validate({"preprocessed": True})
    case = SimpleNamespace(registration={"passed": False, "failed_checks": ["Mattes MI -0.05 (must be <= -0.25)"]},
                           mode="registered", brain=np.ones((4, 4, 4), bool))
    with pytest.raises(ValueError, match="failed its registration.*Mattes MI"):
        det.compute_map(case, params, lambda f, m: None)
    case = SimpleNamespace(registration={"passed": True}, mode="resampled", brain=np.ones((4, 4, 4), bool))
    with pytest.raises(ValueError, match="not registered"):
        det.compute_map(case, params, lambda f, m: None)

    import uad_label.preprocess as pp

    def fail(*a, **k):
        raise RegistrationError("registration of FLAIR failed its quality check: Mattes MI -0.01",
                                {"mutual_information": -0.01, "brain_in_head": 0.4, "fov_coverage": 0.9})
    monkeypatch.setattr(pp, "preprocess", fail)
    img, _ = brain_phantom(shape=(14, 16, 12))
    with pytest.raises(ValueError, match="refused.*brain_in_head"):
        det.detect({"FLAIR": img}, {})
    monkeypatch.undo()

    bad = sitk.GetArrayFromImage(img)
    bad[3, 3, 3] = np.nan
    nan_img = sitk.GetImageFromArray(bad)
    with pytest.raises(ValueError, match="NaN"):
        det.detect({"FLAIR": nan_img}, {"preprocessed": True})
    with pytest.raises(ValueError, match="missing"):
        det.detect({"T1": img}, {"preprocessed": True})
    monkeypatch.setattr("uad_label.weights.weights_dirs", lambda: [tmp_path])
    with pytest.raises(UntrainedError, match="uad train ppr"):
        det.detect({"FLAIR": img}, {"preprocessed": True})


def test_patient26_grid_maps_into_the_template_box(patient26):
    """The FSL 182x218x182 grid of the real patient: its brain's normalised positions lie in the box."""
    from uad_label.preprocess import PreprocessOptions, preprocess

    case = preprocess({"FLAIR": str(patient26 / "FLAIR.nii.gz")}, PreprocessOptions(preprocessed=True))
    m, b = unit_affine(case.affine)
    idx = np.argwhere(case.brain)[::997]
    u = idx @ m.T + b
    assert case.shape == (182, 218, 182)
    assert (u > -0.02).all() and (u < 1.02).all()
    assert abs(float(np.median(u[:, 0])) - ras_to_unit([0, 0, 0])[0]) < 0.05  # midline near x = 0
    assert BOX_MM.tolist() == [196.0, 232.0, 188.0]
