"""The AnomalyReview module against the committed record of Slicer 5.8's API (tests/slicer_api/):
every slicer.* / qt.* / ctk.* / vtk.* name, MRML and VTK method, Qt signal, .ui widget property and
parameter-node binding the module uses is in the record; misspelled copies of the module fail the
check; the recording fakes (tests/slicer_fakes*.py) implement nothing the record lacks."""
from __future__ import annotations

import inspect
import json

import pytest
import slicer_fakes as sf
import slicer_fakes_mrml as mrml
import slicer_fakes_vtk as fvtk
from slicer_api.api_check import RECORD, Record, check_module

MODULE_DIR = sf.MODULE_DIR


def test_record_names_its_slicer_version_and_sources():
    rec = json.loads(RECORD.read_text(encoding="utf-8"))
    assert rec["target"]["slicer"].startswith("5.8")
    assert all(s["repo"] and s["path"] and s["commit"] for s in rec["sources"])
    assert any("qMRMLPlotView.h" in s["path"] for s in rec["sources"])
    plot_view = rec["classes"]["qMRMLPlotView"]
    assert "dataSelected(vtkStringArray*,vtkCollection*)" in plot_view["signals"]
    assert not any("dataPointClicked" in s for c in rec["classes"].values() for s in c.get("signals", []))
    wanted = {"vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeFileViridis.txt"}
    assert wanted <= set(rec["color_node_ids"])


def test_module_uses_only_recorded_slicer_api():
    assert check_module(MODULE_DIR) == []


MUTATIONS = [  # (file, text in the module, misspelling, what the check must report)
    ("AnomalyReviewLib/slicer_scene.py", "d.SetAndObserveColorNodeID(", "d.SetAndObserveColorNodeId(",
     "method SetAndObserveColorNodeId()"),
    ("AnomalyReviewLib/slicer_scene.py", "slice_node.SetUseLabelOutline(True)", "slice_node.SetUseLabelOutlines(True)",
     "method SetUseLabelOutlines()"),
    ("AnomalyReview.py", '"dataSelected(vtkStringArray*,vtkCollection*)"', '"dataPointClicked(QString,QString,int)"',
     "signal 'dataPointClicked(QString,QString,int)'"),
    ("AnomalyReview.py", "slicer.util.loadUI(", "slicer.util.loadUi(", "slicer.util.loadUi: not in the record"),
    ("AnomalyReview.py", "u.hideBelowCheck, \"toggled(bool)\"", "u.hideBelowCheck, \"valueChanged(double)\"",
     "ui.hideBelowCheck (QCheckBox) has no signal valueChanged(double)"),
    ("AnomalyReview.py", "self.ui.thresholdSlider.value = review.default_threshold",
     "self.ui.thresholdSlider.valeu = review.default_threshold", "ui.thresholdSlider.valeu"),
    ("AnomalyReview.py", "u.minSizeSlider.value = review.min_component_mm3", "u.minSizeSlidr.value = 1",
     "ui.minSizeSlidr: no such widget"),
    ("AnomalyReviewLib/slicer_logic.py", "slicer.mrmlScene.StartCloseEvent", "slicer.mrmlScene.StartClosingEvent",
     "vtkMRMLScene has no StartClosingEvent"),
    ("AnomalyReviewLib/slicer_logic.py", "p.threshold, p.minSizeMm3 = ", "p.threshhold, p.minSizeMm3 = ",
     "parameter node field 'threshhold'"),
    ("AnomalyReviewLib/slicer_scene.py", "slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter",
     "slicer.vtkMRMLPlotSeriesNode.PlotTypeScater", "vtkMRMLPlotSeriesNode has no PlotTypeScater"),
    ("AnomalyReview.py", '(u.extraMapSelector, "currentNodeChanged(vtkMRMLNode*)"',
     '(u.extraMapSelector, "currentIndexChanged(int)"',
     "ui.extraMapSelector (qMRMLNodeComboBox) has no signal currentIndexChanged(int)"),
    ("AnomalyReview.py", "u.extraMapSelector.enabled", "u.extraMapSelectr.enabled",
     "ui.extraMapSelectr: no such widget"),
    ("AnomalyReviewLib/slicer_logic.py", "self.getParameterNode().extraMap = node if name",
     "self.getParameterNode().extraMaps = node if name", "parameter node field 'extraMaps'"),
    ("AnomalyReviewLib/slicer_scene.py", "slicer.util.setSliceViewerLayers(foregroundOpacity",
     "slicer.util.setSliceViewerLayer(foregroundOpacity", "slicer.util.setSliceViewerLayer: not in the record"),
]


