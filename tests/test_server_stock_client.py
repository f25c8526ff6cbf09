"""The server under MONAI Label's own client (`monailabel.client.client.MONAILabelClient`, the code
the stock Slicer plugin uses) and the fixes of issues 14 and 16 that such a client sees: a corrupt
upload through the stock PUT /datastore/ route is refused and stores nothing; `result_dtype=uint8`
and `result_extension=.nrrd` get the binary mask as NRRD (infer and batch); error messages name the
image id, not server paths; a detector's `device` parameter reaches the detector; the train task
passes every option the trainer accepts (and the trainer alone refuses the others)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from monailabel.client.client import MONAILabelClient, MONAILabelClientException
from phantoms import brain_phantom
from server_fixture import Server

PRE = {"preprocessed": True}


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("stock_studies")
    for name, seed in (("case01", 0), ("case02", 1), ("case03", 2)):
        img, _ = brain_phantom(seed=seed)
        sitk.WriteImage(img, str(d / f"{name}_FLAIR.nii.gz"))
    return d


@pytest.fixture(scope="module")
def server(studies, tmp_path_factory):
    weights = tmp_path_factory.mktemp("weights")
    s = Server(studies, tmp_path_factory.mktemp("stock_log") / "server.log",
               conf={"scoring_params": json.dumps(PRE), "weights_dir": str(weights)})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory) -> MONAILabelClient:
    return MONAILabelClient(server.url, tmpdir=str(tmp_path_factory.mktemp("client")))


def _listing(server) -> set[str]:
    return set(requests.get(server.url + "/datastore/", params={"output": "all"}, timeout=10).json()["objects"])


def test_stock_client_corrupt_upload_is_refused_and_not_stored(server, client, studies, tmp_path):
    """Issue 16 defect 1: PUT /datastore/?image=ID (MONAILabelClient.upload_image) stored any bytes."""
    bad = tmp_path / "corrupt_case.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(MONAILabelClientException) as err:
        client.upload_image(str(bad), "corrupt_case")
    assert "Status: 415" in str(err.value) and "medical image" in str(err.value)
    assert "corrupt_case" not in _listing(server)
    assert not list(studies.glob("corrupt_case*"))
    # a valid scan goes in through the same stock route (the client sends its local path as file name)
    img, _ = brain_phantom(seed=7)
    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(img, str(good))
    assert client.upload_image(str(good), "uploaded_case")["image"] == "uploaded_case"
    assert "uploaded_case" in _listing(server) and (studies / "uploaded_case.nii.gz").is_file()


def test_stock_client_asking_uint8_nrrd_gets_the_binary_mask(client, studies, tmp_path):
    """Issue 16 defect 2: the stock plugin's result_extension/result_dtype were ignored (float map)."""
    out, params = client.infer("flair_threshold", "case01_FLAIR",
                               {**PRE, "result_extension": ".nrrd", "result_dtype": "uint8"})
    assert out is not None and out.endswith(".nrrd"), out
    res = sitk.ReadImage(out)
    assert res.GetPixelID() == sitk.sitkUInt8
    arr = sitk.GetArrayFromImage(res)
    assert set(np.unique(arr).tolist()) <= {0, 1} and arr.sum() == sum(c["voxels"] for c in params["components"])
    assert 0 < arr.sum() < 0.05 * arr.size  # the findings, not the whole brain
    src = sitk.ReadImage(str(studies / "case01_FLAIR.nii.gz"))
    assert res.GetSize() == src.GetSize() and np.allclose(res.GetOrigin(), src.GetOrigin(), atol=1e-4)
    assert np.allclose(res.GetDirection(), src.GetDirection(), atol=1e-5)


def test_float_map_stays_the_default_and_float_dtype_keeps_the_map(client):
    out, _ = client.infer("flair_threshold", "case01_FLAIR", PRE)
    amap = sitk.ReadImage(out)
    assert amap.GetPixelID() == sitk.sitkFloat32 and len(np.unique(sitk.GetArrayFromImage(amap))) > 100
    out, _ = client.infer("flair_threshold", "case01_FLAIR", {**PRE, "result_extension": ".nrrd",
                                                               "result_dtype": "float32"})
    assert out.endswith(".nrrd") and len(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(out)))) > 100


def test_output_image_with_integer_dtype_is_the_mask(server):
    r = requests.post(server.url + "/infer/flair_threshold", params={"image": "case01_FLAIR", "output": "image"},
                      data={"params": json.dumps({**PRE, "result_extension": ".nii.gz", "result_dtype": "uint8"})},
                      timeout=120)
    assert r.status_code == 200, r.text
    assert 'filename="mask.nii.gz"' in r.headers["content-disposition"]
    assert r.content[:2] == b"\x1f\x8b"


@pytest.mark.parametrize("key,value", [("result_dtype", "complex128"), ("result_extension", ".png")])
def test_unsupported_result_format_is_422(server, key, value):
    r = requests.post(server.url + "/infer/flair_threshold", params={"image": "case01_FLAIR"},
                      data={"params": json.dumps({**PRE, key: value})}, timeout=60)
    assert r.status_code == 422 and key in r.json()["detail"], r.text


