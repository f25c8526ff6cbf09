"""Recording fakes of the few Slicer, Qt and VTK objects the AnomalyReview module touches.

Each fake stands for one class of the API record (tests/slicer_api/slicer_5_8_api.json) and has only
names the record lists for it (test_fakes_follow_the_record checks that), with Slicer's documented
defaults: a new scalar volume gets the Grey table, slice nodes draw label maps filled, a
segmentation draws fill and outline. Calls and values are recorded so tests assert what the module
set; an attribute, method, Qt signal or widget property outside the record raises, as a misspelled
call must fail. MRML, Qt and VTK fakes: slicer_fakes_mrml.py, slicer_fakes_qt.py, slicer_fakes_vtk.py.

`install(monkeypatch)` puts fake `slicer`, `qt`, `ctk` and `vtk` modules into sys.modules and returns
a `Fakes` handle (scene, layout manager, dialogs, answers to give).
"""
from __future__ import annotations

import sys
import types
import unittest
from pathlib import Path

import numpy as np
import slicer_fakes_mrml as mrml
import slicer_fakes_vtk as fvtk
from slicer_fakes_qt import Layout, QTableWidgetItem, QtObject, load_ui
from slicer_fakes_vtk import Fake

RECORD = mrml.RECORD
MODULE_DIR = Path(__file__).resolve().parents[1] / "slicer_extension" / "AnomalyReview"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))
from AnomalyReviewLib import nifti  # noqa: E402  (reads what loadVolume gets, as Slicer's reader would)

# ----------------------------------------------------------------------------- slicer.util

class Fakes:
    """What a test sees: the scene, the views, dialogs shown, answers to give."""

    def __init__(self):
        self.scene = mrml.vtkMRMLScene()
        self.layout = None
        self.dialogs, self.confirm_answer, self.save_file_answer = [], True, ""
        self.markups, self.plots = mrml.vtkSlicerMarkupsLogic(), mrml.vtkSlicerPlotsLogic()
        self.plot_view = QtObject("qMRMLPlotView", "plotView")
        self.timers, self.processed_events = [], 0

    def process_events(self):
        """slicer.app.processEvents(): timers that are running fire once."""
        self.processed_events += 1
        for t in list(self.timers):
            if t.isActive():
                t._fire()

    def composite_nodes(self):
        return self.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")

    def slice_nodes(self):
        return self.scene.GetNodesByClass("vtkMRMLSliceNode")


