"""Module-side MRML helpers of AnomalyReview: needs Slicer (imported by AnomalyReview.py only; the rest
of AnomalyReviewLib imports without it). Every Slicer call here is checked against the API record
in tests/slicer_api/ and exercised on recording fakes of the MRML nodes.
"""
import numpy as np
import slicer
import vtk

from . import display, nifti
from .review import ijk_to_slicer, slicer_to_ijk

# ----------------------------------------------------------------------------- volumes

def volume_affine(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_nifti_bytes(node) -> bytes:
    """An upload copy of a loaded volume, built in memory: the user's node and its storage (file
    name, modified state) are left alone, and no patient data is written to disk."""
    array = np.ascontiguousarray(slicer_to_ijk(slicer.util.arrayFromVolume(node)))
    return nifti.to_bytes(nifti.NiftiImage(array, volume_affine(node)))


def add_volume(image: nifti.NiftiImage, name: str, color_node_id=None, label=False, extra=None):
    """A new volume node holding `image` (float kept), marked as one of the module's outputs (and, with
    `extra`, as that extra map of the result: the extra-map selector lists nodes by this attribute) and
    coloured with `color_node_id` (the display node starts with Slicer's default grey or label table)."""
    cls = "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode"
    node = slicer.mrmlScene.AddNewNodeByClass(cls, name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.asarray(image.affine, float)))
    slicer.util.updateVolumeFromArray(node, ijk_to_slicer(image.array))
    node.SetAttribute(display.OUTPUT_ATTRIBUTE, "1")
    if extra:
        node.SetAttribute(display.EXTRA_ATTRIBUTE, extra)
    node.CreateDefaultDisplayNodes()
    if color_node_id:
        node.GetDisplayNode().SetAndObserveColorNodeID(color_node_id)
    return node


def set_label_array(node, array_ijk) -> None:
    slicer.util.updateVolumeFromArray(node, ijk_to_slicer(array_ijk))


def output_node_ids() -> list:
    """IDs of the module's own volumes (input selectors hide them)."""
    return [n.GetID() for n in slicer.util.getNodesByClass("vtkMRMLVolumeNode")
            if n.GetAttribute(display.OUTPUT_ATTRIBUTE) == "1"]


def extra_volumes() -> dict:
    """The result's extra maps in the scene, name -> node (a review restored from a saved scene)."""
    return {n.GetAttribute(display.EXTRA_ATTRIBUTE): n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if n.GetAttribute(display.EXTRA_ATTRIBUTE)}


def list_only_extra_maps(combo) -> None:
    """The extra-map selector lists the volumes marked as extra maps (any value of the attribute)."""
    combo.addAttribute("vtkMRMLScalarVolumeNode", display.EXTRA_ATTRIBUTE)


def hide_from_selector(combo, node_ids) -> None:
    combo.sortFilterProxyModel().hiddenNodeIDs = list(node_ids)


# ----------------------------------------------------------------------------- display

def show_map(node, window, threshold=None, hide_below=True, color_node_id=None) -> None:
    """Colour, window and display threshold of a float map: voxels under the threshold are
    transparent when `hide_below` (the findings' outlines are drawn on top, the map stays visible)."""
    d = node.GetDisplayNode()
    if color_node_id:
        d.SetAndObserveColorNodeID(color_node_id)
    d.AutoWindowLevelOff()
    d.SetWindowLevelMinMax(float(window[0]), float(window[1]))
    if threshold is None:
        d.SetApplyThreshold(0)
        return
    d.SetApplyThreshold(1 if hide_below else 0)
    d.SetThreshold(float(threshold), float(max(window[1], threshold)))


