"""segresnet served: listed in /info as a trained `segmentation` task once its weights exist, and /infer
returns the probability map, the mask and the TTA `uncertainty` map (real server on a loopback port)."""
from __future__ import annotations

import json

import pytest
import requests
import SimpleITK as sitk
import torch
from requests_toolbelt import MultipartDecoder
from server_fixture import Server

from uad_label.synth import write_sample_data

TINY = {"in_channels": 3, "init_filters": 4, "num_groups": 4, "blocks_down": [1, 1], "blocks_up": [1]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from uad_label.networks.segresnet import build
    from uad_label.weights import save_state

    studies = tmp_path_factory.mktemp("studies")
    write_sample_data(studies, n_healthy=0, n_lesion=1, seed=0, geometry="template", downsample=4, progress=False)
    weights = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    save_state("segresnet", build(TINY).state_dict(),
               {"network": TINY, "spacing_mm": 4.0, "modalities": ["FLAIR", "T1", "T2"], "config": "test"}, weights)
    s = Server(studies, tmp_path_factory.mktemp("log") / "server.log", conf={"models": "flair_threshold,segresnet"},
               env={"UAD_WEIGHTS_DIR": str(weights)})
    s.studies = studies
    yield s
    s.stop()


def test_listed_as_trained_segmentation(server):
    model = requests.get(server.url + "/info/", timeout=10).json()["models"]["segresnet"]
    assert model["type"] == "segmentation" and model["trained"] is True
    assert model["params"]["tta"]["default"] == 3 and model["optional_modalities"] == ["T1", "T2"]


def test_infer_returns_map_mask_and_uncertainty(server, tmp_path):
    r = requests.post(server.url + "/infer/segresnet", params={"image": "sub-000_FLAIR"},
                      data={"params": json.dumps({"preprocessed": True, "tta": 1})}, timeout=180)
    assert r.status_code == 200, r.text
    parts = {}
    for part in MultipartDecoder(r.content, r.headers["content-type"]).parts:
        name = part.headers[b"Content-Disposition"].decode().split('name="')[1].split('"')[0]
        parts[name] = part.content
    assert {"params", "image", "mask", "uncertainty"} <= set(parts)
    info = json.loads(parts["params"])
    assert info["channels"] == ["FLAIR", "T1", "T2"] and info["passes"] == 2 and 0 <= info["mean_uncertainty"] <= 1
    (tmp_path / "u.nii.gz").write_bytes(parts["uncertainty"])
    unc = sitk.ReadImage(str(tmp_path / "u.nii.gz"))
    assert unc.GetSize() == sitk.ReadImage(str(server.studies / "sub-000_FLAIR.nii.gz")).GetSize()
    bad = requests.post(server.url + "/infer/segresnet", params={"image": "sub-000_FLAIR"},
                        data={"params": json.dumps({"preprocessed": True, "tta": 99})}, timeout=60)
    assert bad.status_code == 422 and "tta" in bad.text
