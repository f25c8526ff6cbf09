"""The extra maps of a result in the Slicer module (issue 18), on the recording fakes (tests/slicer_fakes.py):
a fusion's member_<name> quantile maps (and the segmenter's uncertainty) are listed by the extra-map
selector of the .ui (a qMRMLNodeComboBox bound to the parameter node), one is shown as the coloured
layer with its colour table and a 0-1 window, while the threshold, the findings and the chart stay on
the main (fused) map; the results area says where the threshold and the fusion's weights came from.

ANOMALYREVIEW_MODULE=/path/to/AnomalyReview.py runs them against another copy of the module.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import slicer_fakes as sf

MODULE = Path(os.environ.get("ANOMALYREVIEW_MODULE", sf.MODULE_DIR / "AnomalyReview.py"))
PLASMA, VIRIDIS = "vtkMRMLColorTableNodeFilePlasma.txt", "vtkMRMLColorTableNodeFileViridis.txt"
SOURCE = "calibrated: 0.97 from 12 labelled cases (2026-11-30; cross-validated Dice 0.61 vs 0.55 before)"
CARD = "calibration card /srv/app/model/fusion.calibration.json"
MEMBERS = ["member_flair_threshold", "member_tissue_outlier"]


@pytest.fixture
def env(monkeypatch):
    f, mod = sf.load_module(monkeypatch, MODULE)
    w = mod.AnomalyReviewWidget()
    w.setup()
    return f, mod, w


def fusion_case():
    """The synthetic case as the fusion detector returns it: two member quantile maps and the brain mask."""
    from AnomalyReviewLib.slicer_selftest import synthetic_case
    case = synthetic_case()
    res = case.result
    res.model = "fusion"
    rng = np.random.default_rng(1)
    res.extras["member_flair_threshold"] = res.map.with_array(rng.random(res.map.shape).astype(np.float32))
    res.extras["brain"] = res.map.with_array((res.map.array > 0).astype(np.uint8))
    res.extras["member_tissue_outlier"] = res.map.with_array(np.full(res.map.shape, 0.25, np.float32))
    res.info.update({"detector": "fusion", "threshold_source": SOURCE,
                     "fusion": {"members": ["flair_threshold", "tissue_outlier"], "rule": "mean",
                                "weights": [0.7, 0.3], "intercept": 0.0, "weights_source": CARD}})
    return case


def listed(selector):
    """Names of the extra maps the selector offers (what the annotator sees in the list)."""
    from AnomalyReviewLib import display
    return [selector.nodeFromIndex(i).GetAttribute(display.EXTRA_ATTRIBUTE) for i in range(selector.nodeCount())]


def foreground(f):
    ids = {c.GetForegroundVolumeID() for c in f.composite_nodes()}
    assert len(ids) == 1, ids
    return ids.pop()


def test_selector_lists_exactly_the_extras_of_the_response(env):
    f, mod, w = env
    case = fusion_case()
    w.show_result(case)
    sel = w.ui.extraMapSelector
    assert listed(sel) == MEMBERS  # the server's order; the brain mask is no map to show
    assert sel.currentNode() is None and sel.noneEnabled and sel.enabled
    assert sel.dynamic["SlicerParameterName"] == "extraMap"
    assert foreground(f) == w.logic.map_node.GetID()  # the fused map first
    hidden = set(w.ui.flairSelector.sortFilterProxyModel().hiddenNodeIDs)
    assert {w.logic.extra_nodes[n].GetID() for n in MEMBERS} <= hidden  # no extra map offered as an input
    from AnomalyReviewLib.slicer_selftest import synthetic_case
    w.show_result(synthetic_case())  # the next result has no extras: the old ones are gone from the list
    assert listed(sel) == [] and not sel.enabled and w.logic.extra_map_names() == []


def test_choosing_an_extra_shows_it_with_its_colour_table(env):
    f, mod, w = env
    case = fusion_case()
    scan = w.logic.load_scan("case01_FLAIR.nii.gz", sf.nifti.to_bytes(case.result.map))
    w.show_result(case, scan)
    logic, sel = w.logic, w.ui.extraMapSelector
    member = logic.extra_nodes["member_tissue_outlier"]
    sel.setCurrentNode(member)  # the annotator picks it in the list
    assert foreground(f) == member.GetID()
    for c in f.composite_nodes():  # scan under it, findings' outlines of the fused map on top
        assert c.GetBackgroundVolumeID() == scan.GetID() and c.GetLabelVolumeID() == logic.candidates_node.GetID()
    d = member.GetDisplayNode()
    assert d.GetColorNodeID() == PLASMA
    assert (d.GetAutoWindowLevel(), d.GetWindowLevelMin(), d.GetWindowLevelMax()) == (0, 0.0, 1.0)
    assert d.GetApplyThreshold() == 0  # a member map is shown whole
    assert logic.getParameterNode().extraMap is member and logic.shown_extra() == "member_tissue_outlier"
    assert np.allclose(member.array.transpose(2, 1, 0), case.result.extras["member_tissue_outlier"].array)
    sel.setCurrentNode(None)  # "none (the main map)"
    assert foreground(f) == logic.map_node.GetID() and logic.getParameterNode().extraMap is None
    assert logic.map_node.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeFileInferno.txt"


def test_threshold_still_acts_on_the_main_map(env):
    f, mod, w = env
    case = fusion_case()
    w.show_result(case)
    logic = w.logic
    member = logic.extra_nodes["member_flair_threshold"]
    w.ui.extraMapSelector.setCurrentNode(member)
    member_before = member.array.copy()
    w.ui.thresholdSlider.value = 0.92
    assert w.rethreshold_timer.isActive()
    w.rethreshold_timer._fire()
    main = logic.map_node.GetDisplayNode()
    assert main.GetLowerThreshold() == pytest.approx(0.92) and case.review.threshold == pytest.approx(0.92)
    assert len(case.review.findings) == 1 and w.ui.findingsTable.rowCount == 1
    assert int((logic.candidates_node.array > 0).sum()) == 48  # the fused map's finding, not the member's
    assert member.GetDisplayNode().GetApplyThreshold() == 0 and np.array_equal(member.array, member_before)
    assert foreground(f) == member.GetID()  # the chosen map stays shown


def test_scene_close_clears_the_list(env):
    f, mod, w = env
    w.show_result(fusion_case())
    w.ui.extraMapSelector.setCurrentNode(w.logic.extra_nodes[MEMBERS[0]])
    assert w.ui.resultInfoLabel.text
    f.scene.Clear()
    sel = w.ui.extraMapSelector
    assert listed(sel) == [] and sel.currentNode() is None and not sel.enabled
    assert w.logic.extra_nodes == {} and w.ui.resultInfoLabel.text == ""
    assert w.logic.getParameterNode().extraMap is None  # a new, empty parameter node


def test_results_area_says_where_threshold_and_weights_came_from(env):
    f, mod, w = env
    w.show_result(fusion_case())
    text = w.ui.resultInfoLabel.text
    assert f"server threshold 0.8: {SOURCE}" in text
    assert "fusion (mean): flair_threshold 0.7, tissue_outlier 0.3; weights: " + CARD in text
    from AnomalyReviewLib import display
    plain = display.result_summary({"threshold": 0.5, "threshold_source": "default"})
    assert plain == "server threshold 0.5: default"  # no fusion line for another detector
    assert "source not given" in display.result_summary({"threshold": 0.5})
    logistic = display.result_summary({"fusion": {"members": ["a", "b"], "rule": "logistic", "weights": [1.5, -2],
                                                  "intercept": -3.0, "weights_source": "request"}})
    assert logistic == "fusion (logistic): a 1.5, b -2, intercept -3; weights: request"


def test_segmenter_uncertainty_is_listed_and_shown_first(env):
    from AnomalyReviewLib import ModelInfo
    from AnomalyReviewLib.slicer_selftest import synthetic_case
    f, mod, w = env
    case = synthetic_case()
    res = case.result
    res.model = "patchddm"
    res.extras["uncertainty"] = res.map.with_array(np.full(res.map.shape, 1.5, np.float32))
    w.logic.models = {"patchddm": ModelInfo("patchddm", "segmentation", labels=["lesion"])}
    w.show_result(case)
    sel, overlay = w.ui.extraMapSelector, w.logic.extra_nodes["uncertainty"]
    assert listed(sel) == ["uncertainty"] and sel.currentNode() is overlay
    assert foreground(f) == overlay.GetID() and overlay.GetDisplayNode().GetColorNodeID() == VIRIDIS
    assert overlay.GetDisplayNode().GetWindowLevelMax() == pytest.approx(1.5)  # widened, not clipped at 1
    sel.setCurrentNode(None)
    assert foreground(f) == w.logic.map_node.GetID()


def test_saved_scene_restores_the_extras_and_the_choice(env):
    f, mod, w = env
    w.show_result(fusion_case())
    w.logic.show_extra("member_tissue_outlier")
    fresh = mod.AnomalyReviewLogic()  # a new session on the same (saved and reloaded) scene
    fresh.restore()
    assert fresh.extra_map_names() == MEMBERS and fresh.shown_extra() == "member_tissue_outlier"
    with pytest.raises(ValueError, match=r"extra map: expected one of \['member_flair_threshold', "
                                         r"'member_tissue_outlier'\], received 'member_samseg'"):
        fresh.show_extra("member_samseg")
