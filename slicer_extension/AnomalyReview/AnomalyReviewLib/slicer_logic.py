"""AnomalyReview's parameter node and Logic (needs Slicer; imported by AnomalyReview.py, which
re-exports both). The Logic runs without the widget, from Slicer's Python console or a script:

    logic = AnomalyReviewLogic(); logic.connect("http://127.0.0.1:8000")
    job = logic.start_infer("flair_threshold", image_id="case01_FLAIR"); logic.wait(job)
    logic.finish_infer(job.result); logic.update_threshold(0.98); logic.wait(logic.start_save())
"""
import json
import os
import shutil
import tempfile
import time

import numpy as np
import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLPlotChartNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
from slicer.util import VTKObservationMixin

from . import display, nifti
from . import slicer_scene as scene
from .client import InferResult
from .jobs import Job
from .review import ACCEPTED, Review, same_grid, slicer_to_ijk
from .workflow import ReviewCase, connect_server, next_case, review_snapshot, run_detector, save_snapshot


@parameterNodeWrapper
class AnomalyReviewParameterNode:
    """The module's state, saved with the scene: reloading the scene restores the review."""
    serverUrl: str = "http://127.0.0.1:8000"
    flairVolume: vtkMRMLScalarVolumeNode
    t1Volume: vtkMRMLScalarVolumeNode
    t2Volume: vtkMRMLScalarVolumeNode
    useDatastore: bool = False
    viaSession: bool = True
    autoRun: bool = True
    hideBelowThreshold: bool = True
    opacity: float = 0.5
    threshold: float = 0.0
    minSizeMm3: float = 20.0
    scanVolume: vtkMRMLScalarVolumeNode
    mapVolume: vtkMRMLScalarVolumeNode
    extraMap: vtkMRMLScalarVolumeNode  # the extra map shown instead of the main map (None: the main map)
    candidatesVolume: vtkMRMLLabelMapVolumeNode
    reviewSegmentation: vtkMRMLSegmentationNode
    reviewSegmentId: str = ""
    chart: vtkMRMLPlotChartNode
    imageId: str = ""
    resultModel: str = ""
    resultInfo: str = ""
    decisions: str = "[]"


# ----------------------------------------------------------------------------------------- Logic

