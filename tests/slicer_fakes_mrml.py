"""Recording fakes of the MRML nodes, the scene and the module logics AnomalyReview touches, with
Slicer's documented defaults (see slicer_fakes.py)."""
from __future__ import annotations

import numpy as np
from slicer_api.api_check import Record
from slicer_fakes_vtk import vtkImageData, vtkObject, vtkTable

RECORD = Record()
GREY, GENERIC = "vtkMRMLColorTableNodeGrey", "vtkMRMLColorTableNodeFileGenericAnatomyColors.txt"


# ----------------------------------------------------------------------------- MRML nodes

class vtkMRMLNode(vtkObject):
    SLICER_CLASS = "vtkMRMLNode"

    def __init__(self, name=""):
        super().__init__()
        self.id, self.name, self.attributes, self.scene, self.singleton = None, name, {}, None, False

    def GetID(self):
        return self.id

    def GetName(self):
        return self.name

    def SetName(self, name):
        self.name = name

    def SetAttribute(self, name, value):
        self.attributes[name] = value

    def GetAttribute(self, name):
        return self.attributes.get(name)

    def GetScene(self):
        return self.scene


class vtkMRMLColorNode(vtkMRMLNode):
    SLICER_CLASS = "vtkMRMLColorNode"


class vtkMRMLScriptedModuleNode(vtkMRMLNode):
    SLICER_CLASS = "vtkMRMLScriptedModuleNode"

    def __init__(self, name=""):
        super().__init__(name)
        self.values = {}

    def GetParameter(self, name):
        return str(self.values.get(name, ""))

    def SetParameter(self, name, value):
        self.values[name] = value


class vtkMRMLDisplayNode(vtkMRMLNode):
    SLICER_CLASS = "vtkMRMLDisplayNode"
    DEFAULT_COLOR = None

    def __init__(self, name=""):
        super().__init__(name)
        self.color_node_id, self.visibility, self.opacity = self.DEFAULT_COLOR, True, 1.0

    def SetAndObserveColorNodeID(self, node_id):
        self._rec("SetAndObserveColorNodeID", node_id)
        if node_id is not None and self.scene.GetNodeByID(node_id) is None:
            raise ValueError(f"SetAndObserveColorNodeID: no colour node {node_id!r} in the scene")
        self.color_node_id = node_id

    def GetColorNodeID(self):
        return self.color_node_id

    def GetColorNode(self):
        return self.scene.GetNodeByID(self.color_node_id)

    def SetVisibility(self, v):
        self.visibility = bool(v)

    def GetVisibility(self):
        return self.visibility

    def SetOpacity(self, v):
        self.opacity = float(v)


class vtkMRMLVolumeDisplayNode(vtkMRMLDisplayNode):
    SLICER_CLASS = "vtkMRMLVolumeDisplayNode"


class vtkMRMLScalarVolumeDisplayNode(vtkMRMLVolumeDisplayNode):
    SLICER_CLASS = "vtkMRMLScalarVolumeDisplayNode"
    DEFAULT_COLOR = GREY  # vtkMRMLScalarVolumeDisplayNode::SetDefaultColorMap

    def __init__(self, name=""):
        super().__init__(name)
        self.auto_wl, self.window, self.apply_threshold = 1, (0.0, 1.0), 0
        self.lower, self.upper = -32768.0, 32767.0

    def AutoWindowLevelOn(self):
        self.auto_wl = 1

    def AutoWindowLevelOff(self):
        self.auto_wl = 0

    def GetAutoWindowLevel(self):
        return self.auto_wl

    def SetAutoWindowLevel(self, v):
        self.auto_wl = int(v)

    def SetWindowLevelMinMax(self, lo, hi):
        self._rec("SetWindowLevelMinMax", lo, hi)
        self.window = (float(lo), float(hi))

    def GetWindowLevelMin(self):
        return self.window[0]

    def GetWindowLevelMax(self):
        return self.window[1]

    def SetApplyThreshold(self, v):
        self.apply_threshold = int(v)

    def GetApplyThreshold(self):
        return self.apply_threshold

    def ApplyThresholdOn(self):
        self.apply_threshold = 1

    def ApplyThresholdOff(self):
        self.apply_threshold = 0

    def SetThreshold(self, lo, hi):
        self._rec("SetThreshold", lo, hi)
        self.lower, self.upper = float(lo), float(hi)

    def SetLowerThreshold(self, v):
        self.lower = float(v)

    def SetUpperThreshold(self, v):
        self.upper = float(v)

    def GetLowerThreshold(self):
        return self.lower

    def GetUpperThreshold(self):
        return self.upper


