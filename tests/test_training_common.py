import json

import numpy as np
import pytest
import SimpleITK as sitk
from phantoms import brain_phantom

from uad_label.device import resolve_device
from uad_label.training import TrainRequest, get_trainer
from uad_label.training.data import healthy_cases, lesion_free_slices
from uad_label.weights import UntrainedError, find_weights, load_state, save_state


def test_weights_round_trip_and_untrained_error(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("UAD_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(UntrainedError, match=r"'nothing' is untrained.*uad train nothing"):
        load_state("nothing")
    save_state("toy", {"w": torch.ones(3)}, {"trained_on": "phantoms"})
    assert find_weights("toy") == tmp_path / "toy.pt"
    state, card = load_state("toy")
    assert torch.equal(state["w"], torch.ones(3)) and card == {"trained_on": "phantoms"}
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_healthy_cases_from_manifest_and_plain_folder(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    img, _ = brain_phantom(shape=(10, 10, 10))
    for case in ("sub-000", "sub-001"):
        sitk.WriteImage(img, str(ds / f"{case}_FLAIR.nii.gz"))
    (ds / "manifest.json").write_text(json.dumps({"cases": [{"id": "sub-000", "healthy": False},
                                                             {"id": "sub-001", "healthy": True}]}))
    assert [c["FLAIR"].name for c in healthy_cases(ds)] == ["sub-001_FLAIR.nii.gz"]
    plain = tmp_path / "ixi"
    plain.mkdir()
    sitk.WriteImage(img, str(plain / "IXI002-Guys.nii.gz"))
    assert [c["FLAIR"].name for c in healthy_cases(plain)] == ["IXI002-Guys.nii.gz"]
    with pytest.raises(FileNotFoundError):
        healthy_cases(tmp_path / "missing")
    with pytest.raises(ValueError, match="no healthy case with modalities"):
        healthy_cases(ds, modalities=("T2",))


def test_lesion_free_slices_keep_a_margin():
    m = np.zeros((4, 4, 12), bool)
    m[1, 1, 5] = True
    assert lesion_free_slices(m, axis=2, margin=2).tolist() == [0, 1, 2, 8, 9, 10, 11]


def test_unknown_trainer_and_device_errors():
    with pytest.raises(ValueError, match="trainable detectors"):
        get_trainer("nope")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            resolve_device("cuda")
    assert TrainRequest(data=[]).config == "cpu"


def test_threads_are_a_process_setting(monkeypatch):
    import SimpleITK as sitk
    import torch

    from uad_label.runtime import configure_threads

    before = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        monkeypatch.setenv("UAD_THREADS", "1")
        assert configure_threads() == 1
        assert torch.get_num_threads() == 1 and sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
        monkeypatch.setenv("UAD_THREADS", "many")
        with pytest.raises(ValueError, match="UAD_THREADS.*'many'"):
            configure_threads()
        assert configure_threads(0) == 0  # 0 keeps the libraries' defaults
    finally:
        torch.set_num_threads(before[0])
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before[1])
