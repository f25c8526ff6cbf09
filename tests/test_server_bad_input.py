"""Bad input on every route, raw HTTP and MONAI Label's own client: each request gets its 4xx with a
JSON message, the server stays up, the datastore and the session store are byte-identical and the
server's temporary folder holds no new file (issue 16). Every request here is refused before any
inference, so the whole suite takes seconds after the server is up."""
from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import SimpleITK as sitk
from monailabel.client.client import MONAILabelClient, MONAILabelClientException
from phantoms import brain_phantom
from server_fixture import ROOT, Server

PRE = json.dumps({"preprocessed": True})


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    studies, tmp, sessions = root / "studies", root / "tmp", root / "sessions"
    for d in (studies, tmp, sessions):
        d.mkdir()
    img, _ = brain_phantom()
    sitk.WriteImage(img, str(studies / "case01_FLAIR.nii.gz"))
    server = Server(studies, root / "server.log", conf={"scoring_params": PRE},
                    env={"TMPDIR": str(tmp), "MONAI_LABEL_SESSION_PATH": str(sessions), "UAD_MAX_UPLOAD_MB": "2"})
    yield {"server": server, "studies": studies, "tmp": tmp, "sessions": sessions, "files": _bad_files(root / "in")}
    server.stop()


def _bad_files(d: Path) -> dict[str, Path]:
    d.mkdir()
    out = {}
    out["corrupt"] = d / "corrupt.nii.gz"
    out["corrupt"].write_bytes(b"not an image")
    out["empty"] = d / "empty.nii.gz"
    out["empty"].write_bytes(b"")
    out["2d"] = d / "flat.nii.gz"
    sitk.WriteImage(sitk.Image(20, 20, sitk.sitkUInt8), str(out["2d"]))
    out["4d"] = d / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.uint8), np.eye(4)), str(out["4d"]))
    out["nan"] = d / "nan.nii.gz"
    a = np.zeros((12, 12, 12), np.float32)
    a[4, 4, 4] = np.nan
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(out["nan"]))
    out["huge_dims"] = d / "huge.nii.gz"  # a header declaring 30000^3 voxels over a few bytes of data
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_shape((30000, 30000, 30000))
    hdr["vox_offset"] = 352
    out["huge_dims"].write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4 + b"\0" * 64))
    out["wrong_extension"] = d / "scan.txt"
    good = d / "good.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkUInt8), str(good))
    out["wrong_extension"].write_bytes(good.read_bytes())
    out["oversize"] = d / "big.nii.gz"
    out["oversize"].write_bytes(b"\0" * (3 << 20))  # over the fixture's 2 MB
    return out


FILE_CASES = {"corrupt": 415, "empty": 415, "2d": 422, "4d": 422, "nan": 422, "huge_dims": 422,
              "wrong_extension": 415, "oversize": 413}
NEEDLES = {"corrupt": "medical image", "empty": "empty", "2d": "3d", "4d": "3d", "nan": "nan",
           "huge_dims": "limit", "wrong_extension": "file type", "oversize": "limit"}