class vtkMRMLLabelMapVolumeDisplayNode(vtkMRMLVolumeDisplayNode):
    SLICER_CLASS = "vtkMRMLLabelMapVolumeDisplayNode"
    DEFAULT_COLOR = GENERIC


class vtkMRMLStorageNode(vtkMRMLNode):
    SLICER_CLASS = "vtkMRMLStorageNode"

    def __init__(self, file_name=None):
        super().__init__()
        self.file_name = file_name

    def GetFileName(self):
        return self.file_name

    def SetFileName(self, f):
        self.file_name = f


class vtkMRMLDisplayableNode(vtkMRMLNode):
    SLICER_CLASS = "vtkMRMLDisplayableNode"
    DISPLAY_CLASS = vtkMRMLDisplayNode

    def __init__(self, name=""):
        super().__init__(name)
        self.display = None

    def GetDisplayNode(self):
        return self.display

    def CreateDefaultDisplayNodes(self):
        if self.display is None:
            self.display = self.scene._add(self.DISPLAY_CLASS())


class vtkMRMLVolumeNode(vtkMRMLDisplayableNode):
    SLICER_CLASS = "vtkMRMLVolumeNode"

    def __init__(self, name=""):
        super().__init__(name)
        self.array, self.matrix, self.storage = None, np.eye(4), None

    def GetIJKToRASMatrix(self, m):
        m.m = self.matrix.copy()

    def SetIJKToRASMatrix(self, m):
        self.matrix = np.array(m.m, float)

    def GetImageData(self):
        return None if self.array is None else vtkImageData(self.array)

    def SetAndObserveImageData(self, image):
        self.array = image.array

    def GetStorageNode(self):
        return self.storage

    def CopyOrientation(self, other):
        self.matrix = other.matrix.copy()


class vtkMRMLScalarVolumeNode(vtkMRMLVolumeNode):
    SLICER_CLASS = "vtkMRMLScalarVolumeNode"
    DISPLAY_CLASS = vtkMRMLScalarVolumeDisplayNode


class vtkMRMLLabelMapVolumeNode(vtkMRMLScalarVolumeNode):
    SLICER_CLASS = "vtkMRMLLabelMapVolumeNode"
    DISPLAY_CLASS = vtkMRMLLabelMapVolumeDisplayNode


class vtkMRMLSliceNode(vtkMRMLNode):
    SLICER_CLASS = "vtkMRMLSliceNode"

    def __init__(self, name=""):
        super().__init__(name)
        self.use_label_outline = False  # Slicer's default: label maps drawn filled

    def SetUseLabelOutline(self, v):
        self._rec("SetUseLabelOutline", v)
        self.use_label_outline = bool(v)

    def GetUseLabelOutline(self):
        return self.use_label_outline

    def UseLabelOutlineOn(self):
        self.use_label_outline = True

    def UseLabelOutlineOff(self):
        self.use_label_outline = False

    def GetLayoutName(self):
        return self.name


class vtkMRMLSliceCompositeNode(vtkMRMLNode):
    SLICER_CLASS = "vtkMRMLSliceCompositeNode"

    def __init__(self, name=""):
        super().__init__(name)
        self.background = self.foreground = self.label = None
        self.foreground_opacity, self.label_opacity = 0.0, 1.0

    def GetBackgroundVolumeID(self):
        return self.background

    def SetBackgroundVolumeID(self, v):
        self.background = v

    def GetForegroundVolumeID(self):
        return self.foreground

    def SetForegroundVolumeID(self, v):
        self.foreground = v

    def GetLabelVolumeID(self):
        return self.label

    def SetLabelVolumeID(self, v):
        self.label = v

    def GetForegroundOpacity(self):
        return self.foreground_opacity

    def SetForegroundOpacity(self, v):
        self.foreground_opacity = float(v)

    def GetLabelOpacity(self):
        return self.label_opacity

    def SetLabelOpacity(self, v):
        self.label_opacity = float(v)


