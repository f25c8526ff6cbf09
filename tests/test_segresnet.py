"""The fast segmenter (segresnet): trained from pseudo-labels and final labels through `uad train`, label
precedence and weights on the model card, bad settings and data named, the detector's map, mask and TTA
uncertainty (deterministic, FLAIR alone too), scoring's uncertainty, untrained refusal. Tiny networks on
4 mm synthetic data; the served path is in test_segresnet_server.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from uad_label.errors import InputError
from uad_label.synth import write_sample_data

TINY = {"init_filters": 4, "num_groups": 4, "blocks_down": [1, 1], "blocks_up": [1]}
FAST = ["--set", "steps=4", "--set", "spacing_mm=4", "--set", "crop=16", "--set", "batch_size=2",
        "--set", "epoch_samples=4", "--set", f"network={json.dumps(TINY)}"]
MODS = ("FLAIR", "T1", "T2")


def _box_label(like: sitk.Image) -> sitk.Image:
    a = np.zeros(sitk.GetArrayViewFromImage(like).shape, np.uint8)
    c = [n // 2 for n in a.shape]
    a[c[0] - 2:c[0] + 2, c[1] - 3:c[1] + 3, c[2] - 3:c[2] + 3] = 1
    img = sitk.GetImageFromArray(a)
    img.CopyInformation(like)
    return img


def make_store(root: Path) -> dict:
    """A `uad sample-data` datastore (3 template-space cases at 4 mm) with SAMSEG-tagged pseudo-labels for
    every case and an approved final label (a different one) for sub-001; and a FLAIR-only folder, where a
    second case's pseudo-label is no image (left out, recorded)."""
    ds = root / "ds"
    write_sample_data(ds, n_healthy=1, n_lesion=2, seed=0, geometry="template", downsample=4, progress=False)
    (ds / "labels" / "samseg").mkdir(parents=True)
    (ds / "labels" / "final").mkdir(parents=True)
    for i in range(3):
        shutil.copy(ds / "ground_truth" / f"sub-00{i}.nii.gz", ds / "labels" / "samseg" / f"sub-00{i}_FLAIR.nii.gz")
    flair1 = sitk.ReadImage(str(ds / "sub-001_FLAIR.nii.gz"))
    sitk.WriteImage(_box_label(flair1), str(ds / "labels" / "final" / "sub-001_FLAIR.nii.gz"))
    solo = root / "flair_only"
    (solo / "labels" / "final").mkdir(parents=True)
    shutil.copy(ds / "sub-002_FLAIR.nii.gz", solo / "solo_FLAIR.nii.gz")
    shutil.copy(ds / "ground_truth" / "sub-002.nii.gz", solo / "labels" / "final" / "solo_FLAIR.nii.gz")
    shutil.copy(ds / "sub-002_FLAIR.nii.gz", solo / "broken_FLAIR.nii.gz")  # its pseudo-label is no image
    (solo / "labels" / "samseg").mkdir()
    (solo / "labels" / "samseg" / "broken_FLAIR.nii.gz").write_bytes(b"not an image")
    (solo / "manifest.json").write_text(json.dumps({"geometry": "template"}), encoding="utf-8")
    return {"ds": ds, "solo": solo}


def train_cli(data: list[Path], out: Path, *extra: str) -> int:
    """The lead's command: `uad train segresnet --data DIR --config cpu --out OUT --set ...`."""
    from uad_label.cli.main import main

    argv = ["train", "segresnet", "--config", "cpu", "--device", "cpu", "--out", str(out)]
    for d in data:
        argv += ["--data", str(d)]
    return main(argv + FAST + list(extra))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("segresnet")
    data = make_store(root)
    out = root / "weights"
    rc = train_cli([data["ds"], data["solo"]], out, "--set", "final_weight=5", "--set", "pseudo_weight=0.5",
                   "--set", 'pseudo_tags=["samseg"]', "--set", "holdout=sub-000")
    assert rc == 0
    return {**data, "out": out, "card": json.loads((out / "segresnet.json").read_text(encoding="utf-8"))}


