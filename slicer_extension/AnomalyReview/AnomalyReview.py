"""Anomaly Review: 3D Slicer module for uad-label's anomaly detectors served by MONAI Label.

Thin glue: every behaviour (HTTP, multipart, NIfTI, thresholding, findings, review state, label
assembly, background jobs) lives in AnomalyReviewLib, which imports without Slicer and is tested
outside it against the real server. This file only moves arrays in and out of MRML nodes and
wires widgets.
"""
import logging
import os
import sys
import tempfile
import time

import numpy as np

import ctk
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from AnomalyReviewLib import (ACCEPTED, CANCELLED, DONE, FAILED, REJECTED, Client, InferResult, Job,  # noqa: E402
                              Review, ServerError, changed_params, next_case, nifti, run_detector, save_review)
from AnomalyReviewLib.review import ijk_to_slicer, same_grid, slicer_to_ijk  # noqa: E402
from AnomalyReviewLib.workflow import MODALITIES, ReviewCase  # noqa: E402

SEGMENT_NAME = "anomaly"
DEFAULT_COLORS = ("vtkMRMLColorTableNodeFileColdToHotRainbow.txt", "vtkMRMLColorTableNodeFileInferno.txt",
                  "vtkMRMLColorTableNodeRainbow")


class AnomalyReview(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Anomaly Review"
        self.parent.categories = ["Active Learning"]
        self.parent.dependencies = []
        self.parent.contributors = ["uad-label"]
        self.parent.helpText = (
            "Review unsupervised anomaly detection results for brain MRI from a uad-label (MONAI Label) server: "
            "continuous anomaly map, live threshold, findings to accept or reject, per-slice scores, final label "
            "saved to the datastore. See docs/slicer.md of uad-label.")
        self.parent.acknowledgementText = (
            "Per-slice anomaly score after Oliinyk et al.; FLAIR baseline after Meissen et al.; "
            "server built on MONAI Label.")


# ----------------------------------------------------------------------------------------- Logic

class AnomalyReviewLogic(ScriptedLoadableModuleLogic):
    """Everything the widget does, callable from the Python console or a script without the GUI.

    Long operations return a started AnomalyReviewLib.Job (the work runs in a thread); call
    `finish_*` with the job's result on the main thread (the widget does so from its QTimer;
    `wait(job)` does so in scripts and tests)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.client = None
        self.info = {}
        self.models = {}
        self.case = None  # ReviewCase
        self.model_name = None
        self.scan_node = None
        self.map_node = None
        self.candidates_node = None
        self.segmentation_node = None
        self.extra_nodes = {}
        self.chart_nodes = None
        self.tmp = tempfile.mkdtemp(prefix="AnomalyReview_")

    # -- server
    def connect(self, url, token=None):
        self.client = Client(url, token or None)
        self.info = self.client.info()
        self.models = self.client.models(self.info)
        return self.models

    def strategies(self):
        return self.client.strategies(self.info) if self.client else []

    def datastore_images(self):
        return self.client.images() if self.client else []

    # -- background work
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

    def start_infer(self, model, image_id=None, volumes=None, params=None, via_session=True):
        """Run `model` on a datastore image or on loaded volumes ({"FLAIR": node, "T1": node, ...}).
        Volumes are written to temporary files here (MRML access stays on the main thread)."""
        if self.client is None:
            raise RuntimeError("not connected to a server")
        files = None
        if volumes:
            files = {}
            for modality, node in volumes.items():
                if node is None:
                    continue
                path = os.path.join(self.tmp, f"scan_{modality}.nii.gz")
                if not slicer.util.saveNode(node, path):
                    raise RuntimeError(f"could not write {node.GetName()} to {path}")
                files[modality] = path
        self.model_name = model
        return Job(run_detector, self.client, model, image=image_id, files=files, params=params,
                   via_session=via_session, name=f"infer-{model}").start()

    def start_next_case(self, strategy="random"):
        return Job(next_case, self.client, strategy, name="next-case").start()

    def start_train(self, model):
        return Job(lambda ctx: self.client.train(model, ctx=ctx), name="train").start()

    def start_save(self):
        edited = self.edited_label()
        return Job(save_review, self.client, self.case, edited, name="save").start()

    # -- loading into the scene
    def load_scan(self, name, data):
        path = os.path.join(self.tmp, os.path.basename(name))
        with open(path, "wb") as f:
            f.write(data)
        self.scan_node = slicer.util.loadVolume(path, {"name": os.path.basename(name).split(".")[0]})
        return self.scan_node

    def _load_float(self, data, name):
        path = os.path.join(self.tmp, f"{name}.nii.gz")
        with open(path, "wb") as f:
            f.write(data)
        node = slicer.util.loadVolume(path, {"name": name, "show": False})  # a scalar volume: float kept
        return node

    def finish_infer(self, case, scan_node=None):
        """Show a ReviewCase: map over the scan, candidates, findings segmentation, chart."""
        self.case = case
        if scan_node is not None:
            self.scan_node = scan_node
        res = case.result
        tag = res.model
        self.clear_result_nodes()
        if res.map is None:
            raise ValueError("the server returned no map (output=json?)")
        model = self.models.get(tag)
        if model is not None and model.is_segmenter:
            return self._show_segmentation(res)
        self.map_node = self._load_float(res.files["image"], f"{tag} anomaly map")
        self.set_map_display(case.review.range[0], case.review.range[1], case.review.threshold, 0.5)
        self.candidates_node = slicer.modules.volumes.logic().CreateAndAddLabelVolume(
            slicer.mrmlScene, self.map_node, f"{tag} candidates")
        self.segmentation_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{tag} reviewed")
        self.segmentation_node.CreateDefaultDisplayNodes()
        self.segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(self.map_node)
        self.segmentation_node.GetSegmentation().AddEmptySegment(SEGMENT_NAME, SEGMENT_NAME, [0.1, 0.9, 0.2])
        for name, data in res.files.items():
            if name not in ("image", "mask", "brain"):  # the brain mask only feeds slice scores
                self.extra_nodes[name] = self._load_float(data, f"{tag} {name}")
        self.update_threshold()
        slicer.util.setSliceViewerLayers(background=self.scan_node, foreground=self.map_node,
                                         label=self.candidates_node, foregroundOpacity=0.5)
        return self.map_node

    def _show_segmentation(self, res):
        """A segmenter: the segmentation as a segmentation node, the uncertainty as a float overlay."""
        path = os.path.join(self.tmp, f"{res.model}_segmentation.nii.gz")
        with open(path, "wb") as f:
            f.write(res.files["image"])
        label = slicer.util.loadLabelVolume(path, {"name": f"{res.model} labels", "show": False})
        self.segmentation_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{res.model} segmentation")
        self.segmentation_node.CreateDefaultDisplayNodes()
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(label, self.segmentation_node)
        slicer.mrmlScene.RemoveNode(label)
        for name, data in res.files.items():
            if name not in ("image", "mask", "brain"):  # the brain mask only feeds slice scores
                self.extra_nodes[name] = self._load_float(data, f"{res.model} {name}")
        overlay = self.extra_nodes.get("uncertainty") or next(iter(self.extra_nodes.values()), None)
        if overlay is not None:
            self.map_node = overlay
            arr = slicer.util.arrayFromVolume(overlay)
            self.set_map_display(float(arr.min()), float(arr.max()), None, 0.4)
        slicer.util.setSliceViewerLayers(background=self.scan_node, foreground=overlay, foregroundOpacity=0.4)
        return self.segmentation_node

    def clear_result_nodes(self):
        for node in [self.map_node, self.candidates_node, self.segmentation_node, *self.extra_nodes.values()]:
            if node is not None and slicer.mrmlScene.IsNodePresent(node):
                slicer.mrmlScene.RemoveNode(node)
        self.map_node = self.candidates_node = self.segmentation_node = None
        self.extra_nodes = {}

    # -- display
    def set_map_display(self, window_min, window_max, threshold=None, opacity=None, color_node_id=None):
        d = self.map_node.GetDisplayNode() if self.map_node else None
        if d is None:
            return
        if color_node_id is None and not d.GetColorNodeID():
            color_node_id = next((c for c in DEFAULT_COLORS if slicer.mrmlScene.GetNodeByID(c)), None)
        if color_node_id:
            d.SetAndObserveColorNodeID(color_node_id)
        d.AutoWindowLevelOff()
        d.SetWindowLevelMinMax(window_min, window_max)
        if threshold is not None:  # voxels under the threshold are transparent in the overlay
            d.SetApplyThreshold(1)
            d.SetThreshold(threshold, max(window_max, threshold))
        if opacity is not None:
            for name in ("Red", "Yellow", "Green"):
                w = slicer.app.layoutManager().sliceWidget(name) if slicer.app.layoutManager() else None
                if w is not None:
                    w.sliceLogic().GetSliceCompositeNode().SetForegroundOpacity(opacity)

    def update_threshold(self, threshold=None, min_component_mm3=None):
        """Re-threshold the float map on the client and refresh candidates, findings and chart."""
        review = self.case.review
        review.rethreshold(threshold, min_component_mm3)
        slicer.util.updateVolumeFromArray(self.candidates_node, ijk_to_slicer(review.labels.astype(np.int16)))
        self.candidates_node.CopyOrientation(self.map_node)
        d = self.map_node.GetDisplayNode()
        if d is not None:
            d.SetThreshold(review.threshold, max(review.range[1], review.threshold))
        self.update_chart()
        return review.findings

    def update_chart(self):
        review = self.case.review
        values = review.slice_scores()
        if self.chart_nodes is None:
            table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "Anomaly slice scores")
            series = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", "slice score")
            chart = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", "Anomaly slice scores")
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName("slice")
            series.SetYColumnName("score")
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
            chart.SetXAxisTitle("slice (superior axis)")
            chart.SetYAxisTitle("anomaly score (Oliinyk et al.)")
            self.chart_nodes = (table, series, chart)
        table = self.chart_nodes[0]
        t = vtk.vtkTable()
        xs, ys = vtk.vtkFloatArray(), vtk.vtkFloatArray()
        xs.SetName("slice")
        ys.SetName("score")
        for i, v in enumerate(values):
            xs.InsertNextValue(i)
            ys.InsertNextValue(float(v))
        t.AddColumn(xs)
        t.AddColumn(ys)
        table.SetAndObserveTable(t)
        return values

    def show_chart(self):
        if self.chart_nodes is not None:
            slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalPlotView)
            slicer.modules.plots.logic().ShowChartInLayout(self.chart_nodes[2])

    # -- findings
    def jump_to(self, ras):
        slicer.modules.markups.logic().JumpSlicesToLocation(float(ras[0]), float(ras[1]), float(ras[2]), True)

    def jump_to_finding(self, finding_id):
        f = self.case.review.finding(finding_id)
        self.jump_to(f["centroid_ras"])
        return f

    def jump_to_slice(self, slice_index):
        point = self.case.review.slice_jump_point(int(slice_index))
        self.jump_to(point)
        return point

    def _segment_id(self):
        return self.segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(SEGMENT_NAME)

    def edited_label(self):
        """The reviewed segmentation (accepted findings as edited in the Segment Editor), (i, j, k)."""
        if self.segmentation_node is None:
            return None
        arr = slicer.util.arrayFromSegmentBinaryLabelmap(self.segmentation_node, self._segment_id(), self.map_node)
        if arr is None:
            return np.zeros(self.case.review.labels.shape, np.uint8)
        return slicer_to_ijk(arr)

    def decide(self, finding_id, state):
        """Accept / reject / reset one finding and update the editable segmentation accordingly."""
        review = self.case.review
        review.decide(finding_id, state)
        label = review.apply_decision(self.edited_label(), finding_id, accepted=(state == ACCEPTED))
        slicer.util.updateSegmentBinaryLabelmapFromArray(ijk_to_slicer(label), self.segmentation_node,
                                                         self._segment_id(), self.map_node)
        return review.finding(finding_id)

    def check_grid(self):
        """Whether the scan shown shares the map's grid (the label is saved in the map's)."""
        if self.scan_node is None or self.case is None:
            return True
        m = vtk.vtkMatrix4x4()
        self.scan_node.GetIJKToRASMatrix(m)
        aff = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
        shape = slicer.util.arrayFromVolume(self.scan_node).shape[::-1]
        return same_grid(self.case.review.map, aff, shape)

    def screenshot(self, path):
        import ScreenCapture
        ScreenCapture.ScreenCaptureLogic().captureImageFromView(None, path)
        return path


# ----------------------------------------------------------------------------------------- Widget

class AnomalyReviewWidget(ScriptedLoadableModuleWidget):
    POLL_MS = 100

    def _section(self, title: str, layout_class=None):
        """A collapsible section of the module panel; returns its layout (a form unless given)."""
        box = ctk.ctkCollapsibleButton()
        box.text = title
        self.layout.addWidget(box)
        return (layout_class or qt.QFormLayout)(box)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = AnomalyReviewLogic()
        self.job = None
        self.on_done = None
        self.timer = qt.QTimer()
        self.timer.setInterval(self.POLL_MS)
        self.timer.connect("timeout()", self.poll)
        self.rethreshold_timer = qt.QTimer()  # debounce the slider: re-threshold once it rests
        self.rethreshold_timer.setSingleShot(True)
        self.rethreshold_timer.setInterval(150)
        self.rethreshold_timer.connect("timeout()", self.apply_threshold)
        settings = qt.QSettings()

        # server
        form = self._section("Server")
        self.url = qt.QLineEdit(settings.value("AnomalyReview/url", "http://127.0.0.1:8000"))
        self.token = qt.QLineEdit()
        self.token.setEchoMode(qt.QLineEdit.Password)
        self.token.placeholderText = "optional bearer token (MONAI Label auth)"
        self.connect_button = qt.QPushButton("Connect")
        form.addRow("URL:", self.url)
        form.addRow("Token:", self.token)
        form.addRow(self.connect_button)
        self.model = qt.QComboBox()
        self.description = qt.QLabel()
        self.description.wordWrap = True
        self.options = qt.QTableWidget(0, 3)
        self.options.setHorizontalHeaderLabels(["parameter", "value", "help"])
        self.options.horizontalHeader().setStretchLastSection(True)
        form.addRow("Model:", self.model)
        form.addRow(self.description)
        form.addRow(self.options)

        # inputs
        form = self._section("Run")
        self.inputs = {}
        for modality in MODALITIES:
            combo = slicer.qMRMLNodeComboBox()
            combo.nodeTypes = ["vtkMRMLScalarVolumeNode"]
            combo.noneEnabled = modality != "FLAIR"
            combo.addEnabled = combo.removeEnabled = False
            combo.setMRMLScene(slicer.mrmlScene)
            self.inputs[modality] = combo
            form.addRow(f"{modality}:", combo)
        self.use_datastore = qt.QCheckBox("Datastore image instead of the loaded volumes:")
        self.datastore_image = qt.QComboBox()
        self.via_session = qt.QCheckBox("upload through a MONAI Label session")
        self.via_session.checked = True
        form.addRow(self.use_datastore, self.datastore_image)
        form.addRow(self.via_session)
        row = qt.QHBoxLayout()
        self.run_button = qt.QPushButton("Run detector")
        self.cancel_button = qt.QPushButton("Cancel")
        self.cancel_button.enabled = False
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        self.progress = qt.QProgressBar()
        self.status = qt.QLabel("Not connected")
        self.status.wordWrap = True
        form.addRow(self.progress)
        form.addRow(self.status)

        # display
        form = self._section("Anomaly map")
        self.threshold = ctk.ctkSliderWidget()
        self.threshold.decimals = 4
        self.threshold.toolTip = "Re-thresholds the float map on this computer; starts at the server's default"
        self.min_size = ctk.ctkSliderWidget()
        self.min_size.minimum, self.min_size.maximum, self.min_size.singleStep = 0, 500, 1
        self.min_size.suffix = " mm³"
        self.min_size.toolTip = "Findings of at most this volume are dropped"
        self.reset_threshold = qt.QPushButton("Server default")
        self.opacity = ctk.ctkSliderWidget()
        self.opacity.minimum, self.opacity.maximum, self.opacity.singleStep, self.opacity.value = 0, 1, 0.05, 0.5
        self.window = ctk.ctkRangeWidget()
        self.window.decimals = 4
        self.colors = slicer.qMRMLColorTableComboBox()
        self.colors.setMRMLScene(slicer.mrmlScene)
        form.addRow("Threshold:", self.threshold)
        form.addRow("Min. size:", self.min_size)
        form.addRow(self.reset_threshold)
        form.addRow("Opacity:", self.opacity)
        form.addRow("Window:", self.window)
        form.addRow("Colours:", self.colors)

        # findings
        vbox = self._section("Findings", qt.QVBoxLayout)
        self.findings = qt.QTableWidget(0, 7)
        self.findings.setHorizontalHeaderLabels(["id", "state", "volume (mL)", "max", "mean", "centroid RAS", ""])
        self.findings.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.findings.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        vbox.addWidget(self.findings)
        row = qt.QHBoxLayout()
        self.accept_button = qt.QPushButton("Accept")
        self.reject_button = qt.QPushButton("Reject")
        self.undecide_button = qt.QPushButton("Undecided")
        self.chart_button = qt.QPushButton("Slice-score chart")
        for b in (self.accept_button, self.reject_button, self.undecide_button, self.chart_button):
            row.addWidget(b)
        vbox.addLayout(row)
        self.counts = qt.QLabel()
        vbox.addWidget(self.counts)

        # case
        form = self._section("Case")
        self.save_button = qt.QPushButton("Save reviewed segmentation as final label")
        self.strategy = qt.QComboBox()
        self.strategy.editable = True
        self.next_button = qt.QPushButton("Next case")
        self.auto_run = qt.QCheckBox("run the detector on it")
        self.auto_run.checked = True
        self.train_button = qt.QPushButton("Start training")
        self.screenshot_button = qt.QPushButton("Screenshot (PNG)...")
        form.addRow(self.save_button)
        form.addRow("Strategy:", self.strategy)
        form.addRow(self.next_button, self.auto_run)
        form.addRow(self.train_button)
        form.addRow(self.screenshot_button)
        self.layout.addStretch(1)

        self.connect_button.connect("clicked()", self.on_connect)
        self.model.connect("currentIndexChanged(int)", self.on_model)
        self.run_button.connect("clicked()", self.on_run)
        self.cancel_button.connect("clicked()", self.on_cancel)
        self.threshold.connect("valueChanged(double)", lambda v: self.rethreshold_timer.start())
        self.min_size.connect("valueChanged(double)", lambda v: self.rethreshold_timer.start())
        self.reset_threshold.connect("clicked()", self.on_reset_threshold)
        self.opacity.connect("valueChanged(double)", lambda v: self.logic.set_map_display(self.window.minimumValue, self.window.maximumValue, None, v)
                             if self.logic.map_node else None)
        self.window.connect("valuesChanged(double,double)", lambda lo, hi: self.logic.set_map_display(lo, hi)
                            if self.logic.map_node else None)
        self.colors.connect("currentNodeChanged(vtkMRMLNode*)", self.on_colors)
        self.findings.connect("cellClicked(int,int)", self.on_finding_clicked)
        self.accept_button.connect("clicked()", lambda: self.on_decide(ACCEPTED))
        self.reject_button.connect("clicked()", lambda: self.on_decide(REJECTED))
        self.undecide_button.connect("clicked()", lambda: self.on_decide("pending"))
        self.chart_button.connect("clicked()", self.on_chart)
        self.save_button.connect("clicked()", self.on_save)
        self.next_button.connect("clicked()", self.on_next)
        self.train_button.connect("clicked()", self.on_train)
        self.screenshot_button.connect("clicked()", self.on_screenshot)
        self.update_buttons()

    def cleanup(self):
        self.timer.stop()
        if self.job is not None:
            self.job.cancel()

    # -- jobs
    def start(self, job, on_done, what):
        self.job, self.on_done = job, on_done
        self.status.text = f"{what}..."
        self.progress.setRange(0, 0)
        self.timer.start()
        self.update_buttons()

    def poll(self):
        job = self.job
        if job is None:
            self.timer.stop()
            return
        status = job.poll()
        fraction, message = job.progress
        if job.running:
            if fraction is None:
                self.progress.setRange(0, 0)  # busy indicator while the server works
            else:
                self.progress.setRange(0, 1000)
                self.progress.setValue(int(fraction * 1000))
            self.status.text = f"{message or job.name} ({job.elapsed:.0f} s)"
            return
        self.timer.stop()
        self.job = None
        self.progress.setRange(0, 1000)
        self.progress.setValue(1000 if status == DONE else 0)
        if status == DONE:
            self.status.text = f"{job.name}: done in {job.elapsed:.1f} s"
            try:
                self.on_done(job.result)
            except Exception as exc:  # a display problem must not leave the UI half-updated silently
                logging.exception("AnomalyReview")
                self.status.text = f"{job.name}: {exc}"
        elif status == FAILED:
            self.status.text = f"{job.name} failed: {job.error}"
            if not isinstance(job.error, ServerError):
                logging.error(job.traceback)
        elif status == CANCELLED:
            self.status.text = f"{job.name}: cancelled"
        self.update_buttons()

    def on_cancel(self):
        if self.job is not None:
            self.job.cancel()
            self.poll()

    def update_buttons(self):
        busy = self.job is not None
        connected = self.logic.client is not None
        has_case = self.logic.case is not None and self.logic.case.review is not None
        self.cancel_button.enabled = busy
        for b in (self.run_button, self.next_button, self.train_button):
            b.enabled = connected and not busy
        self.save_button.enabled = connected and not busy and has_case and bool(self.logic.case.image_id)
        for b in (self.accept_button, self.reject_button, self.undecide_button, self.chart_button):
            b.enabled = has_case

    # -- server
    def on_connect(self):
        try:
            models = self.logic.connect(self.url.text, self.token.text)
        except Exception as exc:
            self.status.text = f"Could not connect: {exc}"
            self.logic.client = None
            self.update_buttons()
            return
        qt.QSettings().setValue("AnomalyReview/url", self.url.text)
        self.model.clear()
        for name, m in models.items():
            self.model.addItem(f"{name} ({m.type})", name)
        self.strategy.clear()
        for s in self.logic.strategies():
            self.strategy.addItem(s)
        self.datastore_image.clear()
        try:
            for image in self.logic.datastore_images():
                self.datastore_image.addItem(image)
        except ServerError as exc:
            self.status.text = f"Datastore: {exc}"
        self.status.text = f"Connected: {self.logic.info.get('name', '')} {self.logic.info.get('version', '')}, " \
                           f"{len(models)} model(s)"
        self.update_buttons()

    def current_model(self):
        return self.logic.models.get(self.model.currentData)

    def on_model(self, _):
        m = self.current_model()
        self.options.setRowCount(0)
        if m is None:
            return
        self.description.text = m.description
        for name, spec in m.params.items():
            r = self.options.rowCount
            self.options.insertRow(r)
            key = qt.QTableWidgetItem(name)
            key.setFlags(key.flags() & ~qt.Qt.ItemIsEditable)
            self.options.setItem(r, 0, key)
            default = spec.get("default")
            self.options.setItem(r, 1, qt.QTableWidgetItem("" if default is None else str(default)))
            self.options.setItem(r, 2, qt.QTableWidgetItem(f"{spec.get('type', '')}: {spec.get('help', '')}"))

    def edited_params(self):
        edits = {self.options.item(r, 0).text(): self.options.item(r, 1).text() for r in range(self.options.rowCount)}
        return changed_params(self.current_model(), edits)

    # -- run
    def on_run(self):
        m = self.current_model()
        if m is None:
            self.status.text = "Choose a model"
            return
        try:
            params = self.edited_params()
            if self.use_datastore.checked:
                image = self.datastore_image.currentText
                job = self.logic.start_infer(m.name, image_id=image, params=params)
                scan = None
            else:
                volumes = {mod: c.currentNode() for mod, c in self.inputs.items() if c.currentNode() is not None}
                if "FLAIR" not in volumes:
                    self.status.text = "Choose the FLAIR volume (or a datastore image)"
                    return
                scan = volumes["FLAIR"]
                job = self.logic.start_infer(m.name, volumes=volumes, params=params,
                                             via_session=self.via_session.checked)
        except Exception as exc:
            self.status.text = f"Cannot run: {exc}"
            return

        def done(case):
            if scan is None and case.image_id:  # datastore image: bring the scan itself too
                name, data = self.logic.client.download_image(case.image_id)
                self.logic.load_scan(name, data)
            self.logic.finish_infer(case, scan)
            self.show_case()

        self.start(job, done, f"Running {m.name}")

    def show_case(self):
        case = self.logic.case
        review = case.review
        if review is None:
            self.findings.setRowCount(0)
            self.update_buttons()
            return
        lo, hi, step = review.slider_range()
        for w in (self.threshold, self.min_size):
            w.blockSignals(True)
        self.threshold.minimum, self.threshold.maximum, self.threshold.singleStep = lo, hi, step
        self.threshold.value = review.threshold
        self.min_size.value = review.min_component_mm3
        self.window.minimum, self.window.maximum = lo, hi
        self.window.setValues(lo, hi)
        for w in (self.threshold, self.min_size):
            w.blockSignals(False)
        self.fill_findings()
        self.update_buttons()

    def apply_threshold(self):
        if self.logic.case is None or self.logic.case.review is None:
            return
        self.logic.update_threshold(self.threshold.value, self.min_size.value)
        self.fill_findings()

    def on_reset_threshold(self):
        review = self.logic.case.review if self.logic.case else None
        if review is not None:
            self.threshold.value = review.default_threshold
            self.min_size.value = review.default_min_component_mm3

    def on_colors(self, node):
        if node is not None and self.logic.map_node is not None:
            self.logic.set_map_display(self.window.minimumValue, self.window.maximumValue,
                                       color_node_id=node.GetID())

    def fill_findings(self):
        review = self.logic.case.review
        self.findings.setRowCount(0)
        for f in review.findings:
            r = self.findings.rowCount
            self.findings.insertRow(r)
            cells = [str(f["id"]), f["state"], f"{f['volume_ml']:.3f}", f"{f['max_score']:.4f}",
                     f"{f['mean_score']:.4f}", ", ".join(f"{c:.1f}" for c in f["centroid_ras"]), ""]
            for c, text in enumerate(cells):
                self.findings.setItem(r, c, qt.QTableWidgetItem(text))
        n = review.counts()
        self.counts.text = (f"threshold {review.threshold:.4g} (server {review.default_threshold:.4g}): "
                            f"{len(review.findings)} finding(s), {n['accepted']} accepted, {n['rejected']} rejected")

    def selected_finding(self):
        rows = self.findings.selectionModel().selectedRows()
        return int(self.findings.item(rows[0].row(), 0).text()) if rows else None

    def on_finding_clicked(self, row, _col):
        self.logic.jump_to_finding(int(self.findings.item(row, 0).text()))

    def on_decide(self, state):
        fid = self.selected_finding()
        if fid is None:
            self.status.text = "Select a finding first"
            return
        self.logic.decide(fid, state)
        row = self.findings.selectionModel().selectedRows()[0].row()
        self.fill_findings()
        self.findings.selectRow(min(row + 1, self.findings.rowCount - 1))

    def on_chart(self):
        self.logic.show_chart()
        view = slicer.app.layoutManager().plotWidget(0).plotView()
        if not getattr(self, "_chart_connected", False):
            view.connect("dataPointClicked(QString,QString,int)", lambda _c, _s, index: self.logic.jump_to_slice(index))
            self._chart_connected = True

    # -- case
    def on_save(self):
        if not self.logic.check_grid():
            self.status.text = "The scan shown is not in the map's grid; the label is saved in the map's grid"
        self.start(self.logic.start_save(), lambda r: setattr(self.status, "text", f"Saved label {r.get('label')}"),
                   "Saving the final label")

    def on_next(self):
        strategy = self.strategy.currentText or "random"

        def done(nxt):
            if nxt is None:
                self.status.text = f"Strategy {strategy}: no image left"
                return
            scan = self.logic.load_scan(nxt["name"], nxt["data"])
            self.status.text = f"Next case: {nxt['id']}"
            idx = self.datastore_image.findText(nxt["id"])
            if idx >= 0:
                self.datastore_image.setCurrentIndex(idx)
            self.inputs["FLAIR"].setCurrentNode(scan)
            if self.auto_run.checked and self.current_model() is not None:
                job = self.logic.start_infer(self.current_model().name, image_id=nxt["id"], params=self.edited_params())
                self.start(job, lambda case: (self.logic.finish_infer(case, scan), self.show_case()),
                           f"Running {self.current_model().name}")

        self.start(self.logic.start_next_case(strategy), done, f"Asking {strategy} for the next case")

    def on_train(self):
        m = self.current_model()
        self.start(self.logic.start_train(m.name), lambda r: setattr(self.status, "text", f"Training: {r}"),
                   f"Starting training of {m.name}")

    def on_screenshot(self):
        path = qt.QFileDialog.getSaveFileName(None, "Save screenshot", "anomaly_review.png", "PNG (*.png)")
        if path:
            self.logic.screenshot(path)
            self.status.text = f"Screenshot saved: {path}"


# ----------------------------------------------------------------------------------------- Test

class AnomalyReviewTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test). The display pipeline is tested on a synthetic result;
    with ANOMALYREVIEW_TEST_SERVER=http://host:port the whole flow runs against that server too."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_display_pipeline()
        url = os.environ.get("ANOMALYREVIEW_TEST_SERVER")
        if url:
            self.setUp()
            self.test_server_flow(url)

    def _synthetic_case(self):
        shape = (40, 48, 36)
        idx = np.indices(shape)
        brain = ((idx - np.array(shape)[:, None, None, None] / 2) ** 2 / (np.array(shape)[:, None, None, None] / 2.5) ** 2).sum(0) < 1
        rng = np.random.default_rng(0)
        amap = np.where(brain, rng.random(shape) * 0.5, 0).astype(np.float32)
        amap[18:22, 20:24, 16:19] = 0.95
        amap[8:10, 10:12, 10:12] = 0.9
        affine = np.array([[-1.0, 0, 0, 20], [0, -1.0, 0, 24], [0, 0, 1.2, -18], [0, 0, 0, 1]])
        img = nifti.NiftiImage(amap, affine)
        data = nifti.to_bytes(img)
        info = {"threshold": 0.8, "min_component_mm3": 5.0, "connectivity": 26}
        result = InferResult("synthetic", info, nifti.read_bytes(data), img.with_array((amap > 0.8).astype(np.uint8)),
                             files={"image": data})
        return ReviewCase(result, Review(result.map, info))

    def test_display_pipeline(self):
        self.delayDisplay("AnomalyReview: display pipeline on a synthetic map")
        logic = AnomalyReviewLogic()
        case = self._synthetic_case()
        node = logic.finish_infer(case)
        arr = slicer.util.arrayFromVolume(node)
        self.assertEqual(node.GetImageData().GetScalarType(), vtk.VTK_FLOAT)  # the float map, not a uint8 cast
        self.assertTrue(np.allclose(slicer_to_ijk(arr), case.review.scores))
        self.assertEqual(len(case.review.findings), 2)
        cand = slicer_to_ijk(slicer.util.arrayFromVolume(logic.candidates_node))
        self.assertTrue(np.array_equal(cand > 0, case.review.mask))
        logic.update_threshold(0.92)
        self.assertEqual(len(case.review.findings), 1)
        cand = slicer_to_ijk(slicer.util.arrayFromVolume(logic.candidates_node))
        self.assertEqual(int((cand > 0).sum()), 4 * 4 * 3)
        logic.update_threshold(0.8)
        first = case.review.findings[0]
        logic.decide(first["id"], ACCEPTED)
        label = logic.edited_label()
        self.assertEqual(int(label.sum()), first["voxels"])
        logic.decide(case.review.findings[1]["id"], REJECTED)
        self.assertEqual(int(logic.edited_label().sum()), first["voxels"])
        values = logic.update_chart()
        self.assertGreater(float(np.max(values)), 0)
        k = int(np.argmax(values))
        point = logic.jump_to_slice(k)
        self.assertGreater(case.review.finding_at(case.review.map.ras_to_index(point)[0]), 0)
        path = os.path.join(logic.tmp, "shot.png")
        logic.screenshot(path)
        self.assertTrue(os.path.getsize(path) > 0)
        self.delayDisplay("display pipeline passed")

    def test_server_flow(self, url):
        self.delayDisplay(f"AnomalyReview: review flow against {url}")
        logic = AnomalyReviewLogic()
        models = logic.connect(url)
        self.assertTrue(models)
        name = next(n for n, m in models.items() if not m.is_segmenter)
        images = logic.datastore_images()
        self.assertTrue(images)
        job = logic.start_infer(name, image_id=images[0])
        self.assertEqual(logic.wait(job), DONE, str(job.error))
        case = job.result
        node = logic.finish_infer(case)
        self.assertEqual(node.GetImageData().GetScalarType(), vtk.VTK_FLOAT)
        self.assertTrue(np.array_equal(case.review.mask, case.result.mask.array > 0))
        if case.review.findings:
            logic.decide(case.review.findings[0]["id"], ACCEPTED)
        job = logic.start_save()
        self.assertEqual(logic.wait(job), DONE, str(job.error))
        self.assertIn("final", logic.client.datastore()["objects"][images[0]]["labels"])
        job = logic.start_train(name)
        self.assertIn(logic.wait(job), (DONE, FAILED))
        self.delayDisplay("server flow passed")