@pytest.mark.parametrize("path, original, mutated, reported", MUTATIONS, ids=[m[2][:40] for m in MUTATIONS])
def test_checker_catches_a_misspelled_call(path, original, mutated, reported):
    text = (MODULE_DIR / path).read_text(encoding="utf-8")
    assert original in text, f"the mutation no longer applies to {path}: update MUTATIONS"
    problems = check_module(MODULE_DIR, sources={path: text.replace(original, mutated, 1)})
    assert any(reported in p for p in problems), problems


def test_checker_catches_ui_file_errors(tmp_path):
    import shutil
    copy = tmp_path / "AnomalyReview"
    shutil.copytree(MODULE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    ui = copy / "Resources" / "UI" / "AnomalyReview.ui"
    text = ui.read_text(encoding="utf-8")
    for original, mutated, reported in [
            ("<string>serverUrl</string>", "<string>serverURL</string>", "SlicerParameterName 'serverURL'"),
            ('name="showChildNodeTypes"', 'name="showChildNodeType"', "has no property showChildNodeType"),
            ("setMRMLScene(vtkMRMLScene*)</slot>", "setScene(vtkMRMLScene*)</slot>", "no such slot"),
            # the extra-map selector bound to a str field: Slicer's node-combo connector takes node fields only
            ("<string>extraMap</string>", "<string>imageId</string>",
             "qMRMLNodeComboBox cannot be bound to a field of type str"),
            # a plain QComboBox bound to a str: Slicer's connector needs a Choice annotation (connectGui raises)
            ('<widget class="QComboBox" name="datastoreCombo"/>',
             '<widget class="QComboBox" name="datastoreCombo"><property name="SlicerParameterName" stdset="0">'
             '<string>imageId</string></property></widget>', "QComboBox cannot be bound to a field of type str"),
            ('name="noneDisplay"', 'name="noneText"', "has no property noneText")]:
        assert original in text
        ui.write_text(text.replace(original, mutated, 1), encoding="utf-8")
        assert any(reported in p for p in check_module(copy)), reported
    ui.write_text(text, encoding="utf-8")
    assert check_module(copy) == []


def _fake_classes():
    for module in (mrml, fvtk):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and getattr(cls, "SLICER_CLASS", None) in Record().classes:
                yield cls


def test_fakes_follow_the_record():
    """A fake may only offer what Slicer has: every public method of a fake MRML / VTK class is a member
    of its Slicer class in the record (Qt fakes look every name up in the record at run time)."""
    rec = Record()
    checked = 0
    for cls in _fake_classes():
        members = rec.members(cls.SLICER_CLASS)
        for name, _ in inspect.getmembers(cls, inspect.isfunction):
            if name.startswith("_") or name == "called":
                continue
            assert name in members, f"fake {cls.__name__}.{name} is not in the record for {cls.SLICER_CLASS}"
            checked += 1
    assert checked > 80


def test_qt_fakes_refuse_what_the_record_lacks(monkeypatch):
    f, mod = sf.load_module(monkeypatch)
    w = mod.AnomalyReviewWidget()
    w.setup()
    with pytest.raises(AttributeError, match="no signal"):
        w.ui.runButton.connect("pressedTwice()", lambda: None)
    with pytest.raises(AttributeError, match="no property"):
        w.ui.thresholdSlider.valeu = 1.0
    with pytest.raises(AttributeError, match="no attribute"):
        w.ui.findingsTable.setRowcount(0)
    node = f.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "x")
    node.CreateDefaultDisplayNodes()
    assert node.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeGrey"  # Slicer's default
    with pytest.raises(ValueError, match="no colour node"):
        node.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeInferno")  # not a Slicer ID
    with pytest.raises(AttributeError, match="no parameter"):
        w.logic.getParameterNode().treshold = 0.5