def test_training_writes_weights_card_and_loss_curve(trained):
    out, card = trained["out"], trained["card"]
    assert (out / "segresnet.pt").stat().st_size > 0
    assert (out / "segresnet_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert card["loss_curve_png"] == "segresnet_loss.png"
    t = card["training"]
    assert t["steps"] == 4 and t["world_size"] == 1 and t["global_batch_size"] == 2 and t["seconds"] >= 0
    assert len(t["loss_per_10_steps"]) == 1 and np.isfinite(t["loss_first_10"])
    assert card["spacing_mm"] == 4.0 and card["network"]["in_channels"] == 3 and card["modalities"] == list(MODS)
    assert card["settings"]["crop"] == 16 and card["config"] == "cpu"


def test_final_label_wins_with_its_weight_and_holdout_is_left_out(trained):
    data = trained["card"]["data"]
    rows = {r["id"]: r for r in data["cases"]}
    assert sorted(rows) == ["solo", "sub-001", "sub-002"]  # sub-000 held out
    assert data["holdout"] == ["sub-000"] and data["pseudo_tags"] == ["samseg"]
    # sub-001 has a SAMSEG pseudo-label and an approved one: the approved one is used, with the final weight
    assert rows["sub-001"]["tag"] == "final" and rows["sub-001"]["weight"] == 5.0
    assert rows["sub-001"]["label"] == "labels/final/sub-001_FLAIR.nii.gz"
    n_voxels = np.prod(sitk.ReadImage(str(trained["ds"] / "sub-001_FLAIR.nii.gz")).GetSize())
    assert rows["sub-001"]["label_fraction"] == pytest.approx(144 / n_voxels, abs=2e-6)  # the box, not SAMSEG's
    assert rows["sub-002"]["tag"] == "samseg" and rows["sub-002"]["weight"] == 0.5
    assert rows["sub-002"]["label"] == "labels/samseg/sub-002_FLAIR.nii.gz"
    assert rows["solo"]["channels"] == ["FLAIR"] and rows["sub-002"]["channels"] == list(MODS)
    assert data["tags"] == {"final": 2, "samseg": 1}
    assert list(data["skipped"]) == ["broken"] and "label of broken (samseg)" in data["skipped"]["broken"]


@pytest.mark.parametrize("override, name", [
    ({"pseudo_tags": [1]}, "pseudo_tags"),
    ({"pseudo_tags": ["final"]}, "pseudo_tags"),
    ({"final_weight": 0}, "final_weight"),
    ({"pseudo_weight": "heavy"}, "pseudo_weight"),
    ({"loss": "mse"}, "loss"),
    ({"crop": 15}, "crop"),
    ({"network": {"init_filters": 6}}, "network"),
    ({"network": {"blocks_down": [1, 2], "blocks_up": []}}, "network"),
    ({"steps": 0}, "steps"),
    ({"spacing_mm": -1}, "spacing_mm"),
    ({"holdout": 3}, "holdout"),
    ({"epochs": 3}, "overrides"),
])
def test_bad_settings_are_named(trained, tmp_path, override, name):
    from uad_label.training import TrainRequest, train

    fast = {"steps": 1, "spacing_mm": 4.0, "crop": 16, "network": TINY}
    with pytest.raises(InputError, match=name):
        train("segresnet", TrainRequest([trained["ds"]], "cpu", tmp_path, "cpu", {**fast, **override}))
    assert not (tmp_path / "segresnet.pt").exists()


def test_bad_data_is_named(trained, tmp_path):
    from uad_label.training import TrainRequest, train

    fast = {"steps": 1, "spacing_mm": 4.0, "crop": 16, "network": TINY}
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for m in MODS:
        shutil.copy(trained["ds"] / f"sub-000_{m}.nii.gz", unlabelled)
    with pytest.raises(InputError, match=r"data: expected cases with a FLAIR and a label tagged 'final' or one of "
                                         r"\['samseg'\]"):
        train("segresnet", TrainRequest([unlabelled], "cpu", tmp_path, "cpu", fast))
    with pytest.raises(InputError, match="data: expected a folder"):
        train("segresnet", TrainRequest([tmp_path / "missing"], "cpu", tmp_path, "cpu", fast))
    (unlabelled / "labels" / "samseg").mkdir(parents=True)
    (unlabelled / "labels" / "samseg" / "sub-000_FLAIR.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"label of sub-000 \(samseg\)"):
        train("segresnet", TrainRequest([unlabelled], "cpu", tmp_path, "cpu", {**fast, "preprocessed": True}))
    assert not (tmp_path / "segresnet.pt").exists()


def test_template_space_is_told_per_case_so_raw_and_template_folders_mix(tmp_path):
    """`--data RAW --data TEMPLATE`: raw cases are registered, template-space ones (a sample-data manifest, or a
    FLAIR on the 1 mm template grid) are not registered again."""
    from types import SimpleNamespace

    from uad_label.training.segresnet import _preprocessed

    def case(folder: str, size, spacing, manifest: bool = False):
        d = tmp_path / folder
        d.mkdir()
        img = sitk.Image(list(size), sitk.sitkUInt8)
        img.SetSpacing(spacing)
        sitk.WriteImage(img, str(d / "x_FLAIR.nii.gz"))
        if manifest:
            (d / "manifest.json").write_text(json.dumps({"geometry": "template"}), encoding="utf-8")
        return SimpleNamespace(source=d, images={"FLAIR": str(d / "x_FLAIR.nii.gz")})

    raw = case("raw", (320, 320, 36), (0.72, 0.72, 4.0))
    mni = case("mni", (182, 218, 182), (1.0, 1.0, 1.0))
    nilearn = case("nilearn", (197, 233, 189), (1.0, 1.0, 1.0))
    small = case("small", (46, 55, 46), (4.0, 4.0, 4.0), manifest=True)
    anisotropic = case("aniso", (182, 218, 182), (1.0, 1.0, 1.2))
    assert [_preprocessed(c, None) for c in (raw, mni, nilearn, small, anisotropic)] == [False, True, True, True,
                                                                                          False]
    assert _preprocessed(raw, True) is True and _preprocessed(mni, False) is False  # the override wins


def test_tta_is_the_mean_of_flipped_passes_and_their_variance():
    from uad_label.networks.segresnet import build, predict

    torch.manual_seed(0)
    model = build({"in_channels": 3, **TINY}).eval()
    x = torch.randn(1, 3, 8, 10, 6)
    mean, unc = predict(model, x, tta=1)
    with torch.no_grad():
        a = torch.sigmoid(model(x))[0, 0]
        b = torch.sigmoid(model(x.flip(2))).flip(2)[0, 0]  # x flipped on the first spatial axis
    torch.testing.assert_close(mean, (a + b) / 2)
    torch.testing.assert_close(unc, ((a - b) ** 2 / 4 / 0.25).clamp(0, 1))
    plain, none = predict(model, x, tta=0)
    assert none is None
    torch.testing.assert_close(plain, a)


@pytest.fixture
def detector(trained, monkeypatch):
    from uad_label.detectors.segresnet import SegResNetSegmenter

    monkeypatch.setenv("UAD_WEIGHTS_DIR", str(trained["out"]))
    return SegResNetSegmenter()


def test_detector_map_mask_and_uncertainty_deterministic(trained, detector):
    from uad_label.active.scoring import mean_uncertainty, score_case

    images = {m: trained["ds"] / f"sub-000_{m}.nii.gz" for m in MODS}
    source = sitk.ReadImage(str(images["FLAIR"]))
    params = {"preprocessed": True, "tta": 2}
    res = detector.detect(images, params, progress=lambda f, m: None)
    amap, unc = res.anomaly_map, res.extras["uncertainty"]
    for img in (amap, res.mask, unc):
        assert img.GetSize() == source.GetSize() and np.allclose(img.GetOrigin(), source.GetOrigin())
    assert amap.GetPixelID() == unc.GetPixelID() == sitk.sitkFloat32
    p, u = sitk.GetArrayFromImage(amap), sitk.GetArrayFromImage(unc)
    assert 0 <= p.min() and p.max() <= 1 and p.max() > 0 and 0 <= u.min() and u.max() <= 1
    m = sitk.GetArrayFromImage(res.mask)
    assert set(np.unique(m)) <= {0, 1}
    info = res.info
    assert info["threshold"] == 0.5 and info["threshold_source"].startswith("default")
    assert info["passes"] == 3 and info["channels"] == list(MODS) and info["model_grid"] == list(p.shape[::-1])
    assert info["mean_uncertainty"] == mean_uncertainty(res)
    assert all("mean_uncertainty" in c for c in info["components"])
    again = detector.detect(images, params, progress=lambda f, m: None)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again.anomaly_map), p)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again.extras["uncertainty"]), u)
    entry = score_case("segresnet", str(images["FLAIR"]), params)  # what most_uncertain ranks by
    assert entry["uncertainty"] == pytest.approx(info["mean_uncertainty"])
    plain = detector.detect(images, {"preprocessed": True, "tta": 0}, progress=lambda f, m: None)
    assert plain.extras == {} and "mean_uncertainty" not in plain.info and mean_uncertainty(plain) is None
    with pytest.raises(InputError, match="roi: expected 0 or a multiple of 2"):
        detector.detect(images, {"preprocessed": True, "roi": 3})
    windowed = detector.detect(images, {"preprocessed": True, "roi": 48, "overlap": 0.0, "tta": 0},
                               progress=lambda f, m: None)
    assert windowed.info["roi"] == [48, 48, 48] and sitk.GetArrayFromImage(windowed.anomaly_map).max() <= 1


