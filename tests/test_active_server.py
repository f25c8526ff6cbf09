"""The server's active-learning loop, batch endpoint and upload checks on a loopback port."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import SimpleITK as sitk
from phantoms import brain_phantom
from server_fixture import Server

PRE = {"preprocessed": True}


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("studies")
    for name, seed, lesion in (("calm", 1, False), ("hot", 2, True), ("mild", 3, True)):
        img, _ = brain_phantom(seed=seed, lesion=lesion)
        sitk.WriteImage(img, str(d / f"{name}_FLAIR.nii.gz"))
    sitk.WriteImage(img, str(d / "hot_T1.nii.gz"))
    return d


@pytest.fixture(scope="module")
def server(studies, tmp_path_factory):
    import os

    old = os.environ.get("UAD_MAX_UPLOAD_MB")
    os.environ["UAD_MAX_UPLOAD_MB"] = "2"
    try:
        s = Server(studies, tmp_path_factory.mktemp("log") / "server.log",
                   conf={"scoring_params": json.dumps(PRE), "auto_score": "true", "strategy_k": "1",
                         "pseudo_label_dir": str(tmp_path_factory.mktemp("pseudo"))})
    finally:
        if old is None:
            os.environ.pop("UAD_MAX_UPLOAD_MB", None)
        else:
            os.environ["UAD_MAX_UPLOAD_MB"] = old
    yield s
    s.stop()


def _mask_file(studies: Path, tmp_path: Path, image: str, name="label.nii.gz") -> Path:
    ref = sitk.ReadImage(str(studies / f"{image}.nii.gz"))
    lab = sitk.Image(ref.GetSize(), sitk.sitkUInt8)
    lab.CopyInformation(ref)
    lab[5, 5, 5] = 1
    p = tmp_path / name
    sitk.WriteImage(lab, str(p))
    return p


def test_info_lists_strategies_scoring_and_batch(server):
    info = requests.get(server.url + "/info/", timeout=10).json()
    assert {"most_anomalous", "most_uncertain", "random"} <= set(info["strategies"])
    assert "anomaly_flair_threshold" in info["scoring"]


def test_scoring_then_most_anomalous_then_label_save(server, studies, tmp_path):
    r = requests.post(server.url + "/scoring/anomaly_flair_threshold", params={"run_sync": True}, json={},
                      timeout=300)
    assert r.status_code == 200, r.text
    scored = r.json()["scored"] if r.json()["scored"] else {}
    ds = requests.get(server.url + "/datastore/", params={"output": "all"}, timeout=10).json()
    scores = {k: v["image"]["info"].get("anomaly_score") for k, v in ds["objects"].items()}
    assert scores["hot_T1"] is None and all(scores[f"{c}_FLAIR"] is not None for c in ("calm", "hot", "mild"))
    ranked = sorted((c for c in scores if scores[c] is not None), key=lambda c: -scores[c])
    first = requests.post(server.url + "/activelearning/most_anomalous", json={}, timeout=30).json()
    assert first["id"] == ranked[0], (first, scores, scored)
    # the annotator approves a label for it: the case leaves the queue
    label = _mask_file(studies, tmp_path, first["id"])
    with open(label, "rb") as f:
        r = requests.put(server.url + "/datastore/label", params={"image": first["id"]},
                         files={"label": ("label.nii.gz", f)}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["final_labels"] == 1 and "scoring" in r.json()
    nxt = requests.post(server.url + "/activelearning/most_anomalous", json={}, timeout=30).json()
    assert nxt["id"] == ranked[1]


def test_pseudo_label_task_stores_pseudo_labels_for_unlabelled_cases_only(server, studies):
    info = requests.get(server.url + "/info/", timeout=10).json()
    assert info["scoring"]["pseudo_label_flair_threshold"]["kind"] == "pseudo_label"
    for bad, word in (({"tag": "final"}, "tag: expected a label tag"), ({"nbins": -3}, "nbins"),
                      ({"limit": 0}, "limit: expected a positive integer")):
        r = requests.post(server.url + "/scoring/pseudo_label_flair_threshold", json=bad, timeout=30)
        assert r.status_code == 422 and word in r.json()["detail"], r.text
    assert not (studies / "labels" / "flair").exists()
    r = requests.post(server.url + "/scoring/pseudo_label_flair_threshold", params={"run_sync": True},
                      json={"tag": "flair"}, timeout=600)
    assert r.status_code == 200, r.text
    objects = requests.get(server.url + "/datastore/", params={"output": "all"}, timeout=10).json()["objects"]
    final = {k.split("_")[0] for k, v in objects.items() if "final" in v.get("labels", {})}
    pseudo = {k.split("_")[0] for k, v in objects.items() if "flair" in v.get("labels", {})}
    assert final and pseudo == {"calm", "hot", "mild"} - final, (final, pseudo)
    some = next(v for v in objects.values() if "flair" in v.get("labels", {}))
    assert some["labels"]["flair"]["info"]["detector"] == "flair_threshold"
    assert "flair_map" in some["labels"]
    assert server.alive()


@pytest.mark.parametrize("how,status", [
    ("wrong_size", 422), ("not_integer", 422), ("garbage", 415), ("bad_suffix", 415),
    ("unknown_image", 404), ("traversal_tag", 400), ("traversal_image", 400),
])
def test_label_save_is_validated(server, studies, tmp_path, how, status):
    params = {"image": "calm_FLAIR"}
    p = _mask_file(studies, tmp_path, "calm_FLAIR")
    name = "label.nii.gz"
    if how == "wrong_size":
        sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkUInt8), str(p))
    elif how == "not_integer":
        ref = sitk.ReadImage(str(studies / "calm_FLAIR.nii.gz"))
        sitk.WriteImage(ref, str(p))  # the float image itself
    elif how == "garbage":
        p.write_bytes(b"no image")
    elif how == "bad_suffix":
        name = "label.exe"
    elif how == "unknown_image":
        params["image"] = "nope"
    elif how == "traversal_tag":
        params["tag"] = "../../escape"
    elif how == "traversal_image":
        params["image"] = "../calm_FLAIR"
    with open(p, "rb") as f:
        r = requests.put(server.url + "/datastore/label", params=params, files={"label": (name, f)}, timeout=30)
    assert r.status_code == status, r.text
    assert not list(studies.parent.glob("escape*")) and not (studies / "labels" / "escape").exists()
    assert server.alive()


@pytest.mark.parametrize("image,filename", [
    ("../../outside", "x.nii.gz"), (None, "../outside.nii.gz"), ("sub/dir", "x.nii.gz"), (None, ".hidden.nii.gz"),
])
def test_image_upload_cannot_escape_the_studies_folder(server, studies, tmp_path, image, filename):
    img, _ = brain_phantom(seed=9)
    p = tmp_path / "x.nii.gz"
    sitk.WriteImage(img, str(p))
    q = {"image": image} if image else {}
    with open(p, "rb") as f:
        r = requests.put(server.url + "/datastore/image", params=q, files={"file": (filename, f)}, timeout=30)
    assert r.status_code == 400, r.text
    assert not list(studies.parent.rglob("outside*"))


def test_upload_size_limit(server):
    big = b"\0" * (3 << 20)  # the fixture's limit is 2 MB
    r = requests.post(server.url + "/infer/flair_threshold", data={"params": json.dumps(PRE)},
                      files={"file": ("big.nii.gz", big)}, timeout=60)
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert server.alive()


def test_batch_endpoint_runs_every_case_once(server, studies):
    r = requests.post(server.url + "/batch/infer/flair_threshold", params={"run_sync": True, "images": "all"},
                      json={"preprocessed": True, "max_workers": 1}, timeout=300)
    assert r.status_code == 200, r.text
    res = r.json()
    assert set(res) == {"calm_FLAIR", "hot_FLAIR", "mild_FLAIR"}, res
    assert all("image_score" in v for v in res.values()), res
    for case in res:
        assert (studies / "labels" / "original" / f"{case}.nii.gz").exists()
    m = sitk.ReadImage(str(studies / "labels" / "original" / "hot_FLAIR.nii.gz"))
    assert set(sitk.GetArrayViewFromImage(m).ravel().tolist()) <= {0, 1}


def test_upload_size_limit_without_content_length(server):
    """A chunked body declares no size: the limit is enforced while it streams in."""
    from requests_toolbelt import MultipartEncoder

    enc = MultipartEncoder(fields={"params": json.dumps(PRE), "file": ("big.nii.gz", b"\0" * (3 << 20))})
    body = enc.to_string()

    def chunks():
        for i in range(0, len(body), 1 << 16):
            yield body[i:i + (1 << 16)]

    r = requests.post(server.url + "/infer/flair_threshold", data=chunks(),
                      headers={"Content-Type": enc.content_type}, timeout=60)
    assert r.status_code == 413 and "limit" in r.json()["detail"], r.text
    assert server.alive()