def make_util(f: Fakes):
    util = types.ModuleType("slicer.util")

    def _load(path, properties, class_name):
        img = nifti.read(path)
        node = f.scene.AddNewNodeByClass(class_name, (properties or {}).get("name", Path(path).stem))
        node.array = np.ascontiguousarray(np.asarray(img.array).transpose(2, 1, 0))
        node.matrix = np.array(img.affine, float)
        node.storage = mrml.vtkMRMLStorageNode(str(path))
        node.CreateDefaultDisplayNodes()  # vtkSlicerVolumesLogic: a new volume gets the Grey table
        return node

    def loadVolume(path, properties=None):
        node = _load(path, properties, "vtkMRMLScalarVolumeNode")
        if (properties or {}).get("show", True):
            setSliceViewerLayers(background=node)
        return node

    def loadLabelVolume(path, properties=None):
        node = _load(path, properties, "vtkMRMLLabelMapVolumeNode")
        node.array = node.array.astype(np.int16)
        return node

    def saveNode(node, path, properties=None):
        nifti.write(nifti.NiftiImage(np.asarray(node.array).transpose(2, 1, 0), node.matrix), path)
        node.storage = node.storage or mrml.vtkMRMLStorageNode()
        node.storage.SetFileName(str(path))  # Slicer's writer re-points the node's storage at the new file
        return True

    def arrayFromVolume(node):
        return node.array

    def updateVolumeFromArray(node, array):
        node.array = np.array(array)

    def vtkMatrixFromArray(a):
        m = fvtk.vtkMatrix4x4()
        m.m = np.array(a, float)
        return m

    def setSliceViewerLayers(background="keep-current", foreground="keep-current", label="keep-current",
                             foregroundOpacity=None, labelOpacity=None, fit=False, rotateToVolumePlane=False):
        for c in f.composite_nodes():
            for value, setter in ((background, c.SetBackgroundVolumeID), (foreground, c.SetForegroundVolumeID),
                                  (label, c.SetLabelVolumeID)):
                if not (isinstance(value, str) and value == "keep-current"):
                    setter(value.GetID() if value is not None else None)
            if foregroundOpacity is not None:
                c.SetForegroundOpacity(foregroundOpacity)
            if labelOpacity is not None:
                c.SetLabelOpacity(labelOpacity)

    def getNodesByClass(class_name, scene=None):
        return f.scene.GetNodesByClass(class_name)

    def _segment(seg, segment_id):
        s = seg.GetSegmentation().GetSegment(segment_id)
        if s is None:
            raise ValueError(f"segment {segment_id!r} not found in {seg.GetName()}")
        return s

    def arrayFromSegmentBinaryLabelmap(seg, segment_id, reference=None):
        s = _segment(seg, segment_id)
        shape = (reference or seg.reference).array.shape
        return np.zeros(shape, np.uint8) if s.array is None else s.array.copy()

    def updateSegmentBinaryLabelmapFromArray(narray, seg, segment_id, reference=None):
        s = _segment(seg, segment_id)
        ref = reference or seg.reference
        if narray.shape != ref.array.shape:
            raise ValueError(f"array shape {narray.shape} is not the reference's {ref.array.shape}")
        s.array = np.array(narray, np.uint8)

    def confirmOkCancelDisplay(text, windowTitle=None, parent=None, **kwargs):
        f.dialogs.append(text)
        return f.confirm_answer

    def loadUI(path):
        if not Path(path).exists():
            raise RuntimeError(f"Could not load UI file: file not found {path}")
        return load_ui(path)

    def childWidgetVariables(widget):
        return types.SimpleNamespace(**widget.children)

    class VTKObservationMixin:
        def __init__(self):
            self.Observations = []

        def addObserver(self, obj, event, method, priority=0.0):
            self.Observations.append((obj, event, method, obj.AddObserver(event, method, priority)))

        def removeObserver(self, obj, event, method):
            for o in [o for o in self.Observations if o[:3] == (obj, event, method)]:
                obj.RemoveObserver(o[3])
                self.Observations.remove(o)

        def removeObservers(self, method=None):
            for o in [o for o in self.Observations if method is None or o[2] == method]:
                o[0].RemoveObserver(o[3])
                self.Observations.remove(o)

        def hasObserver(self, obj, event, method):
            return any(o[:3] == (obj, event, method) for o in self.Observations)

    for name in RECORD.modules["slicer.util"]:
        setattr(util, name, locals()[name])
    return util


# ----------------------------------------------------------------------------- parameter node, scripted module

def parameterNodeWrapper(cls):
    fields = {n: (t, cls.__dict__.get(n)) for n, t in cls.__annotations__.items()}

    class Wrapper:
        def __init__(self, node):
            object.__setattr__(self, "parameterNode", node)
            for n, (_, default) in fields.items():
                node.values.setdefault(n, default)

        def __getattr__(self, n):
            if n not in fields:
                raise AttributeError(f"{cls.__name__} has no parameter {n!r}")
            return self.parameterNode.values[n]

        def __setattr__(self, n, v):
            if n not in fields:
                raise AttributeError(f"{cls.__name__} has no parameter {n!r}")
            t = fields[n][0]
            if isinstance(t, type) and issubclass(t, mrml.vtkMRMLNode):
                ok = v is None or isinstance(v, t)
            elif t is float:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            else:
                ok = isinstance(v, t)
            if not ok:
                raise TypeError(f"parameter {n}: expected {t.__name__}, received {type(v).__name__}")
            self.parameterNode.values[n] = v

        def connectGui(self, ui):
            bound = {}
            for w in vars(ui).values():
                p = w.dynamic.get("SlicerParameterName")
                if p is not None:
                    if p not in fields:
                        raise ValueError(f"SlicerParameterName {p!r} of {w.name}: no such parameter")
                    bound[w.name] = p
            self.parameterNode.values.setdefault("_gui", []).append(bound)
            return bound

        def disconnectGui(self, tag):
            self.parameterNode.values["_gui"].remove(tag)

    Wrapper.__name__ = cls.__name__
    Wrapper.fields = fields
    return Wrapper


def make_slm(f: Fakes):
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.moduleName = type(self).__name__[:-len("Logic")]

        def getParameterNode(self):
            for n in f.scene.GetNodesByClass("vtkMRMLScriptedModuleNode"):
                if n.GetAttribute("ModuleName") == self.moduleName:
                    return n
            n = f.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", self.moduleName)
            n.SetAttribute("ModuleName", self.moduleName)
            return n

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent or types.SimpleNamespace(isEntered=True)
            self.moduleName = type(self).__name__[:-len("Widget")]

        def setup(self):
            self.layout = Layout()

        def resourcePath(self, filename):
            return str(Path(sys.modules[type(self).__module__].__file__).parent / "Resources" / filename)

        def cleanup(self):
            pass

        def enter(self):
            pass

        def exit(self):
            pass

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass

    for c in (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget,
              ScriptedLoadableModuleTest):
        setattr(slm, c.__name__, c)
    return slm


