"""The AnomalyReview Slicer module's library against the real server on a loopback port: the whole
review flow (models, detector on a datastore image and on uploads, float map + mask + JSON, live
re-thresholding, accept / reject, final label saved to the datastore, next case, training error,
cancellation). No mock of the server; no Slicer (its library imports without it)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from phantoms import brain_phantom
from server_fixture import ROOT, Server

sys.path.insert(0, str(ROOT / "slicer_extension" / "AnomalyReview"))
from AnomalyReviewLib import (  # noqa: E402
    ACCEPTED,
    CANCELLED,
    DONE,
    FAILED,
    REJECTED,
    Client,
    Job,
    Review,
    ServerError,
    changed_params,
    next_case,
    nifti,
    run_detector,
    save_review,
)

PRE = {"preprocessed": True}


def two_lesion_phantom(seed: int = 3) -> sitk.Image:
    """The phantom plus a second, dimmer blob: two findings with different scores."""
    img, _ = brain_phantom(seed=seed)
    a = sitk.GetArrayFromImage(img)  # (z, y, x)
    zz, yy, xx = np.indices(a.shape)
    blob = (zz - 12) ** 2 + (yy - 20) ** 2 + (xx - 14) ** 2 <= 6
    a[blob] = 170
    out = sitk.GetImageFromArray(a)
    out.CopyInformation(img)
    return out


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("slicer_studies")
    sitk.WriteImage(two_lesion_phantom(), str(d / "case01_FLAIR.nii.gz"))
    img, _ = brain_phantom(seed=4)
    sitk.WriteImage(img, str(d / "case02_FLAIR.nii.gz"))
    big, _ = brain_phantom(shape=(182, 218, 182), seed=1)
    sitk.WriteImage(big, str(d / "big_FLAIR.nii.gz"))
    return d


@pytest.fixture(scope="module")
def server(studies, tmp_path_factory):
    s = Server(studies, tmp_path_factory.mktemp("slicer_log") / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.url)


@pytest.fixture(scope="module")
def case01(client):
    """The detector run on a datastore image through a Job (as the widget does)."""
    job = Job(run_detector, client, "flair_threshold", image="case01_FLAIR", params=PRE, name="infer").start()
    assert job.wait(120) == DONE, job.traceback
    return job.result


def test_models_listed_with_descriptions_and_params(client):
    info = client.info()
    models = client.models(info)
    assert "flair_threshold" in models
    m = models["flair_threshold"]
    assert m.type == "anomaly" and not m.is_segmenter  # not hidden: the stock plugin shows segmentation only
    assert "Meissen" in m.description
    assert m.params["min_component_mm3"]["default"] == 20.0
    assert "threshold" in m.params and m.modalities == ["FLAIR"]
    assert "random" in client.strategies(info)
    # the options table: typed text -> request params, defaults left out
    assert changed_params(m, {"min_component_mm3": "20", "threshold": "0.9", "nbins": "128"}) == \
        {"threshold": 0.9, "nbins": 128}
    assert changed_params(m, {"threshold": ""}) == {}


def test_infer_datastore_image_float_map_mask_json(case01, studies):
    res = case01.result
    src = sitk.ReadImage(str(studies / "case01_FLAIR.nii.gz"))
    assert res.map.array.dtype == np.float32 and res.mask.array.dtype == np.uint8
    assert res.map.shape == src.GetSize() and res.mask.shape == src.GetSize()
    assert len(np.unique(res.map.array)) > 100 and 0 < res.map.array.max() <= 1.0  # not a uint8 cast
    # the map's geometry is the scan's (RAS affine vs SimpleITK's LPS origin / direction)
    origin_ras = np.asarray(src.GetOrigin()) * [-1, -1, 1]
    assert np.allclose(res.map.affine[:3, 3], origin_ras, atol=1e-4)
    direction_ras = np.diag([-1, -1, 1]) @ np.asarray(src.GetDirection()).reshape(3, 3) * np.asarray(src.GetSpacing())
    assert np.allclose(res.map.affine[:3, :3], direction_ras, atol=1e-5)
    info = res.info
    assert info["threshold"] > 0 and len(info["components"]) >= 2
    assert res.mask.array.sum() == sum(c["voxels"] for c in info["components"])


def test_live_rethreshold_matches_server_mask_and_findings(case01):
    review = case01.review
    res = case01.result
    assert review.threshold == res.info["threshold"]  # the slider starts at the server's default
    assert review.min_component_mm3 == res.info["min_component_mm3"]
    assert np.array_equal(review.mask, res.mask.array > 0)
    server_rows = res.info["components"]
    assert [f["voxels"] for f in review.findings] == [c["voxels"] for c in server_rows]
    for f, c in zip(review.findings, server_rows):
        assert f["max_score"] == pytest.approx(c["max_score"], rel=1e-6)
        assert f["mean_score"] == pytest.approx(c["mean_score"], rel=1e-5)
        assert np.allclose(f["centroid_ras"], c["centroid_ras"], atol=2e-3)
        assert np.allclose(f["centroid_index"], c["centroid_index"], atol=2e-3)
        assert f["volume_ml"] == pytest.approx(c["volume_ml"])
    # the per-slice chart agrees with the server's (brain: the server's `brain` part)
    assert "brain" in res.extras and review.brain.sum() == (res.extras["brain"].array > 0).sum()
    assert review.axis == res.info["slice_scores"]["axis"]
    assert np.allclose(review.slice_scores(), res.info["slice_scores"]["values"], atol=1e-5)
    assert np.allclose(review.slice_positions_ras(), res.info["slice_scores"]["positions_ras"], atol=2e-3)
    # the numpy-only labelling (Slicer without scipy) gives the same
    assert np.array_equal(Review(res.map, res.info, use_scipy=False).mask, review.mask)


def test_rethreshold_equals_server_at_another_threshold_and_size(client, case01):
    review = Review(case01.result.map, case01.result.info)
    for threshold, size in ((0.95, 20.0), (0.995, 5.0), (0.97, 60.0)):
        other = client.infer("flair_threshold", image="case01_FLAIR",
                             params={**PRE, "threshold": threshold, "min_component_mm3": size})
        review.rethreshold(threshold, size)
        assert np.array_equal(review.mask, other.mask.array > 0), (threshold, size)
        assert [f["voxels"] for f in review.findings] == [c["voxels"] for c in other.info["components"]]
    review.reset()
    assert review.threshold == case01.result.info["threshold"]


def test_accept_reject_label_assembly_and_save_final_label(client, case01, studies, tmp_path):
    review = Review(case01.result.map, case01.result.info)
    first, second = review.findings[0]["id"], review.findings[1]["id"]
    review.accept(first)
    review.reject(second)
    assert review.counts()[ACCEPTED] == 1 and review.counts()[REJECTED] == 1
    # decisions follow their findings through a threshold change and back
    review.rethreshold(review.threshold - 0.005)
    assert sorted(f["state"] for f in review.findings if f["state"] != "pending") == [ACCEPTED, REJECTED]
    review.reset()
    assert review.state(first) == ACCEPTED and review.state(second) == REJECTED
    label = review.label_array()
    assert np.array_equal(label > 0, review.finding_mask(first))
    # the annotator's edit in the Segment Editor: paint a voxel, then un-accept the finding
    edited = label.copy()
    edited[0, 0, 0] = 1
    assert review.apply_decision(edited, first, accepted=False).sum() == 1
    edited = review.apply_decision(edited, second, accepted=True)
    assert edited.sum() == label.sum() + 1 + review.finding(second)["voxels"]

    saved = save_review(None, client, case01, edited=edited)
    assert saved["image"] == "case01_FLAIR"
    ds = client.datastore("all")
    obj = ds["objects"]["case01_FLAIR"]
    assert "final" in obj["labels"], obj
    # the stored label is the edited segmentation in the scan's geometry
    stored = nifti.read_bytes(client.download_label("case01_FLAIR", "final"))
    assert np.array_equal(stored.array, edited) and stored.array.dtype == np.uint8
    src = sitk.ReadImage(str(studies / "case01_FLAIR.nii.gz"))
    path = tmp_path / "label.nii.gz"
    path.write_bytes(client.download_label("case01_FLAIR", "final"))
    lab = sitk.ReadImage(str(path))
    assert lab.GetSize() == src.GetSize()
    assert np.allclose(lab.GetOrigin(), src.GetOrigin(), atol=1e-4)
    assert np.allclose(lab.GetDirection(), src.GetDirection(), atol=1e-5)
    assert np.allclose(lab.GetSpacing(), src.GetSpacing(), atol=1e-5)
    assert np.array_equal(sitk.GetArrayFromImage(lab).transpose(2, 1, 0), edited)


def test_upload_by_session_and_in_request(client, server, studies, tmp_path):
    img = two_lesion_phantom(seed=7)
    path = tmp_path / "loaded.nii.gz"
    sitk.WriteImage(img, str(path))
    before = sorted(p.name for p in studies.iterdir())
    by_session = run_detector(None, client, "flair_threshold", files={"FLAIR": path}, params=PRE)
    assert by_session.session_id and by_session.image_id is None
    direct = run_detector(None, client, "flair_threshold", files={"FLAIR": path.read_bytes()}, params=PRE,
                          via_session=False)
    for case in (by_session, direct):
        assert case.review.findings and np.array_equal(case.review.mask, case.result.mask.array > 0)
    assert np.array_equal(by_session.result.map.array, direct.result.map.array)
    assert sorted(p.name for p in studies.iterdir()) == before  # uploads never enter the datastore
    with pytest.raises(ValueError, match="datastore"):
        save_review(None, client, direct)


def test_server_errors_are_clean_messages(client, server):
    with pytest.raises(ServerError) as e:
        client.infer("nope", image="case01_FLAIR", params=PRE)
    assert e.value.status == 404 and "unknown model" in e.value.detail
    with pytest.raises(ServerError) as e:
        client.infer("flair_threshold", image="case01_FLAIR", params={"tresh": 1})
    assert e.value.status == 422 and "unknown parameter" in e.value.detail
    # a job reports the failure through poll(), never raises into the caller's thread
    job = Job(run_detector, client, "flair_threshold", image="no_such_image", params=PRE).start()
    assert job.wait(60) == FAILED and isinstance(job.error, ServerError) and job.error.status == 404
    with pytest.raises(ServerError) as e:
        Client("http://127.0.0.1:9", timeout=2).info()
    assert e.value.status == 0 and "unreachable" in str(e.value)
    assert server.alive()


def test_training_request_error_is_reported(client, server):
    trainers = client.info().get("trainers") or {}
    job = Job(lambda ctx: client.train("flair_threshold", ctx=ctx)).start()
    status = job.wait(60)
    assert "flair_threshold" not in trainers  # training-free: the server has no trainer for it
    # reported as a clean message, through poll(), not raised in the caller's thread
    assert status == FAILED and isinstance(job.error, ServerError)
    assert job.error.status == 404 and "no trainer" in job.error.detail
    # the server's own error answers on the training endpoints come back as messages too
    with pytest.raises(ServerError) as e:
        client.request("POST", "/train/flair_threshold", body=b"[not json", content_type="application/json")
    assert 400 <= e.value.status < 500 and e.value.detail and "Traceback" not in e.value.detail
    assert server.alive()


def test_next_case_by_strategy(client):
    job = Job(next_case, client, "random").start()
    assert job.wait(60) == DONE, job.traceback
    nxt = job.result
    assert nxt["id"] in client.images()
    img = nifti.read_bytes(nxt["data"])
    assert img.array.ndim == 3 and nxt["name"].endswith(".nii.gz")
    with pytest.raises(ServerError) as e:
        next_case(None, client, "no_such_strategy")
    assert e.value.status == 404 and "no_such_strategy" in e.value.detail


def test_cancel_a_running_inference(client, server):
    job = Job(run_detector, client, "flair_threshold", image="big_FLAIR", params=PRE).start()
    deadline = time.time() + 30
    while "waiting" not in job.progress[1] and time.time() < deadline:
        time.sleep(0.02)
    assert job.running and "waiting" in job.progress[1]
    job.cancel()
    assert job.poll() == CANCELLED
    # the blocked request returns (bounded so a hang fails; no absolute latency on a shared machine)
    assert job.wait(30) == CANCELLED
    assert job.result is None
    assert server.alive()


def test_progress_is_reported_during_upload(client, tmp_path):
    img, _ = brain_phantom(seed=9)
    path = tmp_path / "p.nii.gz"
    sitk.WriteImage(img, str(path))
    seen = []
    job = Job(run_detector, client, "flair_threshold", files={"FLAIR": path}, params=PRE)
    orig = job.context.progress

    def spy(fraction, message=""):
        seen.append((fraction, message))
        orig(fraction, message)

    job.context.progress = spy
    assert job.start().wait(120) == DONE, job.traceback
    messages = " ".join(m for _, m in seen)
    assert "upload" in messages and "waiting" in messages
    assert any(f == 1.0 for f, _ in seen)


def test_several_modalities_go_through_one_session(client, server, tmp_path):
    """FLAIR + T1 uploaded together: one session (a folder on the server), resolved into its modalities
    by the server's case rule (uad_label.cases.case_of)."""
    img, _ = brain_phantom(seed=11)
    files = {}
    for mod in ("FLAIR", "T1"):
        p = tmp_path / f"{mod}.nii.gz"
        sitk.WriteImage(img, str(p))
        files[mod] = p
    case = run_detector(None, client, "flair_threshold", files=files, params=PRE, via_session=False)
    assert case.session_id and case.review.findings
    assert server.alive()


