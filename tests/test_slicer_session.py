"""A review session in the Slicer module, on recording fakes of Slicer (tests/slicer_fakes.py) and a
loopback HTTP stub that can hold its answers (to prove the Qt thread never waits on the network):
HTTP work in jobs with progress and cancel (issue 15 defect 4), scene close (6), and the smaller
defects (7): uploads as in-memory copies, temporary folder removed, grid warning asked before
saving, a map without a mask, the min-size range from the server, input selectors, Train without
a model, saving a snapshot. Also runs the module's own self-test (AnomalyReviewTest) on the fakes.

ANOMALYREVIEW_MODULE=/path/to/AnomalyReview.py runs them against another copy of the module.
"""
from __future__ import annotations

import http.server
import json
import os
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import slicer_fakes as sf

MODULE = Path(os.environ.get("ANOMALYREVIEW_MODULE", sf.MODULE_DIR / "AnomalyReview.py"))
PARAMS = {"threshold": {"default": None, "type": "float", "nullable": True},
          "min_component_mm3": {"default": 20.0, "type": "float", "minimum": 0}}


class Stub(http.server.BaseHTTPRequestHandler):
    """/info/, /datastore/, /datastore/image, /infer/<model>, PUT /datastore/label; `gates` hold answers."""
    gates: dict = {}
    received: list = []
    case = None

    def _send(self, body: bytes, ctype="application/json", extra=()):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _hold(self, path):
        gate = self.gates.get(path)
        if gate is not None:
            gate.wait(20)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        self._hold(url.path)
        if url.path == "/info/":
            info = {"name": "stub", "version": "0", "strategies": {"random": {}}, "trainers": {},
                    "models": {"flair_threshold": {"type": "anomaly", "description": "stub", "params": PARAMS}}}
            self._send(json.dumps(info).encode())
        elif url.path == "/datastore/":
            self._send(json.dumps({"objects": {"case01_FLAIR": {"labels": {}}}}).encode())
        elif url.path == "/datastore/image":
            self._send(sf.nifti.to_bytes(self.case.result.map), "application/gzip",
                       [("Content-Disposition", 'attachment; filename="case01_FLAIR.nii.gz"')])

    def _body(self):
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        body = self._body()
        self.received.append(("POST", self.path, self.headers.get("Content-Type"), body))
        self._hold(url.path)
        from AnomalyReviewLib import multipart
        res = self.case.result
        out, ctype = multipart.encode([("params", json.dumps(res.info)),
                                       ("image", multipart.FilePart("map.nii.gz", sf.nifti.to_bytes(res.map))),
                                       ("mask", multipart.FilePart("mask.nii.gz", sf.nifti.to_bytes(res.mask)))])
        self._send(out, ctype)

    def do_PUT(self):
        body = self._body()
        self.received.append(("PUT", self.path, self.headers.get("Content-Type"), body))
        self._hold(urllib.parse.urlsplit(self.path).path)
        self._send(json.dumps({"image": "case01_FLAIR", "label": "case01_FLAIR"}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    from AnomalyReviewLib.slicer_selftest import synthetic_case
    Stub.gates, Stub.received, Stub.case = {}, [], synthetic_case()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    for g in Stub.gates.values():
        g.set()
    server.shutdown()


@pytest.fixture
def env(monkeypatch):
    f, mod = sf.load_module(monkeypatch, MODULE)
    return f, mod


@pytest.fixture
def http_threads(monkeypatch):
    """Which threads make HTTP requests (the main thread must make none)."""
    from AnomalyReviewLib.client import Client
    seen, original = [], Client.request

    def request(self, *a, **k):
        seen.append(threading.current_thread() is threading.main_thread())
        return original(self, *a, **k)

    monkeypatch.setattr(Client, "request", request)
    return seen


def widget(mod):
    w = mod.AnomalyReviewWidget()
    w.setup()
    return w


def finish(f, w, timeout=20):
    """Let the widget's QTimer poll its job until it is done (what Slicer's event loop does)."""
    deadline = time.time() + timeout
    while w.job is not None and time.time() < deadline:
        f.process_events()
        time.sleep(0.01)
    assert w.job is None, "the job did not finish"


def test_connect_runs_in_a_job_with_cancel(env, stub, http_threads):
    """Defect 4: Connect (/info/ and the datastore listing) is a job polled by the QTimer."""
    f, mod = env
    w = widget(mod)
    Stub.gates["/info/"] = threading.Event()
    w.ui.urlEdit.text = stub
    w.on_connect()  # returns at once although the server has not answered
    assert w.job is not None and w.job.running and w.timer.isActive()
    assert w.ui.cancelButton.enabled and not w.ui.runButton.enabled
    w.on_cancel()
    assert "cancelled" in w.ui.statusLabel.text and w.job is None
    Stub.gates.pop("/info/").set()
    w.on_connect()
    finish(f, w)
    assert "Connected: stub" in w.ui.statusLabel.text
    assert w.ui.modelCombo.currentData == "flair_threshold" and w.ui.datastoreCombo.currentText == "case01_FLAIR"
    assert http_threads and not any(http_threads)


def test_datastore_run_downloads_the_scan_in_the_job(env, stub, http_threads):
    """Defect 4: the scan of a datastore image is fetched inside the inference job, not after it."""
    f, mod = env
    w = widget(mod)
    w.ui.urlEdit.text = stub
    w.on_connect()
    finish(f, w)
    w.ui.useDatastoreCheck.checked = True
    w.on_run()
    finish(f, w)
    logic = w.logic
    assert logic.scan_node is not None and logic.scan_node.GetName() == "case01_FLAIR"
    assert logic.case.scan[0] == "case01_FLAIR.nii.gz"
    assert {c.GetBackgroundVolumeID() for c in f.composite_nodes()} == {logic.scan_node.GetID()}
    assert w.ui.acceptButton.enabled and w.ui.findingsTable.rowCount == 2
    assert len(http_threads) >= 4 and not any(http_threads)


def test_scene_close_ends_the_review(env):
    """Defect 6: a scene close drops the review's nodes; actions refuse; the temporary folder goes."""
    f, mod = env
    w = widget(mod)
    from AnomalyReviewLib.slicer_selftest import synthetic_case
    case = synthetic_case()
    logic = w.logic
    scan = logic.load_scan("case01_FLAIR.nii.gz", sf.nifti.to_bytes(case.result.map))
    w.show_result(case, scan)
    tmp = Path(scan.GetStorageNode().GetFileName()).parent
    assert tmp.is_dir() and w.ui.acceptButton.enabled
    f.scene.Clear()
    assert logic.case is None and logic.map_node is None and logic.segmentation_node is None
    assert not logic.has_case() and not tmp.exists()
    assert not any(b.enabled for b in (w.ui.acceptButton, w.ui.saveButton, w.ui.chartButton))
    with pytest.raises(RuntimeError, match="no result under review"):
        logic.decide(1, "accepted")
    with pytest.raises(RuntimeError, match="no result under review"):
        logic.edited_label()
    assert logic.getParameterNode().mapVolume is None  # a new, empty parameter node


def test_scene_close_without_the_widget(env):
    """Defect 6 for the Logic alone (Python console): it observes the scene itself."""
    from AnomalyReviewLib.slicer_selftest import synthetic_case
    f, mod = env
    logic = mod.AnomalyReviewLogic()
    case = synthetic_case()
    logic.finish_infer(case)
    f.scene.Clear()
    assert logic.case is None and logic.candidates_node is None and logic.chart_nodes is None
    with pytest.raises(RuntimeError, match="no result under review"):
        logic.update_threshold(0.9)
    logic.finish_infer(synthetic_case())  # the next result works on the new scene
    assert f.scene.IsNodePresent(logic.map_node) and logic.has_case()


def test_upload_copies_in_memory_leave_the_users_volume_alone(env, stub, tmp_path):
    """Defect 7: uploading does not re-point the user's volume at a temporary file, writes no file."""
    from AnomalyReviewLib import Client, multipart
    f, mod = env
    path = tmp_path / "mine.nii.gz"
    sf.nifti.write(Stub.case.result.map, path)
    import slicer  # the fake, installed by `env`
    node = slicer.util.loadVolume(str(path), {"name": "mine"})
    logic = mod.AnomalyReviewLogic()
    logic.client = Client(stub)
    job = logic.start_infer("flair_threshold", volumes={"FLAIR": node}, via_session=False)
    assert job.wait(20) == "done", job.traceback
    assert node.GetStorageNode().GetFileName() == str(path)
    assert not logic._tmp or not os.listdir(logic._tmp)
    method, target, ctype, body = Stub.received[-1]
    sent = sf.nifti.read_bytes(multipart.decode_fields(body, ctype)["file"].data)
    assert np.array_equal(sent.array, Stub.case.result.map.array) and np.allclose(sent.affine, node.matrix)


def test_grid_mismatch_is_asked_before_saving(env, stub):
    """Defect 7: a scan in another grid: the warning is shown and the user decides."""
    from AnomalyReviewLib import Client
    f, mod = env
    w = widget(mod)
    w.logic.client = Client(stub)
    case = Stub.case
    other = case.result.map.with_array(np.zeros(case.result.map.shape, np.float32))
    other.affine = np.diag([2.0, 2.0, 2.0, 1.0])
    scan = w.logic.load_scan("other.nii.gz", sf.nifti.to_bytes(other))
    w.show_result(case, scan)
    f.confirm_answer = False
    w.on_save()
    assert len(f.dialogs) == 1 and "grid" in f.dialogs[0]
    assert w.job is None and "cancelled" in w.ui.statusLabel.text
    f.confirm_answer = True
    w.on_save()
    finish(f, w)
    assert len(f.dialogs) == 2 and "Saved label" in w.ui.statusLabel.text


def test_map_without_mask_is_shown_and_thresholded(env):
    """Defect 7: a result with a map but no mask (e.g. output=image) is shown, thresholded here."""
    from AnomalyReviewLib.slicer_selftest import synthetic_case
    f, mod = env
    case = synthetic_case()
    case.result.mask, case.review = None, None
    logic = mod.AnomalyReviewLogic()
    logic.finish_infer(case)
    assert logic.map_node is not None and case.review is not None and len(case.review.findings) == 2
    assert logic.candidates_node.array.max() == 2


def test_min_size_range_comes_from_the_server(env):
    """Defect 7: a server value above 500 mm³ is not clamped by the slider."""
    from AnomalyReviewLib import ModelInfo
    from AnomalyReviewLib.slicer_selftest import synthetic_case
    f, mod = env
    w = widget(mod)
    case = synthetic_case()
    case.review.rethreshold(None, 2000.0)
    w.logic.models = {"synthetic": ModelInfo("synthetic", "anomaly", params=PARAMS)}
    w.show_result(case)
    assert w.ui.minSizeSlider.maximum >= 2000 and w.ui.minSizeSlider.value == 2000.0
    assert w.ui.minSizeSlider.minimum == 0


def test_input_selectors_offer_only_scalar_non_output_volumes(env):
    """Defect 7: label maps (child type) and the module's own outputs are not offered as inputs."""
    from AnomalyReviewLib.slicer_selftest import synthetic_case
    f, mod = env
    w = widget(mod)
    for sel in (w.ui.flairSelector, w.ui.t1Selector, w.ui.t2Selector):
        assert sel.nodeTypes == ["vtkMRMLScalarVolumeNode"] and sel.showChildNodeTypes is False
        assert sel.props["scene"] is f.scene  # qMRMLWidget.mrmlSceneChanged -> setMRMLScene (.ui connections)
    case = synthetic_case()
    scan = w.logic.load_scan("case01_FLAIR.nii.gz", sf.nifti.to_bytes(case.result.map))
    w.show_result(case, scan)
    hidden = set(w.ui.flairSelector.sortFilterProxyModel().hiddenNodeIDs)
    assert {w.logic.map_node.GetID(), w.logic.candidates_node.GetID()} <= hidden and scan.GetID() not in hidden


def test_train_without_a_model_says_what_to_do(env):
    f, mod = env
    w = widget(mod)
    w.on_train()
    assert "Choose the model to train" in w.ui.statusLabel.text and w.job is None
    w.logic.client = object()  # connected, still no model
    with pytest.raises(ValueError, match="no model selected"):
        w.logic.start_train("")


def test_save_sends_the_state_at_the_time_of_the_click(env, stub, monkeypatch):
    """Defect 7: the save job uses a snapshot; moving the slider meanwhile changes nothing it sends."""
    from AnomalyReviewLib import Client, jobs, multipart
    f, mod = env
    deferred, start = [], jobs.Job.start
    monkeypatch.setattr(jobs.Job, "start", lambda self: deferred.append(self) or self)
    logic = mod.AnomalyReviewLogic()
    logic.client = Client(stub)
    case = Stub.case
    logic.finish_infer(case)
    first = case.review.findings[0]
    logic.decide(first["id"], "accepted")
    job = logic.start_save()
    logic.update_threshold(0.92)  # the annotator moves on before the upload ran
    logic.decide(case.review.findings[0]["id"], "rejected")
    start(job)
    assert job.wait(20) == "done", job.traceback
    method, target, ctype, body = Stub.received[-1]
    parts = multipart.decode_fields(body, ctype)
    summary = json.loads(parts["params"].data)
    assert summary["threshold"] == pytest.approx(0.8) and summary["counts"]["accepted"] == 1
    label = sf.nifti.read_bytes(parts["label"].data)
    assert int((label.array > 0).sum()) == first["voxels"]


def test_module_self_test_passes_on_the_fakes(env, monkeypatch):
    """The self-test Slicer runs (Reload and Test, ctest) passes here: load map -> colour -> threshold ->
    accept -> chart -> save, and the scene close."""
    import types

    import slicer
    f, mod = env
    w = widget(mod)
    monkeypatch.setattr(slicer.modules, "anomalyreview",
                        types.SimpleNamespace(widgetRepresentation=lambda: types.SimpleNamespace(self=lambda: w)),
                        raising=False)
    test = mod.AnomalyReviewTest()
    test.test_widget_review()
    assert f.markups.called("JumpSlicesToLocation") and f.plot_view.slots
    test.test_scene_close()
    assert w.logic.case is None
