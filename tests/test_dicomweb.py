"""PACS round trip against a real Orthanc (Debian orthanc + orthanc-dicomweb) on a loopback port:
an MR series made from a real NIfTI volume is uploaded to Orthanc, appears in the uad-label server's
DICOMweb datastore (search filtered to MR), runs through flair_threshold, and the approved label is
stored back in Orthanc as DICOM SEG referencing that series (pydicom-seg, no dcmqi)."""
from __future__ import annotations

import io
import json
import os

import pydicom
import pytest
import requests
import SimpleITK as sitk
from server_fixture import Server
from shared_data import shared_path

from uad_label.dicom.orthanc import Orthanc, dicomweb_plugin, orthanc_binary

pytestmark = pytest.mark.skipif(not (orthanc_binary() and dicomweb_plugin()),
                                reason="Orthanc + DICOMweb plugin not installed "
                                       "(apt-get install -y orthanc orthanc-dicomweb)")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    from uad_label.dicom.convert import volume_to_mr_series

    flair = sitk.ReadImage(str(shared_path("mslub", "patient26", "FLAIR.nii.gz")))
    # crop to keep the test quick; real anatomy, real intensities
    flair = flair[40:140, 50:170, 60:120]
    d = tmp_path_factory.mktemp("dicom")
    mr = volume_to_mr_series(flair, d / "mr", patient_id="P26", series_description="FLAIR")
    ct = volume_to_mr_series(flair[:, :, :4], d / "ct", patient_id="P26", series_description="not MR")
    for f in ct["files"]:  # a non-MR series the MR filter must hide
        ds = pydicom.dcmread(str(f))
        ds.Modality = "CT"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.save_as(str(f))
    o = Orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        o.upload(mr["files"] + ct["files"])
        yield o, mr, ct
    finally:
        o.stop()


@pytest.fixture(scope="module")
def server(pacs, tmp_path_factory):
    o, _, _ = pacs
    old = {k: os.environ.get(k) for k in ("MONAI_LABEL_DICOMWEB_CACHE_PATH",)}
    os.environ["MONAI_LABEL_DICOMWEB_CACHE_PATH"] = str(tmp_path_factory.mktemp("cache"))
    try:
        s = Server(o.dicomweb, tmp_path_factory.mktemp("log") / "server.log")
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    yield s
    s.stop()


def test_mr_series_appears_runs_and_label_goes_back_as_seg(pacs, server, tmp_path):
    o, mr, ct = pacs
    ds = requests.get(server.url + "/datastore/", params={"output": "all"}, timeout=60).json()
    ids = set(ds["objects"]) if "objects" in ds else set()
    listing = requests.get(server.url + "/datastore/", params={"output": "stats"}, timeout=60).json()
    assert listing["total"] == 1, listing  # MR only: the CT series is filtered out
    r = requests.post(server.url + "/infer/flair_threshold", params={"image": mr["series_uid"], "output": "all"},
                      data={"params": json.dumps({"preprocessed": True})}, timeout=300)
    assert r.status_code == 200, r.text[:500]
    from requests_toolbelt import MultipartDecoder

    parts = {p.headers[b"Content-Disposition"].decode().split('name="')[1].split('"')[0]: p.content
             for p in MultipartDecoder(r.content, r.headers["content-type"]).parts}
    info = json.loads(parts["params"])
    assert info["image_score"] > 0 and info["components"], ids
    mask_path = tmp_path / "mask.nii.gz"
    mask_path.write_bytes(parts["mask"])
    mask = sitk.ReadImage(str(mask_path))
    # the annotator approves it: stored back into the PACS as DICOM SEG
    with open(mask_path, "rb") as f:
        r = requests.put(server.url + "/datastore/label", params={"image": mr["series_uid"]},
                         files={"label": ("label.nii.gz", f)}, timeout=300)
    assert r.status_code == 200, r.text[:500]
    segs = [s for s in o.series() if s["MainDicomTags"].get("Modality") == "SEG"
            or requests.get(f"{o.url}/instances/{s['Instances'][0]}/simplified-tags",
                            timeout=30).json().get("Modality") == "SEG"]
    assert len(segs) == 1, o.series()
    raw = requests.get(f"{o.url}/instances/{segs[0]['Instances'][0]}/file", timeout=60).content
    seg = pydicom.dcmread(io.BytesIO(raw))
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == mr["series_uid"]
    import pydicom_seg

    back = pydicom_seg.MultiClassReader().read(seg)
    assert int((back.data > 0).sum()) == int(sitk.GetArrayViewFromImage(mask).sum()) > 0
    # the case now counts as labelled
    assert requests.get(server.url + "/datastore/", params={"output": "stats"}, timeout=60).json()["completed"] == 1