def test_connect_job_and_datastore_scan_fetched_in_the_inference_job(server, client, studies):
    """What the module's jobs run (issue 15 defect 4): connect = /info/ + datastore listing, off the Qt
    thread; a datastore inference fetches the scan in the same job."""
    from AnomalyReviewLib.workflow import connect_server
    job = Job(connect_server, server.url, None, name="connect").start()
    assert job.wait(60) == DONE, job.traceback
    result = job.result
    assert "flair_threshold" in result["models"] and "case01_FLAIR" in result["images"]
    assert result["datastore_error"] is None and "random" in result["strategies"]
    job = Job(run_detector, client, "flair_threshold", image="case02_FLAIR", params=PRE, fetch_scan=True).start()
    assert job.wait(120) == DONE, job.traceback
    name, data = job.result.scan
    assert name.startswith("case02_FLAIR")
    src = sitk.ReadImage(str(studies / "case02_FLAIR.nii.gz"))
    assert np.array_equal(nifti.read_bytes(data).array, sitk.GetArrayFromImage(src).transpose(2, 1, 0))


def test_saved_label_is_the_snapshot_taken_at_the_click(client, case01):
    """Issue 15 defect 7: the label and summary are frozen before the upload job runs."""
    from AnomalyReviewLib.workflow import review_snapshot, save_snapshot
    review = case01.review
    review.reset()
    first = review.findings[0]["id"]
    review.accept(first)
    snapshot = review_snapshot(case01)
    expected = review.finding_mask(first)
    review.rethreshold(review.range[1] + 1.0)  # the slider moves before the upload: no finding left
    job = Job(save_snapshot, client, snapshot).start()
    assert job.wait(60) == DONE, job.traceback
    stored = nifti.read_bytes(client.download_label("case01_FLAIR", "final"))
    assert np.array_equal(stored.array > 0, expected) and not review.findings
    review.reset()