class LayoutManager(QtObject):
    def __init__(self, f: Fakes):
        super().__init__("qMRMLLayoutManager")
        object.__setattr__(self, "model", f)

    def _m_setLayout(self, layout_id):
        self.props["layout"] = layout_id

    def _m_sliceWidget(self, name):
        w = QtObject("qMRMLSliceWidget", name)
        w.props["logic"] = mrml.vtkMRMLSliceLogic(self.model.scene, name)
        return w

    def _m_plotWidget(self, i):
        if self.props.get("layout") != mrml.vtkMRMLLayoutNode.SlicerLayoutConventionalPlotView:
            return None  # no plot view in the current layout
        w = QtObject("qMRMLPlotWidget", "plotWidget")
        w.props["view"] = self.model.plot_view
        return w


def _slice_logic(self):
    return self.props["logic"]


def _plot_view(self):
    return self.props["view"]


QtObject._m_sliceLogic = _slice_logic
QtObject._m_plotView = _plot_view


def install(monkeypatch) -> Fakes:
    f = Fakes()
    f.layout = LayoutManager(f)
    slicer = types.ModuleType("slicer")
    slicer.mrmlScene = f.scene
    slicer.util = make_util(f)
    slicer.ScriptedLoadableModule = make_slm(f)
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = parameterNodeWrapper
    slicer.parameterNodeWrapper = pnw

    class App(Fake):
        def layoutManager(self):
            return f.layout

        def processEvents(self):
            f.process_events()

    slicer.app = App()

    def module(logic):
        return types.SimpleNamespace(logic=lambda: logic)

    slicer.modules = types.SimpleNamespace(markups=module(f.markups), plots=module(f.plots),
                                           volumes=module(mrml.vtkSlicerVolumesLogic()),
                                           segmentations=module(mrml.vtkSlicerSegmentationsModuleLogic()))
    for name in RECORD.modules["slicer"]:
        if name.startswith("vtkMRML"):
            setattr(slicer, name, getattr(mrml, name))
    qt = types.ModuleType("qt")
    def QTimer():
        t = QtObject("QTimer", f"timer{len(f.timers)}")
        f.timers.append(t)
        return t

    qt.QTimer = QTimer
    qt.QTableWidgetItem = QTableWidgetItem
    qt.Qt = types.SimpleNamespace(ItemIsEditable=0b10)
    qt.QFileDialog = types.SimpleNamespace(getSaveFileName=lambda *a: f.save_file_answer)
    ctk = types.ModuleType("ctk")
    vtk = types.ModuleType("vtk")
    for name in ("vtkMatrix4x4", "vtkTable", "vtkFloatArray", "vtkIdTypeArray", "vtkStringArray", "vtkCollection"):
        setattr(vtk, name, getattr(fvtk, name))
    vtk.VTK_FLOAT = fvtk.VTK_TYPES["float32"]
    vtk.vtkCommand = types.SimpleNamespace(ModifiedEvent=33)
    for name, mod in (("slicer", slicer), ("slicer.util", slicer.util), ("slicer.parameterNodeWrapper", pnw),
                      ("slicer.ScriptedLoadableModule", slicer.ScriptedLoadableModule), ("qt", qt), ("ctk", ctk),
                      ("vtk", vtk)):
        monkeypatch.setitem(sys.modules, name, mod)
    for name in [m for m in sys.modules if m.startswith("AnomalyReviewLib.slicer_") or m == "AnomalyReview"]:
        monkeypatch.delitem(sys.modules, name)  # module-side files import the fakes afresh
    package = sys.modules.get("AnomalyReviewLib")
    for attr in [a for a in vars(package or object) if a.startswith("slicer_")] if package else []:
        monkeypatch.delattr(package, attr)
    return f


def load_module(monkeypatch, path=MODULE_DIR / "AnomalyReview.py"):
    """Import AnomalyReview.py (or another copy of it) against freshly installed fakes."""
    import importlib.util

    f = install(monkeypatch)
    spec = importlib.util.spec_from_file_location("AnomalyReview", path)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "AnomalyReview", mod)
    spec.loader.exec_module(mod)
    return f, mod