def test_flair_only_case(trained, detector):
    res = detector.detect({"FLAIR": trained["ds"] / "sub-002_FLAIR.nii.gz"}, {"preprocessed": True, "tta": 1},
                          progress=lambda f, m: None)
    p = sitk.GetArrayFromImage(res.anomaly_map)
    assert res.info["channels"] == ["FLAIR"] and res.info["network_channels"] == list(MODS)
    assert 0 <= p.min() and p.max() <= 1 and "uncertainty" in res.extras


def test_untrained_detector_is_listed_untrained_and_refuses(monkeypatch):
    import uad_label.weights as w
    from uad_label.detectors.segresnet import SegResNetSegmenter
    from uad_label.weights import UntrainedError

    monkeypatch.setattr(w, "find_weights", lambda name: None)
    det = SegResNetSegmenter()
    assert det.info()["trained"] is False and det.task_type == "segmentation"
    img = sitk.Image(16, 16, 16, sitk.sitkFloat32) + 1.0
    with pytest.raises(UntrainedError, match="uad train segresnet"):
        det.detect({"FLAIR": img}, {"preprocessed": True, "check_contrast": False})


@pytest.mark.slow
def test_two_processes_with_batch_b_train_like_one_with_batch_2b(trained, tmp_path):
    """torchrun (--nproc 2, gloo): per-sample seeds, equal batches and group norm make 2 x B equal to 1 x 2B."""
    from uad_label.cli.main import main

    common = ["train", "segresnet", "--data", str(trained["ds"]), "--device", "cpu", "--set", "steps=3",
              "--set", "spacing_mm=4", "--set", "crop=16", "--set", "epoch_samples=4", "--set", "threads=1",
              "--set", f"network={json.dumps(TINY)}"]
    assert main(common + ["--set", "batch_size=4", "--out", str(tmp_path / "one")]) == 0
    assert main(common + ["--set", "batch_size=2", "--nproc", "2", "--out", str(tmp_path / "two")]) == 0
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["segresnet.json", "segresnet.pt",
                                                                    "segresnet_loss.png"]
    c1, c2 = (json.loads((tmp_path / d / "segresnet.json").read_text(encoding="utf-8"))["training"]
              for d in ("one", "two"))
    assert (c1["world_size"], c1["global_batch_size"], c2["world_size"], c2["global_batch_size"]) == (1, 4, 2, 4)
    assert c2["batch_size_per_process"] == 2 and c2["backend"] == "gloo" and c1["steps"] == c2["steps"] == 3
    assert c2["loss_first_10"] == pytest.approx(c1["loss_first_10"], rel=1e-5)
    w1, w2 = (torch.load(tmp_path / d / "segresnet.pt", weights_only=True) for d in ("one", "two"))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
