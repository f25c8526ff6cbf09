"""The server on a loopback port: /info, /infer (float map, mask, JSON), bad input (4xx, server
up, datastore unchanged) and inference off the event loop."""
from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from phantoms import brain_phantom
from requests_toolbelt import MultipartDecoder
from server_fixture import Server

PRE = {"params": json.dumps({"preprocessed": True})}


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("studies")
    img, _ = brain_phantom()
    sitk.WriteImage(img, str(d / "case01_FLAIR.nii.gz"))
    big, _ = brain_phantom(shape=(182, 218, 182), seed=1)
    sitk.WriteImage(big, str(d / "big_FLAIR.nii.gz"))
    return d


@pytest.fixture(scope="module")
def server(studies, tmp_path_factory):
    s = Server(studies, tmp_path_factory.mktemp("log") / "server.log")
    yield s
    s.stop()


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def read_nifti(data: bytes, tmp_path: Path, name: str) -> sitk.Image:
    p = tmp_path / name
    p.write_bytes(data)
    return sitk.ReadImage(str(p))


def test_info_lists_detector_with_params(server):
    info = requests.get(server.url + "/info/", timeout=10).json()
    model = info["models"]["flair_threshold"]
    assert model["type"] == "anomaly"
    assert model["params"]["min_component_mm3"]["default"] == 20.0
    assert "Meissen" in model["description"]


def test_infer_returns_float_map_mask_and_json(server, studies, tmp_path):
    r = requests.post(server.url + "/infer/flair_threshold", params={"image": "case01_FLAIR"}, data=PRE, timeout=120)
    assert r.status_code == 200, r.text
    parts = {}
    for part in MultipartDecoder(r.content, r.headers["content-type"]).parts:
        name = part.headers[b"Content-Disposition"].decode().split('name="')[1].split('"')[0]
        parts[name] = part.content
    assert set(parts) == {"params", "image", "mask", "brain"}
    info = json.loads(parts["params"])
    for key in ("threshold", "components", "image_score", "slice_scores", "latencies", "threshold_source"):
        assert key in info
    assert info["latencies"]["total"] > 0
    source = sitk.ReadImage(str(studies / "case01_FLAIR.nii.gz"))
    amap = read_nifti(parts["image"], tmp_path, "map.nii.gz")
    mask = read_nifti(parts["mask"], tmp_path, "mask.nii.gz")
    assert amap.GetPixelID() == sitk.sitkFloat32
    for im in (amap, mask):
        assert im.GetSize() == source.GetSize()
        assert np.allclose(im.GetDirection(), source.GetDirection())
        assert np.allclose(im.GetOrigin(), source.GetOrigin())
    arr = sitk.GetArrayFromImage(amap)
    assert 0.0 < arr.max() <= 1.0 and len(np.unique(arr)) > 100  # a real float map, not a uint8 cast
    m = sitk.GetArrayFromImage(mask)
    assert set(np.unique(m)) <= {0, 1}
    brain = sitk.GetArrayFromImage(read_nifti(parts["brain"], tmp_path, "brain.nii.gz"))
    assert brain.any() and not (m.astype(bool) & ~brain.astype(bool)).any()  # findings lie in the brain
    assert m.sum() == sum(c["voxels"] for c in info["components"])
    assert len(info["slice_scores"]["values"]) == source.GetSize()[info["slice_scores"]["axis"]]


def test_infer_json_and_image_outputs(server):
    r = requests.post(server.url + "/infer/flair_threshold", params={"image": "case01_FLAIR", "output": "json"},
                      data={"params": json.dumps({"preprocessed": True, "threshold": 0.5})}, timeout=120)
    assert r.status_code == 200 and r.json()["threshold"] == 0.5 and r.json()["threshold_source"] == "request"
    r = requests.post(server.url + "/infer/flair_threshold", params={"image": "case01_FLAIR", "output": "image"},
                      data=PRE, timeout=120)
    assert r.status_code == 200 and r.content[:2] == b"\x1f\x8b"  # gzip (NIfTI)


