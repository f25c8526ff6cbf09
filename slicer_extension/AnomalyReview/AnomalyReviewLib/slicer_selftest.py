"""AnomalyReview's self-test (needs Slicer): *Reload and Test* in the module panel, and ctest through
`slicer_add_python_unittest` in the module's CMakeLists.txt.

It drives the module's widget on a synthetic result through load map -> colour -> threshold ->
accept / reject -> chart click -> save, and checks what the annotator sees (colour node, label
outlines, display threshold, outline-only segmentation, chart connection), the parameter node, a
scene close, and the label the server receives. The server is a loopback HTTP recorder started by
the test; with ANOMALYREVIEW_TEST_SERVER=http://host:port the flow also runs against that server.
"""
import http.server
import json
import os
import threading
import time

import numpy as np
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from . import display, multipart, nifti
from .client import Client, InferResult
from .jobs import DONE, FAILED
from .review import ACCEPTED, REJECTED, Review, slicer_to_ijk
from .workflow import ReviewCase


class _LabelRecorder(http.server.BaseHTTPRequestHandler):
    """Answers PUT /datastore/label like the server and keeps what it received."""
    received = []

    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Content-Type"], body))
        out = json.dumps({"image": "synthetic", "label": "synthetic"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def synthetic_case():
    """Two findings (0.95 and 0.9) in a noisy ellipsoid brain, threshold 0.8, 1.2 mm slices."""
    shape = (40, 48, 36)
    half = np.array(shape)[:, None, None, None] / 2
    brain = (((np.indices(shape) - half) / (half / 1.25)) ** 2).sum(0) < 1
    amap = np.where(brain, np.random.default_rng(0).random(shape) * 0.5, 0).astype(np.float32)
    amap[18:22, 20:24, 16:19] = 0.95
    amap[8:10, 10:12, 10:12] = 0.9
    img = nifti.NiftiImage(amap, np.array([[-1.0, 0, 0, 20], [0, -1.0, 0, 24], [0, 0, 1.2, -18], [0, 0, 0, 1]]))
    info = {"threshold": 0.8, "min_component_mm3": 5.0, "connectivity": 26, "detector": "synthetic"}
    mask = img.with_array((amap > 0.8).astype(np.uint8))
    files = {"image": nifti.to_bytes(img), "mask": nifti.to_bytes(mask)}  # as the client receives them
    result = InferResult("synthetic", info, img, mask, files=files)
    return ReviewCase(result, Review(img, info), image_id="synthetic")


class AnomalyReviewSelfTest(ScriptedLoadableModuleTest):
    logic_class = None  # AnomalyReview.py sets its Logic class

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_widget_review()
        self.setUp()
        self.test_scene_close()
        url = os.environ.get("ANOMALYREVIEW_TEST_SERVER")
        if url:
            self.setUp()
            self.server_flow(url)

    def _widget(self):
        return slicer.modules.anomalyreview.widgetRepresentation().self()

    def _wait_widget(self, widget, timeout=120):
        deadline = time.time() + timeout
        while widget.job is not None and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.02)
        self.assertIsNone(widget.job, "the widget's job did not finish")

    def test_widget_review(self):
        self.delayDisplay("AnomalyReview: load map -> colour -> threshold -> accept -> save")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LabelRecorder)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            w = self._widget()
            logic = w.logic
            logic.client = Client(f"http://127.0.0.1:{server.server_port}")
            case = synthetic_case()
            member = case.result.map.with_array(np.full(case.result.map.shape, 0.5, np.float32))
            case.result.extras["member_synthetic"] = member  # a fusion's member map
            w.show_result(case)
            d = logic.map_node.GetDisplayNode()
            self.assertEqual(logic.map_node.GetImageData().GetScalarType(), vtk.VTK_FLOAT)
            self.assertEqual(d.GetColorNodeID(), display.MAP_COLOR_NODE_ID)
            self.assertTrue(np.allclose(slicer_to_ijk(slicer.util.arrayFromVolume(logic.map_node)), case.review.scores))
            for slice_node in slicer.util.getNodesByClass("vtkMRMLSliceNode"):
                self.assertTrue(slice_node.GetUseLabelOutline())
            composite = slicer.app.layoutManager().sliceWidget("Red").sliceLogic().GetSliceCompositeNode()
            self.assertEqual(composite.GetForegroundVolumeID(), logic.map_node.GetID())
            self.assertEqual(composite.GetLabelVolumeID(), logic.candidates_node.GetID())
            self.assertFalse(logic.segmentation_node.GetDisplayNode().GetVisibility2DFill())
            self.assertTrue(logic.segmentation_node.GetDisplayNode().GetVisibility2DOutline())

            w.ui.thresholdSlider.value = 0.92
            w.apply_threshold()
            self.assertEqual(len(case.review.findings), 1)
            self.assertTrue(d.GetApplyThreshold())
            self.assertAlmostEqual(d.GetLowerThreshold(), 0.92, places=5)
            self.assertEqual(int((slicer_to_ijk(slicer.util.arrayFromVolume(logic.candidates_node)) > 0).sum()), 48)
            w.ui.thresholdSlider.value = 0.8
            w.apply_threshold()
            self.assertEqual(len(case.review.findings), 2)

            selector, member_node = w.ui.extraMapSelector, logic.extra_nodes["member_synthetic"]
            self.assertEqual(selector.nodeCount(), 1)
            selector.setCurrentNode(member_node)  # the extra map in colour; the threshold stays on the map
            self.assertEqual(composite.GetForegroundVolumeID(), member_node.GetID())
            self.assertEqual(member_node.GetDisplayNode().GetColorNodeID(), display.MEMBER_COLOR_NODE_ID)
            self.assertEqual(composite.GetLabelVolumeID(), logic.candidates_node.GetID())
            selector.setCurrentNode(None)
            self.assertEqual(composite.GetForegroundVolumeID(), logic.map_node.GetID())
            self.assertAlmostEqual(logic.getParameterNode().threshold, 0.8, places=5)

            w.ui.findingsTable.selectRow(0)
            w.on_decide(ACCEPTED)
            w.on_decide(REJECTED)  # the selection moved to the second finding
            first = case.review.findings[0]
            self.assertEqual([f["state"] for f in case.review.findings], [ACCEPTED, REJECTED])
            self.assertEqual(int(logic.edited_label().sum()), first["voxels"])

            w.on_chart()
            self.assertIsNotNone(w._chart_view)
            values = logic.update_chart()
            clicked = vtk.vtkCollection()
            ids = vtk.vtkIdTypeArray()
            ids.InsertNextValue(int(np.argmax(values)))
            clicked.AddItem(ids)
            point = logic.on_chart_selection(vtk.vtkStringArray(), clicked)
            self.assertGreater(case.review.finding_at(case.review.map.ras_to_index(point)[0]), 0)

            w.on_save()
            self._wait_widget(w)
            self.assertIn("Saved label", w.ui.statusLabel.text)
            path, content_type, body = _LabelRecorder.received[-1]
            self.assertTrue(path.startswith("/datastore/label"))
            saved = nifti.read_bytes(multipart.decode_fields(body, content_type)["label"].data)
            self.assertTrue(np.array_equal(saved.array > 0, case.review.finding_mask(first["id"])))
        finally:
            server.shutdown()
        self.delayDisplay("widget review passed")

    def test_scene_close(self):
        self.delayDisplay("AnomalyReview: parameter node and scene close")
        w = self._widget()
        logic = w.logic
        case = synthetic_case()
        w.show_result(case)
        p = logic.getParameterNode()
        self.assertEqual(p.mapVolume.GetID(), logic.map_node.GetID())
        logic.decide(case.review.findings[0]["id"], ACCEPTED)
        logic.case = None
        restored = logic.restore()  # what reloading a saved scene does
        self.assertEqual([f["state"] for f in restored.review.findings][0], ACCEPTED)
        slicer.mrmlScene.Clear()
        self.assertIsNone(logic.case)
        self.assertFalse(w.ui.acceptButton.enabled)
        with self.assertRaises(RuntimeError):
            logic.decide(1, ACCEPTED)
        self.delayDisplay("scene close passed")

    def server_flow(self, url):
        self.delayDisplay(f"AnomalyReview: review flow against {url}")
        logic = self.logic_class()
        models = logic.connect(url)
        name = next(n for n, m in models.items() if not m.is_segmenter)
        self.assertTrue(logic.images)
        job = logic.start_infer(name, image_id=logic.images[0])
        self.assertEqual(logic.wait(job), DONE, str(job.error))
        node = logic.finish_infer(job.result)
        self.assertEqual(node.GetDisplayNode().GetColorNodeID(), display.MAP_COLOR_NODE_ID)
        if job.result.review.findings:
            logic.decide(job.result.review.findings[0]["id"], ACCEPTED)
        job = logic.start_save()
        self.assertEqual(logic.wait(job), DONE, str(job.error))
        self.assertIn("final", logic.client.datastore()["objects"][logic.images[0]]["labels"])
        expected = DONE if name in (logic.info.get("trainers") or {}) else FAILED  # FAILED: "has no trainer"
        job = logic.start_train(name)
        self.assertEqual(logic.wait(job), expected, str(job.error))
        self.delayDisplay("server flow passed")