class vtkSegment(vtkObject):
    SLICER_CLASS = "vtkSegment"

    def __init__(self, name, color):
        super().__init__()
        self.name, self.color, self.array = name, color, None

    def GetName(self):
        return self.name

    def SetName(self, name):
        self.name = name

    def GetColor(self):
        return self.color


class vtkSegmentation(vtkObject):
    SLICER_CLASS = "vtkSegmentation"

    def __init__(self):
        super().__init__()
        self.segments, self._generated = {}, 0

    def AddEmptySegment(self, segment_id="", segment_name="", color=None):
        if not segment_id:  # generated IDs are not the names: a rename keeps the ID
            self._generated += 1
            segment_id = f"Segment_{self._generated}"
        self.segments[segment_id] = vtkSegment(segment_name or segment_id, color)
        return segment_id

    def RemoveSegment(self, segment_id):
        self.segments.pop(segment_id)

    def GetSegment(self, segment_id):
        return self.segments.get(segment_id)

    def GetNumberOfSegments(self):
        return len(self.segments)

    def GetNthSegmentID(self, i):
        return list(self.segments)[i]

    def GetSegmentIdBySegmentName(self, name):
        return next((k for k, s in self.segments.items() if s.name == name), "")


class vtkMRMLSegmentationDisplayNode(vtkMRMLDisplayNode):
    SLICER_CLASS = "vtkMRMLSegmentationDisplayNode"

    def __init__(self, name=""):
        super().__init__(name)
        self.fill, self.outline, self.fill_opacity, self.outline_opacity = True, True, 0.5, 1.0

    def SetVisibility2DFill(self, v):
        self.fill = bool(v)

    def GetVisibility2DFill(self):
        return self.fill

    def SetVisibility2DOutline(self, v):
        self.outline = bool(v)

    def GetVisibility2DOutline(self):
        return self.outline

    def SetOpacity2DFill(self, v):
        self.fill_opacity = float(v)

    def GetOpacity2DFill(self):
        return self.fill_opacity

    def SetOpacity2DOutline(self, v):
        self.outline_opacity = float(v)

    def GetOpacity2DOutline(self):
        return self.outline_opacity


class vtkMRMLSegmentationNode(vtkMRMLDisplayableNode):
    SLICER_CLASS = "vtkMRMLSegmentationNode"
    DISPLAY_CLASS = vtkMRMLSegmentationDisplayNode

    def __init__(self, name=""):
        super().__init__(name)
        self.segmentation, self.reference = vtkSegmentation(), None

    def GetSegmentation(self):
        return self.segmentation

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volume):
        self.reference = volume


class vtkMRMLTableNode(vtkMRMLNode):
    SLICER_CLASS = "vtkMRMLTableNode"

    def __init__(self, name=""):
        super().__init__(name)
        self.table = vtkTable()

    def SetAndObserveTable(self, t):
        self.table = t

    def GetTable(self):
        return self.table


class vtkMRMLPlotSeriesNode(vtkMRMLNode):
    SLICER_CLASS = "vtkMRMLPlotSeriesNode"
    PlotTypeLine, PlotTypeScatter, MarkerStyleCircle = 0, 2, 3

    def SetAndObserveTableNodeID(self, v):
        self._rec("SetAndObserveTableNodeID", v)

    def SetXColumnName(self, v):
        self._rec("SetXColumnName", v)

    def SetYColumnName(self, v):
        self._rec("SetYColumnName", v)

    def SetPlotType(self, v):
        self._rec("SetPlotType", v)

    def SetMarkerStyle(self, v):
        self._rec("SetMarkerStyle", v)


class vtkMRMLPlotChartNode(vtkMRMLNode):
    SLICER_CLASS = "vtkMRMLPlotChartNode"

    def AddAndObservePlotSeriesNodeID(self, v):
        self._rec("AddAndObservePlotSeriesNodeID", v)

    def SetXAxisTitle(self, v):
        self._rec("SetXAxisTitle", v)

    def SetYAxisTitle(self, v):
        self._rec("SetYAxisTitle", v)


class vtkMRMLLayoutNode(vtkMRMLNode):
    SLICER_CLASS = "vtkMRMLLayoutNode"
    SlicerLayoutConventionalPlotView = 36


