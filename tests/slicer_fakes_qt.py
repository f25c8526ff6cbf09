"""Recording fakes of the Qt widgets AnomalyReview touches, built from its .ui file; every property,
method and signal is looked up in the API record (see slicer_fakes.py)."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
from slicer_fakes_mrml import RECORD
from slicer_fakes_vtk import Fake, norm_signal

# ----------------------------------------------------------------------------- Qt

class QtObject(Fake):
    """A Qt object of class `qt_class` (record): properties, methods and signals of that class only."""
    _INTERNAL = {"calls", "qt_class", "props", "slots", "blocked", "name", "dynamic", "children", "model"}

    def __init__(self, qt_class, name=""):
        super().__init__()
        for k, v in (("qt_class", qt_class), ("props", {}), ("slots", {}), ("blocked", False), ("name", name),
                     ("dynamic", {}), ("children", {}), ("model", None)):
            object.__setattr__(self, k, v)
        if qt_class not in RECORD.classes:
            raise AttributeError(f"Qt class {qt_class} is not in the API record")

    # the record decides what exists
    def _kind(self, name):
        for kind in ("properties", "methods"):
            if name in RECORD.members(self.qt_class, (kind,)):
                return kind
        return None

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        kind = self._kind(name)
        if kind == "properties":
            getter = getattr(type(self), f"_get_{name}", None)
            return getter(self) if getter else self.props.get(name)
        if kind == "methods":
            impl = getattr(type(self), f"_m_{name}", None)
            if impl is not None:
                return lambda *a, **k: (self._rec(name, *a), impl(self, *a, **k))[1]
            return lambda *a, **k: self._rec(name, *a)
        raise AttributeError(f"{self.qt_class} ({self.name}) has no attribute {name!r} in the API record")

    def __setattr__(self, name, value):
        if name in self._INTERNAL:
            object.__setattr__(self, name, value)
        elif self._kind(name) == "properties":
            setter = getattr(type(self), f"_set_{name}", None)
            setter(self, value) if setter else self.props.__setitem__(name, value)
        else:
            raise AttributeError(f"{self.qt_class} ({self.name}) has no property {name!r} in the API record")

    # signals (PythonQt: obj.connect("signal(args)", callable))
    def _m_connect(self, signal, slot):
        sig = norm_signal(signal)
        if sig not in RECORD.class_signals(self.qt_class):
            raise AttributeError(f"{self.qt_class} ({self.name}) has no signal {signal!r}")
        self.slots.setdefault(sig, []).append(slot)
        return True

    def _m_disconnect(self, signal, slot=None):
        self.slots.pop(norm_signal(signal), None)

    def _m_blockSignals(self, b):
        old = self.blocked
        self.blocked = bool(b)
        return old

    def _emit(self, signal, *args):
        if not self.blocked:
            for slot in list(self.slots.get(norm_signal(signal), [])):
                slot(*args)

    # widgets
    def _get_enabled(self):
        return self.props.get("enabled", True)

    def _m_setRange(self, lo, hi):
        self.props["minimum"], self.props["maximum"] = lo, hi

    def _m_setValue(self, v):
        self.props["value"] = v

    def _set_value(self, v):  # ctkSliderWidget: clamped to its range, valueChanged(double) when it moves
        lo, hi = self.props.get("minimum", -np.inf), self.props.get("maximum", np.inf)
        v = float(min(max(float(v), lo), hi))
        changed = v != self.props.get("value")
        self.props["value"] = v
        if changed and self.qt_class == "ctkSliderWidget":
            self._emit("valueChanged(double)", v)

    def _set_checked(self, v):
        changed = bool(v) != bool(self.props.get("checked", False))
        self.props["checked"] = bool(v)
        if changed:
            self._emit("toggled(bool)", bool(v))

    # QComboBox
    def _m_clear(self):
        self.props["items"], self.props["currentIndex"] = [], -1

    def _m_addItem(self, text, data=None):
        self.props.setdefault("items", []).append((text, data))
        if self.props.get("currentIndex", -1) < 0:
            self._m_setCurrentIndex(0)

    def _m_findText(self, text):
        return next((i for i, (t, _) in enumerate(self.props.get("items", [])) if t == text), -1)

    def _m_setCurrentIndex(self, i):
        self.props["currentIndex"] = i
        self._emit("currentIndexChanged(int)", i)

    def _get_currentText(self):
        items, i = self.props.get("items", []), self.props.get("currentIndex", -1)
        return items[i][0] if 0 <= i < len(items) else self.props.get("currentText", "")

    def _get_currentData(self):
        items, i = self.props.get("items", []), self.props.get("currentIndex", -1)
        return items[i][1] if 0 <= i < len(items) else None

    # QTableWidget
    def _rows(self):
        return self.props.setdefault("rows", [])

    def _m_setRowCount(self, n):
        rows = self._rows()
        del rows[n:]
        rows.extend({} for _ in range(n - len(rows)))

    def _m_insertRow(self, r):
        self._rows().insert(r, {})

    def _m_setItem(self, r, c, item):
        self._rows()[r][c] = item

    def _m_item(self, r, c):
        return self._rows()[r].get(c)

    def _get_rowCount(self):
        return len(self._rows())

    def _m_selectRow(self, r):
        self.props["selected"] = r if 0 <= r < len(self._rows()) else None

    def _m_selectionModel(self):
        return SelectionModel(self)

    # qMRMLNodeComboBox, qMRMLWidget, ctkRangeWidget
    def _m_setMRMLScene(self, scene):
        self.props["scene"] = scene
        for sender_signal, receiver in self.props.get("connections", []):
            if sender_signal == "mrmlSceneChanged(vtkMRMLScene*)":
                receiver.setMRMLScene(scene)

    def _m_currentNode(self):  # a node removed from the scene is no longer current (Slicer: None)
        node, scene = self.props.get("node"), self.props.get("scene")
        return node if node is None or scene is None or scene.IsNodePresent(node) else None

    def _m_addAttribute(self, node_type, name, value=None):
        self.props.setdefault("attributes", []).append((node_type, name, value))

    def _listed(self):
        """The nodes a qMRMLNodeComboBox lists: of `nodeTypes` (only those exact classes when
        showChildNodeTypes is false), with every attribute filter (a None value: any value), not hidden."""
        scene = self.props.get("scene")
        if scene is None:
            return []
        types = self.props.get("nodeTypes") or []
        child = self.props.get("showChildNodeTypes", True)
        hidden = set(self.model.props.get("hiddenNodeIDs") or []) if self.model is not None else set()
        out = []
        for n in scene.nodes.values():
            if not any(n.GetClassName() == t if not child else n.IsA(t) for t in types) or n.GetID() in hidden:
                continue
            if all(not n.IsA(t) or (n.GetAttribute(a) is not None if v is None else n.GetAttribute(a) == v)
                   for t, a, v in self.props.get("attributes", [])):
                out.append(n)
        return out

    def _m_nodeCount(self):
        return len(self._listed())

    def _m_nodeFromIndex(self, i):
        listed = self._listed()
        return listed[i] if 0 <= i < len(listed) else None

    def _m_setCurrentNode(self, node):
        self.props["node"] = node
        self._emit("currentNodeChanged(vtkMRMLNode*)", node)

    def _m_setCurrentNodeID(self, node_id):
        self._m_setCurrentNode(self.props["scene"].GetNodeByID(node_id))

    def _m_sortFilterProxyModel(self):
        if self.model is None:
            self.model = QtObject("qMRMLSortFilterProxyModel", f"{self.name}.sortFilterProxyModel")
        return self.model

    def _m_setValues(self, lo, hi):
        self.props["minimumValue"], self.props["maximumValue"] = lo, hi
        self._emit("valuesChanged(double,double)", lo, hi)

    # QTimer
    def _m_start(self, *_):
        self.props["active"] = True

    def _m_stop(self):
        self.props["active"] = False

    def _m_setInterval(self, ms):
        self.props["interval"] = ms

    def _m_setSingleShot(self, b):
        self.props["singleShot"] = bool(b)

    def _m_isActive(self):
        return bool(self.props.get("active"))

    def _fire(self):
        """Test helper: the timer's interval elapsed."""
        if self.props.get("singleShot"):
            self.props["active"] = False
        self._emit("timeout()")