def show_layers(scan, overlay, label=None, opacity=0.5) -> None:
    """Scan under the coloured map; the findings label layer drawn as outlines (slice nodes'
    UseLabelOutline), fully opaque lines that leave the map visible inside them."""
    background = scan if scan is not None else "keep-current"
    slicer.util.setSliceViewerLayers(background=background, foreground=overlay, label=label,
                                     foregroundOpacity=float(opacity), labelOpacity=1.0)
    for slice_node in slicer.util.getNodesByClass("vtkMRMLSliceNode"):
        slice_node.SetUseLabelOutline(True)


def show_foreground(overlay) -> None:
    """Swap the coloured layer of the slice views; the scan, the findings' outlines and opacity stay."""
    slicer.util.setSliceViewerLayers(foreground=overlay)


def set_overlay_opacity(opacity) -> None:
    slicer.util.setSliceViewerLayers(foregroundOpacity=float(opacity))


# ----------------------------------------------------------------------------- segmentations

def add_segmentation(name, reference, segments):
    """A segmentation in `reference`'s geometry with one empty segment per (name, colour or None for
    Slicer's next generated colour); shown as
    outlines only. Returns (node, segment ids): callers keep the ids, so renaming a segment in the
    Segment Editor changes nothing."""
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    d = seg.GetDisplayNode()
    d.SetVisibility2DFill(False)
    d.SetVisibility2DOutline(True)
    d.SetOpacity2DOutline(1.0)
    s = seg.GetSegmentation()
    ids = [s.AddEmptySegment("", n) if c is None else s.AddEmptySegment("", n, list(c)) for n, c in segments]
    return seg, ids


def segment_ids(seg) -> list:
    s = seg.GetSegmentation()
    return [s.GetNthSegmentID(i) for i in range(s.GetNumberOfSegments())]


def segment_array(seg, segment_id, reference):
    """One segment as a (i, j, k) uint8 array in the reference grid (zeros when empty)."""
    arr = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segment_id, reference)
    return None if arr is None else slicer_to_ijk(arr)


def set_segment_array(seg, segment_id, reference, array_ijk) -> None:
    slicer.util.updateSegmentBinaryLabelmapFromArray(ijk_to_slicer(np.asarray(array_ijk, np.uint8)), seg,
                                                     segment_id, reference)


def union_of_segments(seg, reference, shape) -> np.ndarray:
    return display.union_label([segment_array(seg, sid, reference) for sid in segment_ids(seg)], shape)


# ----------------------------------------------------------------------------- chart

def add_chart(x_title, y_title):
    table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "Anomaly slice scores")
    series = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", "slice score")
    chart = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", "Anomaly slice scores")
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName("slice")
    series.SetYColumnName("score")
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetXAxisTitle(x_title)
    chart.SetYAxisTitle(y_title)
    for n in (table, series, chart):
        n.SetAttribute(display.OUTPUT_ATTRIBUTE, "1")
    return table, series, chart


def set_chart_values(table, values) -> None:
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


def show_chart(chart):
    """Put the chart in the layout; returns the plot view (qMRMLPlotView) that shows it."""
    lm = slicer.app.layoutManager()
    lm.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalPlotView)
    slicer.modules.plots.logic().ShowChartInLayout(chart)
    widget = lm.plotWidget(0)
    return widget.plotView() if widget is not None else None


def selected_points(selection) -> list:
    """qMRMLPlotView dataSelected(vtkStringArray*, vtkCollection*): the vtkCollection holds one
    vtkIdTypeArray of point indices per series."""
    out = []
    for i in range(selection.GetNumberOfItems()):
        ids = selection.GetItemAsObject(i)
        out.append([int(ids.GetValue(j)) for j in range(ids.GetNumberOfTuples())])
    return out


def jump_to(ras) -> None:
    slicer.modules.markups.logic().JumpSlicesToLocation(float(ras[0]), float(ras[1]), float(ras[2]), True)


def remove_nodes(nodes) -> None:
    for node in nodes:
        if node is not None and slicer.mrmlScene.IsNodePresent(node):
            slicer.mrmlScene.RemoveNode(node)