NODE_CLASSES = {c.SLICER_CLASS: c for c in (
    vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode,
    vtkMRMLPlotSeriesNode, vtkMRMLPlotChartNode, vtkMRMLScriptedModuleNode)}


class vtkMRMLScene(vtkObject):
    SLICER_CLASS = "vtkMRMLScene"
    StartCloseEvent, EndCloseEvent, NodeAddedEvent, NodeRemovedEvent = 66001, 66002, 66003, 66004

    def __init__(self):
        super().__init__()
        self.nodes, self._count = {}, {}
        for cid in RECORD.data["color_node_ids"]:
            self._add(vtkMRMLColorNode(cid), cid, singleton=True)
        for view in ("Red", "Yellow", "Green"):
            self._add(vtkMRMLSliceNode(view), f"vtkMRMLSliceNode{view}", singleton=True)
            self._add(vtkMRMLSliceCompositeNode(view), f"vtkMRMLSliceCompositeNode{view}", singleton=True)

    def _add(self, node, node_id=None, singleton=False):
        cls = node.SLICER_CLASS
        self._count[cls] = self._count.get(cls, 0) + 1
        node.id = node_id or f"{cls}{self._count[cls]}"
        node.scene, node.singleton = self, singleton
        self.nodes[node.id] = node
        return node

    def AddNewNodeByClass(self, class_name, name=""):
        if class_name not in NODE_CLASSES:
            raise ValueError(f"AddNewNodeByClass: the fakes have no {class_name}")
        return self._add(NODE_CLASSES[class_name](name))

    def RemoveNode(self, node):
        self.nodes.pop(node.GetID(), None)

    def IsNodePresent(self, node):
        return node is not None and self.nodes.get(node.GetID()) is node

    def GetNodeByID(self, node_id):
        return self.nodes.get(node_id)

    def GetNodesByClass(self, class_name):
        return [n for n in self.nodes.values() if n.IsA(class_name)]

    def GetFirstNodeByClass(self, class_name):
        return next(iter(self.GetNodesByClass(class_name)), None)

    def Clear(self, remove_singletons=False):
        """Scene close: StartCloseEvent, every node but the singletons goes, EndCloseEvent."""
        self.InvokeEvent(self.StartCloseEvent)
        self.nodes = {k: n for k, n in self.nodes.items() if n.singleton and not remove_singletons}
        self.InvokeEvent(self.EndCloseEvent)


# ----------------------------------------------------------------------------- Slicer logics and views

class vtkSlicerMarkupsLogic(vtkObject):
    SLICER_CLASS = "vtkSlicerMarkupsLogic"

    def JumpSlicesToLocation(self, x, y, z, centered, view_group=-1, exclude=None):
        self._rec("JumpSlicesToLocation", x, y, z, centered)


class vtkSlicerPlotsLogic(vtkObject):
    SLICER_CLASS = "vtkSlicerPlotsLogic"

    def ShowChartInLayout(self, chart):
        self._rec("ShowChartInLayout", chart)


class vtkSlicerVolumesLogic(vtkObject):
    SLICER_CLASS = "vtkSlicerVolumesLogic"

    def CreateAndAddLabelVolume(self, scene, volume, name):
        label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
        label.array, label.matrix = np.zeros(volume.array.shape, np.int16), volume.matrix.copy()
        label.CreateDefaultDisplayNodes()
        return label


class vtkSlicerSegmentationsModuleLogic(vtkObject):
    SLICER_CLASS = "vtkSlicerSegmentationsModuleLogic"

    def ImportLabelmapToSegmentationNode(self, label, seg):
        for v in [int(x) for x in np.unique(label.array) if x > 0]:  # segments named after the label value
            sid = seg.GetSegmentation().AddEmptySegment("", str(v))
            seg.GetSegmentation().GetSegment(sid).array = (label.array == v).astype(np.uint8)
        return True


class vtkMRMLSliceLogic(vtkObject):
    SLICER_CLASS = "vtkMRMLSliceLogic"

    def __init__(self, scene, view):
        super().__init__()
        self.scene, self.view = scene, view

    def GetSliceCompositeNode(self):
        return self.scene.GetNodeByID(f"vtkMRMLSliceCompositeNode{self.view}")

    def GetSliceNode(self):
        return self.scene.GetNodeByID(f"vtkMRMLSliceNode{self.view}")
