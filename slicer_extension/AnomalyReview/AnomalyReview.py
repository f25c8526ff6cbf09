"""Anomaly Review: 3D Slicer module for uad-label's anomaly detectors served by MONAI Label.

Thin glue. Every behaviour (HTTP, NIfTI, thresholding, findings, review state, label assembly,
background jobs, display choices) lives in AnomalyReviewLib, which imports without Slicer and is
tested outside it; the MRML calls live in AnomalyReviewLib/slicer_scene.py, the Logic (usable from
the Python console without this widget) and the parameter node in AnomalyReviewLib/slicer_logic.py.
The widget's layout is Resources/UI/AnomalyReview.ui.
"""
import logging
import os
import sys

import qt
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from AnomalyReviewLib import ACCEPTED, CANCELLED, DONE, FAILED, REJECTED, ServerError, changed_params, display  # noqa: E402
from AnomalyReviewLib import slicer_scene as scene  # noqa: E402
from AnomalyReviewLib.slicer_logic import AnomalyReviewLogic, AnomalyReviewParameterNode  # noqa: E402, F401
from AnomalyReviewLib.slicer_selftest import AnomalyReviewSelfTest  # noqa: E402


class AnomalyReview(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Anomaly Review"
        self.parent.categories = ["Active Learning"]
        self.parent.dependencies = []
        self.parent.contributors = ["uad-label"]
        self.parent.helpText = (
            "Review unsupervised anomaly detection results for brain MRI from a uad-label (MONAI Label) server: "
            "coloured anomaly map, findings drawn as outlines, live threshold, accept / reject, per-slice score "
            "chart (click a point to jump), final label saved to the datastore. See docs/slicer.md of uad-label.")
        self.parent.acknowledgementText = (
            "Per-slice anomaly score after Oliinyk et al.; FLAIR baseline after Meissen et al.; "
            "server built on MONAI Label.")


# ----------------------------------------------------------------------------------------- Widget

class AnomalyReviewWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_MS = 100
    CHART_SIGNAL = "dataSelected(vtkStringArray*,vtkCollection*)"

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self.job = self.on_done = self._param = self._gui_tag = self._chart_view = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/AnomalyReview.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.logic = AnomalyReviewLogic()
        self.inputs = {"FLAIR": self.ui.flairSelector, "T1": self.ui.t1Selector, "T2": self.ui.t2Selector}
        scene.list_only_extra_maps(self.ui.extraMapSelector)
        self.timer = qt.QTimer()
        self.timer.setInterval(self.POLL_MS)
        self.timer.connect("timeout()", self.poll)
        self.rethreshold_timer = qt.QTimer()  # debounce the slider: re-threshold once it rests
        self.rethreshold_timer.setSingleShot(True)
        self.rethreshold_timer.setInterval(150)
        self.rethreshold_timer.connect("timeout()", self.apply_threshold)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        u = self.ui
        for widget, signal, slot in (
                (u.connectButton, "clicked()", self.on_connect),
                (u.modelCombo, "currentIndexChanged(int)", self.on_model),
                (u.runButton, "clicked()", self.on_run), (u.cancelButton, "clicked()", self.on_cancel),
                (u.thresholdSlider, "valueChanged(double)", lambda _v: self.rethreshold_timer.start()),
                (u.minSizeSlider, "valueChanged(double)", lambda _v: self.rethreshold_timer.start()),
                (u.resetThresholdButton, "clicked()", self.on_reset_threshold),
                (u.opacitySlider, "valueChanged(double)", self.logic.set_opacity),
                (u.hideBelowCheck, "toggled(bool)", self.logic.set_hide_below_threshold),
                (u.windowRange, "valuesChanged(double,double)", self.logic.set_window),
                (u.colorCombo, "currentNodeChanged(vtkMRMLNode*)", self.on_colors),
                (u.extraMapSelector, "currentNodeChanged(vtkMRMLNode*)", self.on_extra_map),
                (u.findingsTable, "cellClicked(int,int)", self.on_finding_clicked),
                (u.acceptButton, "clicked()", lambda: self.on_decide(ACCEPTED)),
                (u.rejectButton, "clicked()", lambda: self.on_decide(REJECTED)),
                (u.undecideButton, "clicked()", lambda: self.on_decide("pending")),
                (u.chartButton, "clicked()", self.on_chart), (u.saveButton, "clicked()", self.on_save),
                (u.nextButton, "clicked()", self.on_next), (u.trainButton, "clicked()", self.on_train),
                (u.screenshotButton, "clicked()", self.on_screenshot)):
            widget.connect(signal, slot)
        self.initializeParameterNode()

    def cleanup(self):
        self.timer.stop()
        if self.job is not None:
            self.job.cancel()
        self.removeObservers()
        self.logic.removeObservers()
        self.logic.cleanup()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        if self.job is not None:
            self.job.cancel()
        self.setParameterNode(None)
        self.logic.on_scene_close()
        self._chart_view = None
        self.ui.findingsTable.setRowCount(0)
        self.ui.resultInfoLabel.text = ""
        self.ui.statusLabel.text = "Scene closed: the review ended"
        self.update_buttons()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if self.logic.case is None and self.logic.restore() is not None:
            self.show_case()
        self.update_buttons()

    def setParameterNode(self, parameter_node):
        if self._param is not None and self._gui_tag is not None:
            self._param.disconnectGui(self._gui_tag)
        self._param, self._gui_tag = parameter_node, None
        if parameter_node is not None:  # widgets with a SlicerParameterName property in the .ui
            self._gui_tag = parameter_node.connectGui(self.ui)

    # -- jobs
    def start(self, job, on_done, what):
        self.job, self.on_done = job, on_done
        self.ui.statusLabel.text = f"{what}..."
        self.ui.progressBar.setRange(0, 0)
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
                self.ui.progressBar.setRange(0, 0)  # busy indicator while the server works
            else:
                self.ui.progressBar.setRange(0, 1000)
                self.ui.progressBar.setValue(int(fraction * 1000))
            self.ui.statusLabel.text = f"{message or job.name} ({job.elapsed:.0f} s)"
            return
        self.timer.stop()
        self.job = None
        self.ui.progressBar.setRange(0, 1000)
        self.ui.progressBar.setValue(1000 if status == DONE else 0)
        if status == DONE:
            self.ui.statusLabel.text = f"{job.name}: done in {job.elapsed:.1f} s"
            try:
                self.on_done(job.result)
            except Exception as exc:  # a display problem must not leave the UI half-updated silently
                logging.exception("AnomalyReview")
                self.ui.statusLabel.text = f"{job.name}: {exc}"
        elif status == FAILED:
            self.ui.statusLabel.text = f"{job.name} failed: {job.error}"
            if not isinstance(job.error, ServerError):
                logging.error(job.traceback)
        elif status == CANCELLED:
            self.ui.statusLabel.text = f"{job.name}: cancelled"
        self.update_buttons()

    def on_cancel(self):
        if self.job is not None:
            self.job.cancel()
            self.poll()

    def update_buttons(self):
        u, busy, connected = self.ui, self.job is not None, self.logic.client is not None
        has_case = self.logic.has_case()
        has_review = has_case and self.logic.case.review is not None
        u.cancelButton.enabled = busy
        u.connectButton.enabled = not busy
        for b in (u.runButton, u.nextButton, u.trainButton):
            b.enabled = connected and not busy
        u.saveButton.enabled = connected and not busy and has_case and bool(self.logic.case.image_id)
        for w in (u.acceptButton, u.rejectButton, u.undecideButton, u.chartButton, u.thresholdSlider,
                  u.minSizeSlider, u.resetThresholdButton):
            w.enabled = has_review
        u.extraMapSelector.enabled = has_case and bool(self.logic.extra_nodes)

    # -- server
    def on_connect(self):
        try:
            job = self.logic.start_connect(self.ui.urlEdit.text, self.ui.tokenEdit.text)
        except ValueError as exc:  # a malformed URL
            self.ui.statusLabel.text = f"Could not connect: {exc}"
            return

        def done(result):
            self.logic.finish_connect(result)
            u = self.ui
            u.modelCombo.clear()
            for name, m in self.logic.models.items():
                u.modelCombo.addItem(f"{name} ({m.type})", name)
            u.strategyCombo.clear()
            for s in self.logic.strategies:
                u.strategyCombo.addItem(s)
            u.datastoreCombo.clear()
            for image in self.logic.images:
                u.datastoreCombo.addItem(image)
            info = self.logic.info
            u.statusLabel.text = (f"Connected: {info.get('name', '')} {info.get('version', '')}, "
                                  f"{len(self.logic.models)} model(s)"
                                  + (f"; datastore: {result['datastore_error']}" if result["datastore_error"] else ""))

        self.start(job, done, "Connecting")

    def current_model(self):
        return self.logic.models.get(self.ui.modelCombo.currentData)

    def on_model(self, _index):
        m, table = self.current_model(), self.ui.optionsTable
        table.setRowCount(0)
        if m is None:
            return
        self.ui.descriptionLabel.text = m.description
        for name, spec in m.params.items():
            r = table.rowCount
            table.insertRow(r)
            key = qt.QTableWidgetItem(name)
            key.setFlags(key.flags() & ~qt.Qt.ItemIsEditable)
            table.setItem(r, 0, key)
            default = spec.get("default")
            table.setItem(r, 1, qt.QTableWidgetItem("" if default is None else str(default)))
            table.setItem(r, 2, qt.QTableWidgetItem(f"{spec.get('type', '')}: {spec.get('help', '')}"))
        self._set_min_size_range(m, None)

    def _set_min_size_range(self, model, current):
        """The min-size slider's range comes from the server's parameter declaration (never clamps its value)."""
        lo, hi, step = display.min_size_range(model.params if model is not None else None, current)
        s = self.ui.minSizeSlider
        s.minimum, s.maximum, s.singleStep = lo, hi, step

    def edited_params(self):
        t = self.ui.optionsTable
        edits = {t.item(r, 0).text(): t.item(r, 1).text() for r in range(t.rowCount)}
        return changed_params(self.current_model(), edits)

    # -- run
    def on_run(self):
        m = self.current_model()
        if m is None:
            self.ui.statusLabel.text = "Choose a model (Connect first)"
            return
        try:
            params = self.edited_params()
            if self.ui.useDatastoreCheck.checked:
                image, scan = self.ui.datastoreCombo.currentText, None
                if not image:
                    self.ui.statusLabel.text = "Choose a datastore image"
                    return
                job = self.logic.start_infer(m.name, image_id=image, params=params)
            else:
                volumes = {mod: c.currentNode() for mod, c in self.inputs.items() if c.currentNode() is not None}
                if "FLAIR" not in volumes:
                    self.ui.statusLabel.text = "Choose the FLAIR volume (or a datastore image)"
                    return
                scan = volumes["FLAIR"]
                job = self.logic.start_infer(m.name, volumes=volumes, params=params,
                                             via_session=self.ui.viaSessionCheck.checked)
        except Exception as exc:
            self.ui.statusLabel.text = f"Cannot run: {exc}"
            return
        self.start(job, lambda case: self.show_result(case, scan), f"Running {m.name}")

    def show_result(self, case, scan=None):
        self.logic.finish_infer(case, scan)
        self.show_case()

    def show_case(self):
        review = self.logic.case.review
        for combo in self.inputs.values():  # the module's own outputs are no inputs
            scene.hide_from_selector(combo, self.logic.output_node_ids())
        self.ui.resultInfoLabel.text = display.result_summary(self.logic.case.result.info)
        self.ui.extraMapSelector.setCurrentNode(self.logic.getParameterNode().extraMap)
        if review is None:
            self.ui.findingsTable.setRowCount(0)
            self.ui.countsLabel.text = "Segmentation result: edit it in the Segment Editor, then save"
            self.update_buttons()
            return
        lo, hi, step = review.slider_range()
        u = self.ui
        for w in (u.thresholdSlider, u.minSizeSlider, u.windowRange):
            w.blockSignals(True)
        u.thresholdSlider.minimum, u.thresholdSlider.maximum, u.thresholdSlider.singleStep = lo, hi, step
        u.thresholdSlider.value = review.threshold
        self._set_min_size_range(self.logic.models.get(self.logic.case.result.model), review.min_component_mm3)
        u.minSizeSlider.value = review.min_component_mm3
        u.windowRange.minimum, u.windowRange.maximum = lo, hi
        u.windowRange.setValues(lo, hi)
        for w in (u.thresholdSlider, u.minSizeSlider, u.windowRange):
            w.blockSignals(False)
        self.fill_findings()
        self.update_buttons()

    def apply_threshold(self):
        if self.logic.has_case() and self.logic.case.review is not None:
            self.logic.update_threshold(self.ui.thresholdSlider.value, self.ui.minSizeSlider.value)
            self.fill_findings()

    def on_reset_threshold(self):
        review = self.logic.case.review if self.logic.has_case() else None
        if review is not None:
            self.ui.thresholdSlider.value = review.default_threshold
            self.ui.minSizeSlider.value = review.default_min_component_mm3

    def on_extra_map(self, node):
        """The extra-map selector: show that map as the coloured layer (none: the main map); the threshold
        and the findings stay on the main map."""
        if self.logic.has_case():
            self.logic.show_extra(node.GetAttribute(display.EXTRA_ATTRIBUTE) if node is not None else None)

    def on_colors(self, node):
        if node is not None:
            self.logic.set_colors(node.GetID())

    def fill_findings(self):
        review, table = self.logic.case.review, self.ui.findingsTable
        table.setRowCount(0)
        for f in review.findings:
            r = table.rowCount
            table.insertRow(r)
            cells = [str(f["id"]), f["state"], f"{f['volume_ml']:.3f}", f"{f['max_score']:.4f}",
                     f"{f['mean_score']:.4f}", ", ".join(f"{c:.1f}" for c in f["centroid_ras"])]
            for c, text in enumerate(cells):
                table.setItem(r, c, qt.QTableWidgetItem(text))
        n = review.counts()
        self.ui.countsLabel.text = (f"threshold {review.threshold:.4g} (server {review.default_threshold:.4g}): "
                                    f"{len(review.findings)} finding(s), {n['accepted']} accepted, "
                                    f"{n['rejected']} rejected")

    def selected_finding(self):
        rows = self.ui.findingsTable.selectionModel().selectedRows()
        return int(self.ui.findingsTable.item(rows[0].row(), 0).text()) if rows else None

    def on_finding_clicked(self, row, _col):
        self.logic.jump_to_finding(int(self.ui.findingsTable.item(row, 0).text()))

    def on_decide(self, state):
        fid = self.selected_finding()
        if fid is None:
            self.ui.statusLabel.text = "Select a finding first"
            return
        row = self.ui.findingsTable.selectionModel().selectedRows()[0].row()
        self.logic.decide(fid, state)
        self.fill_findings()
        self.ui.findingsTable.selectRow(min(row + 1, self.ui.findingsTable.rowCount - 1))

    def on_chart(self):
        view = self.logic.show_chart()
        if view is not None and view is not self._chart_view:  # a click on a point jumps to that slice
            view.connect(self.CHART_SIGNAL, self.logic.on_chart_selection)
            self._chart_view = view

    # -- case
    def on_save(self):
        if not self.logic.check_grid() and not slicer.util.confirmOkCancelDisplay(
                "The scan shown is not in the anomaly map's grid. The label is saved in the map's grid "
                "(the grid of the image the server processed). Save anyway?", "Anomaly Review"):
            self.ui.statusLabel.text = "Save cancelled: the scan shown is not in the map's grid"
            return
        try:
            job = self.logic.start_save()
        except (RuntimeError, ValueError) as exc:
            self.ui.statusLabel.text = f"Cannot save: {exc}"
            return
        self.start(job, lambda r: setattr(self.ui.statusLabel, "text", f"Saved label {r.get('label')}"),
                   "Saving the final label")

    def on_next(self):
        strategy = self.ui.strategyCombo.currentText or "random"

        def done(nxt):
            if nxt is None:
                self.ui.statusLabel.text = f"Strategy {strategy}: no image left"
                return
            scan = self.logic.load_scan(nxt["name"], nxt["data"])
            self.ui.statusLabel.text = f"Next case: {nxt['id']}"
            idx = self.ui.datastoreCombo.findText(nxt["id"])
            if idx >= 0:
                self.ui.datastoreCombo.setCurrentIndex(idx)
            self.ui.flairSelector.setCurrentNode(scan)
            m = self.current_model()
            if self.ui.autoRunCheck.checked and m is not None:
                job = self.logic.start_infer(m.name, image_id=nxt["id"], params=self.edited_params(), fetch_scan=False)
                self.start(job, lambda case: self.show_result(case, scan), f"Running {m.name}")

        self.start(self.logic.start_next_case(strategy), done, f"Asking {strategy} for the next case")

    def on_train(self):
        m = self.current_model()
        if m is None:
            self.ui.statusLabel.text = "Choose the model to train in 'Model' (Connect first)"
            return
        self.start(self.logic.start_train(m.name), lambda r: setattr(self.ui.statusLabel, "text", f"Training: {r}"),
                   f"Starting training of {m.name}")

    def on_screenshot(self):
        path = qt.QFileDialog.getSaveFileName(None, "Save screenshot", "anomaly_review.png", "PNG (*.png)")
        if path:
            self.logic.screenshot(path)
            self.ui.statusLabel.text = f"Screenshot saved: {path}"


# ----------------------------------------------------------------------------------------- Test

class AnomalyReviewTest(AnomalyReviewSelfTest):
    """Reload and Test, and ctest (slicer_add_python_unittest): AnomalyReviewLib/slicer_selftest.py."""
    logic_class = AnomalyReviewLogic