class SelectionModel(QtObject):
    def __init__(self, table):
        super().__init__("QItemSelectionModel")
        object.__setattr__(self, "children", {"table": table})

    def _m_selectedRows(self):
        r = self.children["table"].props.get("selected")
        return [] if r is None else [ModelIndex(r)]


class ModelIndex(Fake):
    def __init__(self, r):
        super().__init__()
        self.r = r

    def row(self):
        return self.r


class QTableWidgetItem(Fake):
    SLICER_CLASS = "QTableWidgetItem"

    def __init__(self, text=""):
        super().__init__()
        self._text, self._flags = str(text), 0b111

    def text(self):
        return self._text

    def setText(self, t):
        self._text = str(t)

    def flags(self):
        return self._flags

    def setFlags(self, f):
        self._flags = f


class Layout(QtObject):
    def __init__(self):
        super().__init__("QLayout")
        object.__setattr__(self, "children", {"widgets": []})

    def _m_addWidget(self, w):
        self.children["widgets"].append(w)


def _ui_value(prop):
    child = list(prop)[0]
    if child.tag == "bool":
        return child.text == "true"
    if child.tag in ("double", "number"):
        return float(child.text)
    if child.tag == "stringlist":
        return [s.text for s in child]
    return child.text


def load_ui(path):
    """slicer.util.loadUI: the widget tree of the .ui file; XML properties go through the record."""
    root = ET.parse(path).getroot()
    widgets, top = {}, None
    for w in root.iter("widget"):
        obj = QtObject(w.get("class"), w.get("name"))
        for p in w.findall("property"):
            if p.get("stdset") == "0":
                obj.dynamic[p.get("name")] = _ui_value(p)
            else:
                obj.props[p.get("name")] = _ui_value(p)  # checked against the record by api_check.check_ui
        widgets[obj.name] = obj
        top = top or obj
    for c in root.iter("connection"):
        widgets[c.findtext("sender")].props.setdefault("connections", []).append(
            (norm_signal(c.findtext("signal")), widgets[c.findtext("receiver")]))
    top.children.update(widgets)
    return top