class AnomalyReviewLogic(ScriptedLoadableModuleLogic, VTKObservationMixin):
    """Everything the widget does, usable from the Python console without the GUI.

    Long operations return a started AnomalyReviewLib.Job (HTTP runs in a thread); give its result
    to the matching `finish_*` on the main thread (the widget does from its QTimer; `wait(job)` in
    scripts). A scene close drops every node of the review (the actions then refuse to run)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        VTKObservationMixin.__init__(self)
        self.client, self.info, self.models, self.images, self.strategies = None, {}, {}, [], []
        self.case = None
        self._tmp = None
        self._window = None
        self._drop_nodes()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.on_scene_close)

    def getParameterNode(self):
        return AnomalyReviewParameterNode(ScriptedLoadableModuleLogic.getParameterNode(self))

    def _drop_nodes(self):
        self.scan_node = self.map_node = self.candidates_node = self.segmentation_node = None
        self.segment_id = None
        self.extra_nodes = {}
        self.chart_nodes = None

    def on_scene_close(self, caller=None, event=None):
        """The scene is closing: forget its nodes and the review, remove the downloaded scans."""
        self.case = None
        self._drop_nodes()
        self.cleanup()

    def cleanup(self):
        if self._tmp and os.path.isdir(self._tmp):
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None

    def tmp(self):
        if not self._tmp:
            self._tmp = tempfile.mkdtemp(prefix="AnomalyReview_")
        return self._tmp

    # -- server
    def start_connect(self, url, token=None):
        return Job(connect_server, url, token, name="connect").start()

    def finish_connect(self, result):
        self.client, self.info, self.models = result["client"], result["info"], result["models"]
        self.images, self.strategies = result["images"], result["strategies"]
        self.getParameterNode().serverUrl = self.client.url
        return result

    def connect(self, url, token=None):
        """Blocking connect for the Python console (the widget uses start_connect)."""
        return self.finish_connect(connect_server(None, url, token))["models"]

    def _require_client(self):
        if self.client is None:
            raise RuntimeError("not connected to a server: connect first")

    @staticmethod
    def wait(job, timeout=3600):
        """Poll a job while keeping Slicer responsive (scripts and the self-test)."""
        deadline = time.time() + timeout
        while job.running and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.02)
        if job.running:
            job.cancel()
        return job.poll()

    # -- jobs
    def start_infer(self, model, image_id=None, volumes=None, params=None, via_session=True, fetch_scan=None):
        """Run `model` on a datastore image (the scan is fetched in the same job unless `fetch_scan`
        is False) or on loaded volumes ({"FLAIR": node, ...}; copied in memory, nodes untouched)."""
        self._require_client()
        files = {m: scene.volume_nifti_bytes(n) for m, n in (volumes or {}).items() if n is not None} or None
        fetch = bool(image_id) if fetch_scan is None else bool(fetch_scan)
        return Job(run_detector, self.client, model, image=image_id, files=files, params=params,
                   via_session=via_session, fetch_scan=fetch, name=f"infer-{model}").start()

    def start_next_case(self, strategy="random"):
        self._require_client()
        return Job(next_case, self.client, strategy, name="next-case").start()

    def start_train(self, model):
        self._require_client()
        if not model:
            raise ValueError("train: no model selected; connect, then choose the model to train in 'Model'")
        return Job(lambda ctx: self.client.train(model, ctx=ctx), name="train").start()

    def start_save(self):
        """The label and its summary are frozen now, on the main thread; only the upload runs in the job."""
        self._require_client()
        snapshot = review_snapshot(self._require_case(), self.edited_label())
        return Job(save_snapshot, self.client, snapshot, name="save").start()

    # -- showing a result
    def load_scan(self, name, data):
        path = os.path.join(self.tmp(), os.path.basename(name))
        with open(path, "wb") as f:
            f.write(data)
        self.scan_node = slicer.util.loadVolume(path, {"name": os.path.basename(name).split(".")[0]})
        return self.scan_node

    def finish_infer(self, case, scan_node=None):
        """Show a ReviewCase: coloured map over the scan, findings as outlines, editable segmentation, chart."""
        res = case.result
        if res.map is None:
            raise ValueError("the server returned no map (output=json?): nothing to show")
        self.clear_result_nodes()
        if case.scan:
            scan_node = self.load_scan(*case.scan)
        self.scan_node = scan_node or self.scan_node
        self.case = case
        model = self.models.get(res.model)
        if model is not None and model.is_segmenter:
            self._show_segmenter(case, model)
        else:
            if case.review is None:  # a map without a mask: threshold it here (server threshold or 99th centile)
                case.review = Review(res.map, res.info)
            self._show_detector(case)
        p = self.getParameterNode()
        p.scanVolume, p.mapVolume, p.candidatesVolume = self.scan_node, self.map_node, self.candidates_node
        p.reviewSegmentation, p.reviewSegmentId = self.segmentation_node, self.segment_id or ""
        p.imageId, p.resultModel, p.resultInfo = case.image_id or "", res.model, json.dumps(res.info, default=str)
        self._store_decisions()
        return self.map_node

    def _add_extras(self, res):
        for name in display.extra_map_names(res.extras):  # the brain mask only feeds slice scores
            image = res.extras[name]
            node = scene.add_volume(image, f"{res.model} {name}", display.color_node_for(name), extra=name)
            scene.show_map(node, display.extra_window(image.array))
            self.extra_nodes[name] = node

    # -- extra maps (a fusion's member_<name>, the segmenter's uncertainty, ...)
    def extra_map_names(self):
        return list(self.extra_nodes)

    def shown_extra(self):
        """Name of the extra map shown in place of the main map, None for the main map."""
        node = self.getParameterNode().extraMap
        return next((n for n, x in self.extra_nodes.items() if x is node), None)

    def show_extra(self, name=None):
        """Show the extra map `name` as the coloured layer (None or "": the main map again). The threshold,
        the findings' outlines and the chart stay on the main map. Returns the node shown."""
        if name and name not in self.extra_nodes:
            raise ValueError(f"extra map: expected one of {self.extra_map_names() or 'none (this result has none)'}"
                             f", received {name!r}")
        node = self.extra_nodes[name] if name else self.map_node
        if node is None:
            return None
        self.getParameterNode().extraMap = node if name else None
        scene.show_foreground(node)
        return node

    def _show_detector(self, case):
        res, review = case.result, case.review
        self.map_node = scene.add_volume(res.map, f"{res.model} anomaly map", display.MAP_COLOR_NODE_ID)
        self._add_extras(res)
        self.getParameterNode().extraMap = None
        self.segmentation_node, (self.segment_id,) = scene.add_segmentation(
            f"{res.model} reviewed", self.map_node, [(display.REVIEW_SEGMENT_NAME, display.REVIEW_SEGMENT_COLOR)])
        self.candidates_node = scene.add_volume(res.map.with_array(review.labels.astype(np.int16)),
                                                f"{res.model} candidates", label=True)
        self._window = review.range
        self.update_threshold()
        scene.show_layers(self.scan_node, self.map_node, self.candidates_node, self.getParameterNode().opacity)

    def _show_segmenter(self, case, model):
        """The segmenter's label as segments named from the server's labels; its uncertainty map coloured."""
        res = case.result
        case.review = None  # its result is the segmentation itself: edited in the Segment Editor, then saved
        self.map_node = scene.add_volume(res.map, f"{res.model} probability", display.MAP_COLOR_NODE_ID)
        self._add_extras(res)
        mask = res.mask.array if res.mask is not None else (res.map.array > (res.threshold or 0.5))
        names = display.label_names(model.labels)
        values = display.label_values(mask) or [1]
        self.segmentation_node, ids = scene.add_segmentation(
            f"{res.model} segmentation", self.map_node, [(display.segment_name(v, names), None) for v in values])
        for v, sid in zip(values, ids):
            scene.set_segment_array(self.segmentation_node, sid, self.map_node, mask == v)
        self.segment_id = ids[0]
        arr = slicer.util.arrayFromVolume(self.map_node)
        self._window = (float(np.nanmin(arr)), float(np.nanmax(arr)))
        scene.show_map(self.map_node, self._window, None)
        overlay = self.extra_nodes.get("uncertainty")  # shown first; the extra-map selector goes back to the map
        self.getParameterNode().extraMap = overlay
        scene.show_layers(self.scan_node, overlay or self.map_node, None, self.getParameterNode().opacity)

    def restore(self):
        """Rebuild the review from the parameter node (a saved scene was loaded); None if there is none."""
        p = self.getParameterNode()
        if p.mapVolume is None or not p.resultInfo:
            return None
        info = json.loads(p.resultInfo)
        amap = nifti.NiftiImage(np.ascontiguousarray(slicer_to_ijk(slicer.util.arrayFromVolume(p.mapVolume)),
                                                     np.float32), scene.volume_affine(p.mapVolume))
        review = None
        if p.candidatesVolume is not None:
            review = Review(amap, info)
            review.rethreshold(p.threshold, p.minSizeMm3)
            review.restore_decisions(json.loads(p.decisions or "[]"))
            self._window = review.range
        self.case = ReviewCase(InferResult(p.resultModel, info, amap), review, p.imageId or None)
        self.scan_node, self.map_node, self.candidates_node = p.scanVolume, p.mapVolume, p.candidatesVolume
        self.segmentation_node, self.segment_id = p.reviewSegmentation, p.reviewSegmentId or None
        self.extra_nodes = scene.extra_volumes()
        return self.case

    def clear_result_nodes(self):
        scene.remove_nodes([self.map_node, self.candidates_node, self.segmentation_node, *self.extra_nodes.values(),
                            *(self.chart_nodes or ())])
        scan = self.scan_node
        self._drop_nodes()
        self.scan_node = scan

    def output_node_ids(self):
        return scene.output_node_ids()

    # -- state checks
    def has_case(self):
        return self.case is not None and self.segmentation_node is not None and \
            slicer.mrmlScene.IsNodePresent(self.segmentation_node)

    def _require_case(self):
        if not self.has_case():
            raise RuntimeError("no result under review: run a detector (closing the scene ends the review)")
        return self.case

    def _require_review(self):
        case = self._require_case()
        if case.review is None:
            raise RuntimeError("this result has no findings to threshold (a segmenter's segmentation is edited "
                               "in the Segment Editor)")
        return case.review

    def _store_decisions(self):
        if self.case is not None and self.case.review is not None:
            self.getParameterNode().decisions = json.dumps(self.case.review.decisions())

    # -- display
    def set_window(self, lo, hi):
        self._window = (float(lo), float(hi))
        self._refresh_map()

    def set_colors(self, color_node_id):
        if self.map_node is not None:
            scene.show_map(self.map_node, self._window, self._display_threshold(), self._hide_below(),
                           color_node_id=color_node_id)

    def set_opacity(self, opacity):
        self.getParameterNode().opacity = float(opacity)
        scene.set_overlay_opacity(opacity)

    def set_hide_below_threshold(self, hide):
        self.getParameterNode().hideBelowThreshold = bool(hide)
        self._refresh_map()

    def _hide_below(self):
        return self.getParameterNode().hideBelowThreshold

    def _display_threshold(self):
        return self.case.review.threshold if self.case is not None and self.case.review is not None else None

    def _refresh_map(self):
        if self.map_node is not None and self._window is not None:
            scene.show_map(self.map_node, self._window, self._display_threshold(), self._hide_below())

    def update_threshold(self, threshold=None, min_component_mm3=None):
        """Re-threshold the float map here and refresh candidates, map display, parameter node and chart."""
        review = self._require_review()
        review.rethreshold(threshold, min_component_mm3)
        scene.set_label_array(self.candidates_node, review.labels.astype(np.int16))
        self._refresh_map()
        p = self.getParameterNode()
        p.threshold, p.minSizeMm3 = review.threshold, review.min_component_mm3
        self._store_decisions()
        self.update_chart()
        return review.findings

    def update_chart(self):
        values = self._require_review().slice_scores()
        if self.chart_nodes is None:
            self.chart_nodes = scene.add_chart("slice (superior axis)", "anomaly score (Oliinyk et al.)")
            self.getParameterNode().chart = self.chart_nodes[2]
        scene.set_chart_values(self.chart_nodes[0], values)
        return values

    def show_chart(self):
        """Show the chart in the layout; returns the qMRMLPlotView to connect dataSelected to."""
        self.update_chart()
        return scene.show_chart(self.chart_nodes[2])

    def on_chart_selection(self, series_ids=None, selection=None):
        """qMRMLPlotView dataSelected(vtkStringArray*, vtkCollection*): jump to the clicked slice."""
        index = display.chart_point(scene.selected_points(selection)) if selection is not None else None
        return None if index is None else self.jump_to_slice(index)

    # -- findings
    def jump_to_finding(self, finding_id):
        f = self._require_review().finding(finding_id)
        scene.jump_to(f["centroid_ras"])
        return f

    def jump_to_slice(self, slice_index):
        point = self._require_review().slice_jump_point(int(slice_index))
        scene.jump_to(point)
        return point

    def review_segment_id(self):
        """The segment Accept / Reject write to, by ID (a rename keeps it); re-created if deleted."""
        self._require_case()
        if self.segment_id not in scene.segment_ids(self.segmentation_node):
            self.segment_id = self.segmentation_node.GetSegmentation().AddEmptySegment(
                "", display.REVIEW_SEGMENT_NAME, list(display.REVIEW_SEGMENT_COLOR))
            self.getParameterNode().reviewSegmentId = self.segment_id
        return self.segment_id

    def edited_label(self):
        """The label that is saved: the union of every segment of the review segmentation, (i, j, k)."""
        case = self._require_case()
        return scene.union_of_segments(self.segmentation_node, self.map_node, case.result.map.shape[:3])

    def decide(self, finding_id, state):
        """Accept / reject / reset one finding and update the review segment accordingly."""
        review = self._require_review()
        review.decide(finding_id, state)
        sid = self.review_segment_id()
        current = scene.segment_array(self.segmentation_node, sid, self.map_node)
        if current is None:
            current = np.zeros(review.labels.shape, np.uint8)
        label = review.apply_decision(current, finding_id, accepted=(state == ACCEPTED))
        scene.set_segment_array(self.segmentation_node, sid, self.map_node, label)
        self._store_decisions()
        return review.finding(finding_id)

    def check_grid(self):
        """Whether the scan shown shares the map's grid (the label is saved in the map's)."""
        if self.scan_node is None or self.case is None:
            return True
        shape = slicer.util.arrayFromVolume(self.scan_node).shape[::-1]
        return same_grid(self.case.result.map, scene.volume_affine(self.scan_node), shape)

    def screenshot(self, path):
        import ScreenCapture
        ScreenCapture.ScreenCaptureLogic().captureImageFromView(None, path)
        return path