def test_batch_task_saves_the_mask_in_the_requested_format(server, studies):
    r = requests.post(server.url + "/batch/infer/flair_threshold", params={"run_sync": True, "images": "all"},
                      json={**PRE, "label_tag": "stock", "result_extension": ".nrrd", "result_dtype": "uint8"},
                      timeout=300)
    assert r.status_code == 200, r.text
    assert all("image_score" in v for v in r.json().values()), r.json()
    saved = sorted((studies / "labels" / "stock").glob("*.nrrd"))
    assert saved, sorted((studies / "labels").rglob("*"))
    m = sitk.ReadImage(str(saved[0]))
    assert m.GetPixelID() == sitk.sitkUInt8 and set(np.unique(sitk.GetArrayFromImage(m)).tolist()) <= {0, 1}


def test_refusal_names_the_image_id_not_the_server_path(server, client, studies, tmp_path):
    """Issue 16 defect 4: a 422 showed `/.../studies/corrupt_case.nii.gz`."""
    blank = tmp_path / "blank.nii.gz"
    sitk.WriteImage(sitk.Image(24, 24, 24, sitk.sitkFloat32), str(blank))  # a readable volume, no brain in it
    client.upload_image(str(blank), "blank_case")
    try:
        r = requests.post(server.url + "/infer/flair_threshold", params={"image": "blank_case", "output": "json"},
                          data={"params": json.dumps(PRE)}, timeout=120)
    finally:
        requests.delete(server.url + "/datastore/image", params={"id": "blank_case"}, timeout=30)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "blank_case" in detail and "brain" in detail, detail
    assert str(studies) not in detail and "/tmp/" not in detail and ".nii.gz" not in detail, detail


def test_device_parameter_reaches_the_detector(server):
    """Issue 14: `device` was taken for a MONAI Label key and dropped, so device=cuda ran on 'auto'."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the refusal of device=cuda needs a machine without CUDA")
    r = requests.post(server.url + "/infer/baur_ae", params={"image": "case01_FLAIR", "output": "json"},
                      data={"params": json.dumps({**PRE, "device": "cuda"})}, timeout=300)
    assert r.status_code == 422 and "device" in r.json()["detail"], r.text
    r = requests.post(server.url + "/infer/baur_ae", params={"image": "case01_FLAIR", "output": "json"},
                      data={"params": json.dumps({**PRE, "device": "cpu"})}, timeout=300)
    assert r.status_code == 200, r.text


def test_train_task_refuses_unknown_options_up_front(server):
    """Issue 14: the train task whitelisted overrides and silently dropped the rest."""
    r = requests.post(server.url + "/train/baur_ae", json={"nope": 1}, timeout=30)
    assert r.status_code == 422, r.text
    assert "nope" in r.json()["detail"] and "exclude_above" in r.json()["detail"]  # the trainer's own list
    assert requests.get(server.url + "/train/", timeout=10).status_code == 404  # nothing was queued


def test_train_task_passes_exclude_above_to_the_trainer(server):
    """The option reaches the trainer (its value check answers), instead of being dropped."""
    for case in ("case02_FLAIR", "case03_FLAIR"):  # the trainer takes the images marked healthy
        r = requests.put(server.url + "/datastore/image/info", params={"image": case},
                         data={"info": json.dumps({"healthy": True})}, timeout=30)
        assert r.status_code == 200, r.text
    r = requests.post(server.url + "/train/baur_ae", params={"run_sync": True},
                      json={"exclude_above": 0.5, "steps": 1, "preprocessed": True}, timeout=300)
    assert r.status_code == 422 and "exclude_above" in r.json()["detail"], r.text


@pytest.mark.parametrize("setting,needle", [("nope=1", "nope"), ("exclude_above=0.5", "exclude_above")])
def test_cli_train_uses_the_same_validation(studies, tmp_path, setting, needle):
    """The CLI path of the one validation: unknown options and bad exclude_above named the same way."""
    import subprocess
    import sys

    from server_fixture import ROOT

    data = tmp_path / "healthy"
    data.mkdir()
    for case in ("case02", "case03"):
        (data / f"{case}_FLAIR.nii.gz").write_bytes((studies / f"{case}_FLAIR.nii.gz").read_bytes())
    p = subprocess.run([sys.executable, "-m", "uad_label.cli.main", "train", "baur_ae", "--data", str(data),
                        "--out", str(tmp_path / "w"), "--set", setting, "--set", "steps=1",
                        "--set", "preprocessed=true"],
                       cwd=ROOT, capture_output=True, encoding="utf-8", timeout=300)
    assert p.returncode == 2, p.stdout[-1000:] + p.stderr[-1000:]
    assert needle in p.stderr and "error" in p.stderr, p.stderr[-1000:]
    assert not (tmp_path / "w" / "baur_ae.pt").exists()