def test_upload_runs_a_scan_that_is_not_in_the_datastore(server, studies, tmp_path):
    img, _ = brain_phantom(seed=5)
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(img, str(path))
    before = snapshot(studies)
    with open(path, "rb") as f:
        r = requests.post(server.url + "/infer/flair_threshold", params={"output": "json"}, data=PRE,
                          files={"file": ("scan.nii.gz", f)}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["components"], "the phantom's lesion should be found"
    assert snapshot(studies) == before


def _bad_upload(tmp_path: Path, kind: str) -> Path:
    # "nan" is an .mha, "nan_nifti" a NIfTI (ITK's NIfTI reader alone would turn NaN into 0)
    p = tmp_path / (f"{kind}.mha" if kind == "nan" else f"{kind}.nii.gz")
    if kind == "garbage":
        p.write_bytes(b"this is not an image")
    elif kind == "2d":
        sitk.WriteImage(sitk.Image(20, 20, sitk.sitkFloat32), str(p))
    elif kind in ("nan", "nan_nifti"):
        img, _ = brain_phantom(seed=2)
        a = sitk.GetArrayFromImage(img)
        a[5, 5, 5] = np.nan
        out = sitk.GetImageFromArray(a)
        out.CopyInformation(img)
        sitk.WriteImage(out, str(p))
    elif kind == "empty":
        sitk.WriteImage(sitk.Image(16, 16, 16, sitk.sitkFloat32), str(p))
    return p


@pytest.mark.parametrize("case,status,needle", [
    ("unknown_model", 404, "unknown model"),
    ("unknown_image", 404, "no image"),
    ("no_input", 422, "image"),
    ("bad_json", 400, "JSON"),
    ("params_not_object", 400, "JSON object"),
    ("unknown_param", 422, "unknown parameter"),
    ("bad_param_value", 422, "min_component_mm3"),
    ("bad_output", 422, "output"),
    ("garbage", 415, "could not read"),
    ("2d", 422, "3D"),
    ("nan", 422, "NaN"),
    ("nan_nifti", 422, "NaN"),
    ("empty", 422, "brain"),
])
def test_bad_input_is_4xx_json_server_stays_up_datastore_unchanged(server, studies, tmp_path, case, status, needle):
    before = snapshot(studies)
    url = server.url + "/infer/flair_threshold"
    q = {"image": "case01_FLAIR"}
    data = PRE
    files = None
    if case == "unknown_model":
        url = server.url + "/infer/nope"
    elif case == "unknown_image":
        q = {"image": "nope"}
    elif case == "no_input":
        q = {}
    elif case == "bad_json":
        data = {"params": "{bad"}
    elif case == "params_not_object":
        data = {"params": "[1, 2]"}
    elif case == "unknown_param":
        data = {"params": json.dumps({"tresh": 0.5})}
    elif case == "bad_param_value":
        data = {"params": json.dumps({"min_component_mm3": -3})}
    elif case == "bad_output":
        q["output"] = "png"
    else:
        q = {}
        upload = _bad_upload(tmp_path, case)
        files = {"file": (upload.name, upload.read_bytes())}
    r = requests.post(url, params=q, data=data, files=files, timeout=120)
    assert r.status_code == status, r.text
    body = r.json()
    assert needle.lower() in body["detail"].lower()
    assert server.alive()
    assert snapshot(studies) == before


def _idle_latency(server, n: int = 20) -> float:
    """Median /info answer time with nothing else running: the yardstick of relative bounds."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        assert requests.get(server.url + "/info/", timeout=10).status_code == 200
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def test_info_and_datastore_answer_while_a_volume_is_inferred(server):
    idle = _idle_latency(server)
    done = {}

    def infer():
        t = time.perf_counter()
        done["r"] = requests.post(server.url + "/infer/flair_threshold",
                                  params={"image": "big_FLAIR", "output": "json"},
                                  data=PRE, timeout=300)
        done["t"] = time.perf_counter() - t

    th = threading.Thread(target=infer)
    th.start()
    latencies = []
    time.sleep(0.2)
    while th.is_alive():
        for path in ("/info/", "/datastore/?output=stats"):
            t = time.perf_counter()
            assert requests.get(server.url + path, timeout=10).status_code == 200
            if th.is_alive():
                latencies.append(time.perf_counter() - t)
        time.sleep(0.05)
    th.join()
    assert done["r"].status_code == 200
    assert latencies, "inference finished before any request could be timed"
    # relative bounds (a loaded 2-core machine makes absolute ones flaky): a blocked event loop (stock
    # MONAI Label) would hold every answer for the whole inference
    msg = f"idle {idle * 1000:.0f} ms, during inference median {np.median(latencies) * 1000:.0f} ms, " \
          f"max {max(latencies) * 1000:.0f} ms; inference {done['t']:.1f} s"
    assert max(latencies) < 0.5 * done["t"], msg
    assert np.median(latencies) < 100 * idle, msg


def test_train_unknown_model_is_404_not_queued(server):
    r = requests.post(server.url + "/train/flair_threshold", json={}, timeout=30)
    assert r.status_code == 404 and "no trainer" in r.json()["detail"]  # training-free detector
    status = requests.get(server.url + "/train/", timeout=10)
    assert status.status_code == 404 and "No Train Tasks" in status.json()["detail"]  # nothing was queued


def test_stock_monailabel_start_server_still_serves_the_app(studies, tmp_path):
    """`monailabel start_server --app server_app --studies DIR` keeps working (stock ASGI app)."""
    import os
    import signal
    import subprocess
    import sys

    from server_fixture import ROOT, free_port

    port = free_port()
    monailabel = Path(sys.executable).with_name("monailabel")
    log = open(tmp_path / "stock.log", "w")
    proc = subprocess.Popen([str(monailabel), "start_server", "--app", str(ROOT / "server_app"), "--studies",
                             str(studies), "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            # MONAI Label's launcher script runs the `python` it finds on PATH: the venv's
                            env=dict(os.environ, PATH=f"{monailabel.parent}{os.pathsep}{os.environ['PATH']}"))
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                if requests.get(url + "/info/", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "stock.log").read_text(encoding="utf-8")[-2000:]
        info = requests.get(url + "/info/", timeout=10).json()
        assert "flair_threshold" in info["models"]
        r = requests.post(url + "/infer/flair_threshold", params={"image": "case01_FLAIR", "output": "json"},
                          data=PRE, timeout=120)
        assert r.status_code == 200 and "components" in r.json()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
