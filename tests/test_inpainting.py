"""Sliding-window inpainting detector (issue 4): networks, exactness of the batched heat map
against a per-window loop of the same G, slice mapping, bad input, untrained weights, end to end."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from uad_label.detectors.inpainting import InpaintingDetector, InpaintingFastDetector
from uad_label.networks.inpainting import (
    ErrorRegressor,
    InpaintConfig,
    InpaintGenerator,
    build_generator,
    count_parameters,
)
from uad_label.transforms.slices import SliceMapper
from uad_label.weights import UntrainedError, save_state


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks on a shared 2-core machine: several threads per call only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_regressor_has_the_published_parameter_count_and_one_value_per_slice():
    r = ErrorRegressor().eval()
    assert count_parameters(r) == 1_558_273
    with torch.no_grad():
        for size in (256, 128):
            out = r(torch.rand(3, 1, size, size))
            assert out.shape == (3,) and bool(((out > 0) & (out < 1)).all())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in r.modules()) == 1


def test_generator_uses_bicubic_upsampling_and_keeps_the_shape():
    g = InpaintGenerator(ngf=4, num_downs=6).eval()
    modes = {m.mode for m in g.modules() if isinstance(m, torch.nn.Upsample)}
    assert modes == {"bicubic"}
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in g.modules())
    with torch.no_grad():
        assert g(torch.rand(2, 1, 64, 64)).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="expected"):
        g(torch.rand(2, 1, 32, 32))


def test_accumulated_scores_average_or_max_over_box_footprints():
    from uad_kernels import accumulate_scores, finalize_heatmap

    scores, starts = torch.tensor([1.0, 3.0]), torch.tensor([[0, 0], [2, 2]])
    heat, count = torch.zeros(8, 8), torch.zeros(8, 8)
    accumulate_scores(scores, starts, 4, heat, count)
    out = finalize_heatmap(heat, count)
    assert out[0, 0] == 1 and out[5, 5] == 3 and out[3, 3] == 2 and out[7, 7] == 0
    heat, count = torch.zeros(8, 8), torch.zeros(8, 8)
    accumulate_scores(scores, starts, 4, heat, count, "max")
    out = finalize_heatmap(heat, count, "max")
    assert out[0, 0] == 1 and out[3, 3] == 3 and out[7, 7] == 0
    with pytest.raises(ValueError, match="reduce"):
        accumulate_scores(scores, starts, 4, heat, count, "median")


def test_slice_mapper_round_trip_fits_pads_and_returns_the_work_grid():
    cfg = InpaintConfig(slice_size=64, scale=2)
    vol = np.zeros((90, 100, 30), np.float32)
    brain = np.zeros(vol.shape, bool)
    brain[20:70, 20:80, 6:26] = True
    vol[brain] = 100.0
    m = SliceMapper(vol.shape, cfg, axis=2)
    imgs, brains, keep = m.to_slices(vol, brain)
    assert imgs.shape[1:] == (64, 64) and imgs.shape[0] == keep.numel() == 10
    assert float(imgs[brains].min()) == pytest.approx(1.0)  # normalised: brain 99th percentile -> 1
    assert float(imgs[~brains].abs().max()) == 0.0
    back = m.to_volume(torch.ones_like(imgs), keep)
    assert back.shape == vol.shape
    assert np.allclose(back[30:60, 30:70, 8:22], 1.0, atol=1e-5)
    # other slice axes map back to the same grid
    for axis in (0, 1):
        m2 = SliceMapper(vol.shape, cfg, axis=axis)
        i2, b2, k2 = m2.to_slices(vol, brain)
        assert m2.to_volume(i2 * 0, k2).shape == vol.shape
    with pytest.raises(ValueError, match="3 dimensions"):
        SliceMapper((10, 10), cfg)


# ----------------------------------------------------------------------------- detector end to end
def _phantom(shape=(48, 56, 24), lesion=True):
    arr = np.zeros(shape, np.float32)
    x, y, z = np.mgrid[:shape[0], :shape[1], :shape[2]]
    inside = ((x - shape[0] / 2) / 18) ** 2 + ((y - shape[1] / 2) / 22) ** 2 + ((z - shape[2] / 2) / 10) ** 2 < 1
    arr[inside] = 100 + 5 * np.sin(x[inside] / 3.0)
    if lesion:
        arr[20:26, 24:30, 10:14] = 300
    img = sitk.GetImageFromArray(np.transpose(arr, (2, 1, 0)).copy())
    img.SetSpacing((1.0, 1.0, 1.0))
    return img


@pytest.fixture()
def tiny_weights(tmp_path, monkeypatch):
    torch.manual_seed(0)
    cfg = InpaintConfig(slice_size=32, scale=2, ngf=4, box=8)
    save_state("inpainting", build_generator(cfg).state_dict(), {"config": cfg.to_dict(),
                                                                  "healthy_window_score_q99": 0.3}, tmp_path)
    save_state("inpainting_fast", ErrorRegressor().state_dict(), {"config": cfg.to_dict()}, tmp_path)
    monkeypatch.setenv("UAD_WEIGHTS_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("cls", [InpaintingDetector, InpaintingFastDetector])
def test_detect_returns_a_native_map_mask_components_and_latencies(tiny_weights, cls):
    det = cls()
    res = det.detect({"FLAIR": _phantom()}, {"preprocessed": True, "box": 8, "stride": 4})
    arr = sitk.GetArrayFromImage(res.anomaly_map)
    assert arr.shape == (24, 56, 48) and np.isfinite(arr).all() and arr.max() > 0
    assert res.info["stride_used"] == 4 and "stride_used" not in res.info["params"]
    assert "detect" in res.info["latencies"] and "components" in res.info
    assert len(res.info["slice_scores"]["values"]) == 24
    if cls is InpaintingDetector:
        assert res.info["threshold"] == pytest.approx(0.3)  # the model card's healthy calibration
        assert res.info["engine_used"] == "local"  # auto on a CPU
        batched = det.detect({"FLAIR": _phantom()}, {"preprocessed": True, "box": 8, "stride": 4,
                                                     "engine": "batched"})
        np.testing.assert_allclose(sitk.GetArrayFromImage(batched.anomaly_map), arr, rtol=1e-4, atol=1e-6)
    assert det.info()["trained"] is True


def test_untrained_detector_says_so(tmp_path, monkeypatch):
    import uad_label.weights as w

    monkeypatch.setattr(w, "find_weights", lambda name: None)
    for cls in (InpaintingDetector, InpaintingFastDetector):
        det = cls()
        assert det.info()["trained"] is False
        with pytest.raises(UntrainedError, match="untrained"):
            det.detect({"FLAIR": _phantom()}, {"preprocessed": True})


def test_bad_input_is_named(tiny_weights):
    det = InpaintingDetector()
    with pytest.raises(ValueError, match="box"):
        det.detect({"FLAIR": _phantom()}, {"preprocessed": True, "box": 64})  # slice 32 < box
    nan = sitk.GetArrayFromImage(_phantom())
    nan[3, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        det.detect({"FLAIR": sitk.GetImageFromArray(nan)}, {"preprocessed": True})
    with pytest.raises(ValueError, match="3D"):
        det.detect({"FLAIR": sitk.GetImageFromArray(np.ones((20, 20), np.float32))}, {"preprocessed": True})
    with pytest.raises(ValueError, match="stride"):
        det.detect({"FLAIR": _phantom()}, {"preprocessed": True, "stride": 0})
    with pytest.raises(ValueError, match="FLAIR"):
        det.detect({"T1": _phantom()}, {"preprocessed": True})


def test_trainers_run_on_a_plain_folder_and_write_cards(tmp_path):
    from uad_label.training import TrainRequest, train

    data = tmp_path / "ixi"
    data.mkdir()
    for i in range(2):
        sitk.WriteImage(_phantom(lesion=False), str(data / f"IXI00{i}.nii.gz"))
    out = tmp_path / "w"
    small = {"slice_size": 32, "scale": 2, "ngf": 4, "d_channels": 8, "batch_size": 2, "steps": 2, "r_steps": 2,
             "r_batch_size": 2, "box": 8, "val_slices": 2, "val_boxes": 2, "bn_batches": 1}
    g = train("inpainting", TrainRequest([data], "cpu", out, "cpu", dict(small)))
    assert g["steps"] == 2 and (out / "inpainting.pt").exists()
    r = train("inpainting_fast", TrainRequest([data], "cpu", out, "cpu", dict(small)))
    assert r["steps"] == 2 and (out / "inpainting_fast.json").exists()
    import json

    card = json.loads((out / "inpainting.json").read_text(encoding="utf-8"))
    assert card["config"]["slice_size"] == 32 and card["data"][0]["template_space"] is True
    state = torch.load(out / "inpainting.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # a plain state dict
    with pytest.raises(ValueError, match="unknown setting"):
        train("inpainting", TrainRequest([data], "cpu", out, "cpu", {"nope": 1}))


def test_lesion_mask_case_folders_contribute_lesion_free_slices_only(patient26):
    from uad_label.training import TrainRequest
    from uad_label.training.inpainting import _sources

    (name, files, gt), = _sources(TrainRequest([patient26]))
    assert files["FLAIR"].name.startswith("FLAIR") and gt is not None and gt.name.startswith("GT")
