"""Saving a final label starts fine-tuning when the server is configured for it (real server,
real MONAI Label training task; the task is stopped once it is seen running)."""
from __future__ import annotations

import time

import pytest
import requests
import SimpleITK as sitk
from phantoms import brain_phantom
from server_fixture import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    studies = tmp_path_factory.mktemp("studies")
    img, gt = brain_phantom()
    sitk.WriteImage(img, str(studies / "case01_FLAIR.nii.gz"))
    sitk.WriteImage(gt, str(tmp_path_factory.mktemp("gt") / "gt.nii.gz"))
    s = Server(studies, tmp_path_factory.mktemp("log") / "server.log",
               conf={"models": "flair_threshold,patchddm", "finetune_model": "patchddm", "finetune_every": "1"})
    s.gt = gt
    yield s
    requests.delete(s.url + "/train/", timeout=30)
    s.stop()


def test_final_label_triggers_finetuning(server, tmp_path):
    label = tmp_path / "label.nii.gz"
    sitk.WriteImage(server.gt, str(label))
    with open(label, "rb") as f:
        r = requests.put(server.url + "/datastore/label", params={"image": "case01_FLAIR", "tag": "final"},
                         files={"label": ("label.nii.gz", f)}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["final_labels"] == 1
    assert "finetune" in body and "error" not in (body["finetune"] or {}), body
    deadline = time.time() + 60
    status = {}
    while time.time() < deadline:
        status = requests.get(server.url + "/train/", timeout=10).json()
        if status.get("status") in ("RUNNING", "DONE", "ERROR"):
            break
        time.sleep(1)
    assert status.get("request", {}).get("model") == "patchddm", status
    assert status.get("status") in ("RUNNING", "DONE"), status
    stop = requests.delete(server.url + "/train/", timeout=30)
    assert stop.status_code == 200
