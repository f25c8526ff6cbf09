"""What the annotator sees in Slicer, on recording fakes of the MRML nodes (tests/slicer_fakes.py):
colour table of the map (issue 15 defect 1), findings drawn as outlines over the visible map (2),
chart clicks (3), review segments kept by ID and saved as their union (5), segmenter segments named
from the server's labels, and the parameter node that restores a review.

ANOMALYREVIEW_MODULE=/path/to/AnomalyReview.py runs these tests against another copy of the module
(used once on the module before issue 15: see the issue's report).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import slicer_fakes as sf

MODULE = Path(os.environ.get("ANOMALYREVIEW_MODULE", sf.MODULE_DIR / "AnomalyReview.py"))
INFERNO, VIRIDIS = "vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeFileViridis.txt"


@pytest.fixture
def env(monkeypatch):
    f, mod = sf.load_module(monkeypatch, MODULE)
    return f, mod, mod.AnomalyReviewLogic()


def synthetic(**kw):
    from AnomalyReviewLib.slicer_selftest import synthetic_case
    return synthetic_case(**kw)


def shown(f, logic, case):
    logic.finish_infer(case)
    return logic.map_node.GetDisplayNode()


def test_map_is_coloured_not_grey(env):
    """Defect 1: a new volume starts with the Grey table; the map must get its colour table."""
    f, mod, logic = env
    case = synthetic()
    d = shown(f, logic, case)
    assert d.GetColorNodeID() == INFERNO
    assert logic.map_node.GetImageData().GetScalarType() == 10  # VTK_FLOAT: the float map, never cast
    assert np.allclose(logic.map_node.array.transpose(2, 1, 0), case.review.scores)
    lo, hi = case.review.range
    assert (d.GetAutoWindowLevel(), d.GetWindowLevelMin(), d.GetWindowLevelMax()) == (0, lo, hi)


def test_segmenter_uncertainty_coloured_and_segments_named_from_server_labels(env):
    """Defect 1 (segmenter's uncertainty map) and defect 7 (segments named '1')."""
    from AnomalyReviewLib import ModelInfo
    f, mod, logic = env
    case = synthetic()
    res = case.result
    res.model = "patchddm"
    res.extras["uncertainty"] = res.map.with_array(np.full(res.map.shape, 0.25, np.float32))
    res.files = {"image": sf.nifti.to_bytes(res.map), "mask": sf.nifti.to_bytes(res.mask),
                 "uncertainty": sf.nifti.to_bytes(res.extras["uncertainty"])}  # what the old module loaded
    logic.models = {"patchddm": ModelInfo("patchddm", "segmentation", labels=["lesion"])}
    logic.finish_infer(case)
    overlay = logic.extra_nodes["uncertainty"]
    assert overlay.GetDisplayNode().GetColorNodeID() == VIRIDIS
    assert {c.GetForegroundVolumeID() for c in f.composite_nodes()} == {overlay.GetID()}
    seg = logic.segmentation_node.GetSegmentation()
    names = [seg.GetSegment(seg.GetNthSegmentID(i)).GetName() for i in range(seg.GetNumberOfSegments())]
    assert names == ["lesion"]
    saved = seg.GetSegment(seg.GetNthSegmentID(0)).array.transpose(2, 1, 0)
    assert np.array_equal(saved > 0, res.mask.array > 0)


def test_findings_are_outlines_over_the_visible_map(env):
    """Defect 2: label layer as outlines (slice nodes), opaque lines, map in the foreground with its
    threshold, the review segmentation outline-only."""
    f, mod, logic = env
    case = synthetic()
    d = shown(f, logic, case)
    assert f.slice_nodes() and all(s.GetUseLabelOutline() for s in f.slice_nodes())
    for c in f.composite_nodes():
        assert c.GetForegroundVolumeID() == logic.map_node.GetID()
        assert c.GetLabelVolumeID() == logic.candidates_node.GetID()
        assert c.GetLabelOpacity() == 1.0
        assert 0 < c.GetForegroundOpacity() < 1
    seg_display = logic.segmentation_node.GetDisplayNode()
    assert seg_display.GetVisibility2DOutline() and not seg_display.GetVisibility2DFill()
    assert d.GetApplyThreshold() == 1 and d.GetLowerThreshold() == pytest.approx(case.review.threshold)
    assert d.GetUpperThreshold() >= case.review.range[1]


def test_threshold_moves_the_display_threshold_and_candidates(env):
    f, mod, logic = env
    case = synthetic()
    d = shown(f, logic, case)
    logic.update_threshold(0.92)
    assert d.GetLowerThreshold() == pytest.approx(0.92)
    cand = logic.candidates_node.array.transpose(2, 1, 0)
    assert int((cand > 0).sum()) == 48 and len(case.review.findings) == 1
    assert logic.getParameterNode().threshold == pytest.approx(0.92)
    logic.set_hide_below_threshold(False)  # the whole continuous map on demand
    assert d.GetApplyThreshold() == 0


def test_chart_click_jumps_to_the_slice(env):
    """Defect 3: qMRMLPlotView emits dataSelected(vtkStringArray*, vtkCollection*); a click jumps."""
    f, mod, logic = env
    w = mod.AnomalyReviewWidget()
    w.setup()
    case = synthetic()
    w.show_result(case)
    w.on_chart()
    assert f.plots.called("ShowChartInLayout")
    assert list(f.plot_view.slots) == ["dataSelected(vtkStringArray*,vtkCollection*)"]
    values = w.logic.update_chart()
    k = int(np.argmax(values))
    ids, clicked = sf.fvtk.vtkIdTypeArray(), sf.fvtk.vtkCollection()
    ids.InsertNextValue(k)
    clicked.AddItem(ids)
    f.plot_view._emit("dataSelected(vtkStringArray*,vtkCollection*)", sf.fvtk.vtkStringArray(), clicked)
    (x, y, z, centered), = f.markups.called("JumpSlicesToLocation")
    assert np.allclose([x, y, z], case.review.slice_jump_point(k)) and centered
    assert case.review.finding_at(case.review.map.ras_to_index([x, y, z])[0]) > 0


def test_renamed_segment_and_painted_segments(env):
    """Defect 5: Accept / Reject / the saved label use the segment ID (a rename changes nothing) and
    the saved label is the union of all segments (lesions painted into a new segment included)."""
    f, mod, logic = env
    case = synthetic()
    shown(f, logic, case)
    seg = logic.segmentation_node.GetSegmentation()
    seg.GetSegment(seg.GetNthSegmentID(0)).SetName("lesions (edited)")  # Segment Editor rename
    first, second = case.review.findings[0], case.review.findings[1]
    logic.decide(first["id"], "accepted")
    assert int(logic.edited_label().sum()) == first["voxels"]
    painted = np.zeros(case.review.labels.shape, np.uint8)
    painted[2:4, 2:4, 2:4] = 1  # a lesion the detector missed, painted into a new segment
    new_id = seg.AddEmptySegment("", "missed lesion")
    seg.GetSegment(new_id).array = np.ascontiguousarray(painted.transpose(2, 1, 0))
    label = logic.edited_label()
    assert int(label.sum()) == first["voxels"] + 8
    assert np.array_equal(label > 0, case.review.finding_mask(first["id"]) | (painted > 0))
    logic.decide(second["id"], "rejected")
    assert int(logic.edited_label().sum()) == first["voxels"] + 8


def test_review_segment_recreated_if_deleted(env):
    f, mod, logic = env
    case = synthetic()
    shown(f, logic, case)
    seg = logic.segmentation_node.GetSegmentation()
    seg.RemoveSegment(seg.GetNthSegmentID(0))
    logic.decide(case.review.findings[0]["id"], "accepted")
    assert seg.GetNumberOfSegments() == 1 and int(logic.edited_label().sum()) == case.review.findings[0]["voxels"]


def test_parameter_node_keeps_and_restores_the_review(env):
    """The state lives in the parameter node: a scene saved and loaded again restores the review."""
    f, mod, logic = env
    case = synthetic()
    shown(f, logic, case)
    logic.update_threshold(0.85)
    logic.decide(case.review.findings[0]["id"], "accepted")
    p = logic.getParameterNode()
    assert p.mapVolume is logic.map_node and p.candidatesVolume is logic.candidates_node
    assert p.reviewSegmentation is logic.segmentation_node and p.imageId == "synthetic"
    fresh = mod.AnomalyReviewLogic()  # a new session on the same scene
    restored = fresh.restore()
    assert restored.review.threshold == pytest.approx(0.85)
    assert [x["state"] for x in restored.review.findings] == [x["state"] for x in case.review.findings]
    assert fresh.has_case() and int(fresh.edited_label().sum()) == case.review.findings[0]["voxels"]