def _snapshot(*folders: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for f in folders for p in sorted(f.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def _check(env, send, status: int, needle: str | None = None) -> None:
    before = _snapshot(env["studies"], env["sessions"])
    tmp_before = set(env["tmp"].rglob("*"))
    r = send(env["server"].url)
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    detail = json.dumps(body["detail"]) if not isinstance(body["detail"], str) else body["detail"]
    if needle:
        assert needle.lower() in detail.lower(), detail
    assert str(env["studies"]) not in detail and str(env["tmp"]) not in detail, detail
    assert env["server"].alive()
    assert _snapshot(env["studies"], env["sessions"]) == before
    assert set(env["tmp"].rglob("*")) <= tmp_before, sorted(set(env["tmp"].rglob("*")) - tmp_before)


def _upload(route: str, path: Path):
    name, data = path.name, path.read_bytes()
    if route == "infer":
        return lambda u: requests.post(u + "/infer/flair_threshold", data={"params": PRE},
                                       files={"file": (name, data)}, timeout=60)
    if route == "datastore_stock":
        return lambda u: requests.put(u + "/datastore/", params={"image": "new_case"}, files={"file": (name, data)},
                                      timeout=60)
    if route == "datastore_image":
        return lambda u: requests.put(u + "/datastore/image", params={"image": "new_case"},
                                      files={"file": (name, data)}, timeout=60)
    if route == "label":
        return lambda u: requests.put(u + "/datastore/label", params={"image": "case01_FLAIR", "tag": "final"},
                                      files={"label": (name, data)}, timeout=60)
    return lambda u: requests.put(u + "/session/", files=[("files", (name, data))], timeout=60)


@pytest.mark.parametrize("route", ["infer", "datastore_stock", "datastore_image", "label", "session"])
@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_bad_file_on_every_upload_route(env, route, case):
    _check(env, _upload(route, env["files"][case]), FILE_CASES[case], NEEDLES[case])


def _post(path, **kw):
    return lambda u: requests.post(u + path, timeout=60, **kw)


def _put(path, **kw):
    return lambda u: requests.put(u + path, timeout=60, **kw)


def _get(path, **kw):
    return lambda u: requests.get(u + path, timeout=60, **kw)


REQUESTS = {
    # unknown model / image / strategy / scoring method / tag / session
    "infer_unknown_model": (_post("/infer/nope", params={"image": "case01_FLAIR"}), 404, "unknown model"),
    "train_unknown_model": (_post("/train/nope", json={}), 404, "no trainer"),
    "batch_unknown_model": (_post("/batch/infer/nope", json={}), 404, "unknown model"),
    "infer_unknown_image": (_post("/infer/flair_threshold", params={"image": "nope"}), 404, "no image"),
    "label_unknown_image": (_put("/datastore/label", params={"image": "nope"},
                                 files={"label": ("l.nii.gz", b"x")}), 404, "no image"),
    "image_info_unknown_image": (_put("/datastore/image/info", params={"image": "nope"}, data={"info": "{}"}),
                                 404, "no image"),
    "download_unknown_image": (_get("/datastore/image", params={"image": "nope"}), 404, None),
    "unknown_strategy": (_post("/activelearning/nope", json={}), 404, "unknown strategy"),
    "unknown_scoring": (_post("/scoring/nope", json={}), 404, "unknown scoring"),
    "unknown_tag": (_get("/datastore/label", params={"label": "case01_FLAIR", "tag": "nope"}), 404, None),
    "label_info_unknown_tag": (_put("/datastore/label/info", params={"label": "case01_FLAIR", "tag": "nope"},
                                    data={"info": "{}"}), 404, "no label"),
    "unknown_session": (_post("/infer/flair_threshold", params={"session_id": "nope"}), 404, "session"),
    # bad params JSON and wrong types
    "infer_bad_json": (_post("/infer/flair_threshold", params={"image": "case01_FLAIR"}, data={"params": "{bad"}),
                       400, "json"),
    "infer_params_list": (_post("/infer/flair_threshold", params={"image": "case01_FLAIR"},
                                data={"params": "[1]"}), 400, "json object"),
    "upload_bad_json": (_put("/datastore/image", params={"image": "new_case"}, data={"params": "{bad"},
                             files={"file": ("x.nii.gz", b"x")}), 400, "json"),
    "label_bad_json": (_put("/datastore/label", params={"image": "case01_FLAIR"}, data={"params": "{bad"},
                            files={"label": ("l.nii.gz", b"x")}), 400, "json"),
    "image_info_bad_json": (_put("/datastore/image/info", params={"image": "case01_FLAIR"}, data={"info": "{bad"}),
                            400, "json"),
    "infer_wrong_type": (_post("/infer/flair_threshold", params={"image": "case01_FLAIR"},
                               data={"params": json.dumps({"threshold": "high"})}), 422, "threshold"),
    "batch_wrong_type": (_post("/batch/infer/flair_threshold", json={"threshold": "high"}), 422, "threshold"),
    "session_wrong_type": (_put("/session/", params={"expiry": "soon"}, files=[("files", ("x.nii.gz", b"x"))]),
                           422, "expiry"),
    "infer_unknown_param": (_post("/infer/flair_threshold", params={"image": "case01_FLAIR"},
                                  data={"params": json.dumps({"tresh": 0.5})}), 422, "unknown parameter"),
    "train_unknown_option": (_post("/train/baur_ae", json={"nope": 1}), 422, "nope"),
    "train_unknown_config": (_post("/train/baur_ae", json={"config": "huge"}), 422, "config"),
    "train_bad_nproc_zero": (_post("/train/baur_ae", json={"nproc": 0}), 422, "nproc"),
    "train_bad_nproc_word": (_post("/train/baur_ae", json={"nproc": "two"}), 422, "nproc"),
    # out-of-range values
    "infer_negative_size": (_post("/infer/flair_threshold", params={"image": "case01_FLAIR"},
                                  data={"params": json.dumps({"min_component_mm3": -3})}), 422, "min_component_mm3"),
    "infer_bad_connectivity": (_post("/infer/flair_threshold", params={"image": "case01_FLAIR"},
                                     data={"params": json.dumps({"connectivity": 5})}), 422, "connectivity"),
    "infer_bad_output": (_post("/infer/flair_threshold", params={"image": "case01_FLAIR", "output": "png"}),
                         422, "output"),
    "infer_bad_dtype": (_post("/infer/flair_threshold", params={"image": "case01_FLAIR"},
                              data={"params": json.dumps({"result_dtype": "complex64"})}), 422, "result_dtype"),
    "batch_bad_images": (_post("/batch/infer/flair_threshold", params={"images": "some"}, json={}), 422, "images"),
    "session_negative_expiry": (_put("/session/", params={"expiry": -1}, files=[("files", ("x.nii.gz", b"x"))]),
                                422, "expiry"),
    # path traversal in every id, tag and file name
    "infer_traversal_image": (_post("/infer/flair_threshold", params={"image": "../case01_FLAIR"}), 400, "refused"),
    "label_traversal_image": (_put("/datastore/label", params={"image": "../case01_FLAIR"},
                                   files={"label": ("l.nii.gz", b"x")}), 400, "refused"),
    "label_traversal_tag": (_put("/datastore/label", params={"image": "case01_FLAIR", "tag": "../../escape"},
                                 files={"label": ("l.nii.gz", b"x")}), 400, "refused"),
    "upload_traversal_id": (_put("/datastore/image", params={"image": "../../outside"},
                                 files={"file": ("x.nii.gz", b"x")}), 400, "refused"),
    "stock_upload_traversal_id": (_put("/datastore/", params={"image": "../../outside"},
                                       files={"file": ("x.nii.gz", b"x")}), 400, "refused"),
    "upload_traversal_filename": (_put("/datastore/image", files={"file": ("../outside.nii.gz", b"x")}),
                                  400, "refused"),
    "session_traversal_filename": (_put("/session/", files=[("files", ("../outside.nii.gz", b"x"))]), 400, "refused"),
    "image_info_traversal": (_put("/datastore/image/info", params={"image": "../x"}, data={"info": "{}"}),
                             400, "refused"),
    "label_info_traversal_tag": (_put("/datastore/label/info", params={"label": "case01_FLAIR", "tag": "../x"},
                                      data={"info": "{}"}), 400, "refused"),
    "download_traversal": (_get("/datastore/image", params={"image": "../../etc/passwd"}), 404, None),
}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_bad_request(env, name):
    send, status, needle = REQUESTS[name]
    _check(env, send, status, needle)


def test_monailabel_client_gets_4xx_and_nothing_is_stored(env, tmp_path):
    client = MONAILabelClient(env["server"].url, tmpdir=str(tmp_path))
    files = env["files"]
    calls = {
        "upload corrupt": (lambda: client.upload_image(str(files["corrupt"]), "corrupt_case"), 415),
        "upload 2D": (lambda: client.upload_image(str(files["2d"]), "flat_case"), 422),
        "upload NaN": (lambda: client.upload_image(str(files["nan"]), "nan_case"), 422),
        "label 4D": (lambda: client.save_label("case01_FLAIR", str(files["4d"]), "final"), 422),
        "label traversal tag": (lambda: client.save_label("case01_FLAIR", str(files["corrupt"]), "../x"), 400),
        "session corrupt": (lambda: client.create_session(str(files["corrupt"])), 415),
        "infer unknown model": (lambda: client.infer("nope", "case01_FLAIR", {}), 404),
        "infer bad param": (lambda: client.infer("flair_threshold", "case01_FLAIR", {"connectivity": 5}), 422),
        "infer corrupt file": (lambda: client.infer("flair_threshold", "", {}, file=str(files["corrupt"])), 415),
        "next sample unknown strategy": (lambda: client.next_sample("nope", {}), 404),
    }
    for what, (call, status) in calls.items():
        before = _snapshot(env["studies"], env["sessions"])
        tmp_before = set(env["tmp"].rglob("*"))
        with pytest.raises(MONAILabelClientException) as err:
            call()
        assert f"Status: {status}" in str(err.value), (what, str(err.value)[:300])
        assert _snapshot(env["studies"], env["sessions"]) == before, what
        assert set(env["tmp"].rglob("*")) <= tmp_before, what
    assert env["server"].alive()


def test_success_paths_leave_no_temporary_files(env, tmp_path):
    """Issue 16 defect 3: results went through gzip temp files; uploads stayed after refusals."""
    img, _ = brain_phantom(seed=4)
    scan = tmp_path / "scan.nii.gz"
    sitk.WriteImage(img, str(scan))
    tmp_before = set(env["tmp"].rglob("*"))
    url = env["server"].url
    r = requests.post(url + "/infer/flair_threshold", data={"params": PRE},
                      files={"file": ("scan.nii.gz", scan.read_bytes())}, timeout=120)
    assert r.status_code == 200, r.text
    r = requests.post(url + "/infer/flair_threshold", params={"image": "case01_FLAIR", "output": "image"},
                      data={"params": PRE}, timeout=120)
    assert r.status_code == 200 and r.content[:2] == b"\x1f\x8b"
    r = requests.put(url + "/session/", files=[("files", ("FLAIR.nii.gz", scan.read_bytes()))], timeout=60)
    assert r.status_code == 200, r.text
    r = requests.post(url + "/infer/flair_threshold", params={"session_id": r.json()["session_id"], "output": "json"},
                      data={"params": PRE}, timeout=120)
    assert r.status_code == 200, r.text
    assert set(env["tmp"].rglob("*")) <= tmp_before, sorted(set(env["tmp"].rglob("*")) - tmp_before)


def test_server_faults_are_500_without_internals_and_logged(tmp_path):
    """Issue 16 defect 4: a global ValueError -> 422 handler made every server bug a client error.
    Runs the real ASGI app in a subprocess (it loads MONAI Label, TensorFlow and Triton) with two
    extra routes: a bug (plain ValueError) and a refusal (InputError)."""
    script = '''
import json, logging, sys
from fastapi.testclient import TestClient
from uad_label.errors import InputError
from uad_label.server.asgi import app
logging.basicConfig(stream=sys.stderr, level=logging.ERROR)

@app.get("/_test/bug")
def bug():
    raise ValueError("secret internal detail /srv/studies/x.nii.gz")

@app.get("/_test/refusal")
def refusal():
    raise InputError("image: refused /srv/studies/x.nii.gz", 422)

c = TestClient(app, raise_server_exceptions=False)
out = {}
for name in ("bug", "refusal"):
    r = c.get("/_test/" + name)
    out[name] = [r.status_code, r.json()]
print("RESULT " + json.dumps(out))
'''
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, encoding="utf-8", timeout=300)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, p.stdout[-2000:] + p.stderr[-2000:]
    out = json.loads(line[len("RESULT "):])
    assert out["bug"][0] == 500 and "secret" not in json.dumps(out["bug"][1]) and out["bug"][1]["status"] == 500
    assert "ValueError: secret internal detail" in p.stderr  # the trace is in the server log
    assert out["refusal"][0] == 422 and out["refusal"][1]["detail"] == "image: refused x.nii.gz"


def test_client_disconnect_mid_upload_leaves_no_file(env):
    """A client that goes away halfway through an upload: nothing stored, nothing left in the temp folder."""
    import socket
    import time

    before = _snapshot(env["studies"], env["sessions"])
    tmp_before = set(env["tmp"].rglob("*"))
    boundary = "xYzBoundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"scan.nii.gz\"\r\n"
            "Content-Type: application/gzip\r\n\r\n").encode()
    port = int(env["server"].url.rsplit(":", 1)[1])
    for path in ("/datastore/image?image=cut_case", "/infer/flair_threshold", "/session/"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            field = b"files" if path == "/session/" else b"file"
            body = head.replace(b'name="file"', b'name="' + field + b'"') + b"\x1f\x8b" + b"\0" * 200_000
            s.sendall((f"PUT {path} HTTP/1.1\r\n" if path != "/infer/flair_threshold" else
                       f"POST {path} HTTP/1.1\r\n").encode()
                      + f"Host: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
                        f"Content-Length: {len(body) + 1_000_000}\r\n\r\n".encode() + body)
            time.sleep(0.3)
    deadline = time.time() + 20
    while time.time() < deadline and not set(env["tmp"].rglob("*")) <= tmp_before:
        time.sleep(0.2)
    assert set(env["tmp"].rglob("*")) <= tmp_before, sorted(set(env["tmp"].rglob("*")) - tmp_before)
    assert _snapshot(env["studies"], env["sessions"]) == before
    assert env["server"].alive()
