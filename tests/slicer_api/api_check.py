"""Check the AnomalyReview module's Slicer API use against the committed record (slicer_5_8_api.json).

Walks the syntax tree of the module-side files and reports:
- `slicer.*`, `qt.*`, `ctk.*`, `vtk.*` names (and names imported from them) missing from the record;
- MRML / VTK method calls (CamelCase `x.Method(...)`) that no recorded class has;
- Qt signal strings (`"name(args)"`) that no recorded class emits, and, for widgets of the .ui file,
  signals, methods and properties their own class lacks;
- parameter-node fields that the @parameterNodeWrapper class does not declare;
- .ui widgets bound (SlicerParameterName) to a field of a type no GUI connector of Slicer joins to that
  widget class (e.g. a QComboBox to a plain str: Slicer's connector needs a Choice annotation);
and checks the .ui file (widget classes, properties, SlicerParameterName bindings, connections).
No Slicer needed: this is how the module is tested against Slicer's real API on a machine without it.
"""
from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

RECORD = Path(__file__).with_name("slicer_5_8_api.json")
ROOTS = ("slicer", "qt", "ctk", "vtk")
SIGNAL_RE = re.compile(r"^[A-Za-z_]\w*\((?:[\w:]+\s*\**(?:\s*,\s*[\w:]+\s*\**)*)?\)$")
PARAM_NODE_EXTRA = {"connectGui", "disconnectGui"}


class Record:
    def __init__(self, path=RECORD):
        self.data = json.loads(Path(path).read_text(encoding="utf-8"))
        self.modules = {k: set(v) for k, v in self.data["modules"].items()}
        self.objects = self.data["objects"]
        self.classes = self.data["classes"]
        self.methods = {m for c in self.classes.values() for m in c.get("methods", [])}
        self.constants = {m for c in self.classes.values() for m in c.get("constants", [])}
        self.signals = {s for c in self.classes.values() for s in c.get("signals", [])}

    def _walk(self, cls):
        seen, todo = [], [cls]
        while todo:
            c = todo.pop()
            if c in seen or c not in self.classes:
                continue
            seen.append(c)
            todo.extend(self.classes[c].get("bases", []))
        return seen

    def members(self, cls, kinds=("methods", "properties", "signals", "constants")) -> set:
        out = set()
        for c in self._walk(cls):
            for k in kinds:
                for m in self.classes[c].get(k, []):
                    out.add(m.split("(")[0] if k == "signals" else m)
        return out

    def class_signals(self, cls) -> set:
        return {s for c in self._walk(cls) for s in self.classes[c].get("signals", [])}


def _norm_signal(s: str) -> str:
    return re.sub(r"\s+", "", s)


def ui_widgets(ui_path) -> dict:
    root = ET.parse(ui_path).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def parameter_fields(tree: ast.AST) -> set:
    """Fields of every class decorated with @parameterNodeWrapper."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list):
            out |= {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    return out


def parameter_field_types(tree: ast.AST) -> dict:
    """Field -> annotation source text, for every class decorated with @parameterNodeWrapper."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list):
            out.update({s.target.id: ast.unparse(s.annotation) for s in node.body
                        if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)})
    return out


def binding_problem(record: Record, widget_class: str, annotation: str):
    """Why Slicer's GUI connectors cannot join a widget of `widget_class` to a field annotated `annotation`
    (None when one can)."""
    connectors = record.data["scripted_module"]["parameterNodeWrapper"]["gui_connectors"]
    rule = connectors.get(widget_class)
    if rule is None:
        return f"no GUI connector of Slicer takes a {widget_class}"
    if any(marker in annotation for marker in rule.get("needs_annotation", [])):
        return None
    base = annotation.split("[", 1)[1].split(",")[0].strip() if annotation.startswith("Annotated[") else annotation
    if base in rule.get("types", []) or ("node" in rule.get("types", []) and base.startswith("vtkMRML")):
        return None
    return f"{widget_class} cannot be bound to a field of type {annotation} ({rule['why']})"


def _chain(node):
    """'a.b.c' for a pure Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def check_source(source: str, record: Record, widgets: dict, fields: set, filename: str = "<module>") -> list:
    tree = ast.parse(source, filename)
    problems = []
    aliases = {r: r for r in ROOTS}  # local name -> dotted Slicer path
    other_modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                if top in ROOTS:
                    aliases[a.asname or top] = a.name if a.asname else top
                else:
                    other_modules.add(a.asname or top)
        elif isinstance(node, ast.ImportFrom):
            top = node.module.split(".")[0] if node.module and not node.level else ""
            for a in node.names:
                if top in ROOTS:
                    if a.name not in record.modules.get(node.module, set()):
                        problems.append(f"{filename}:{node.lineno}: from {node.module} import {a.name}: "
                                        "not in the record")
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                else:
                    other_modules.add(a.asname or a.name)
    class_strings = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for s in node.body:
                if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str):
                    for t in s.targets:
                        if isinstance(t, ast.Name):
                            class_strings[t.id] = s.value.value

    def where(n):
        return f"{filename}:{getattr(n, 'lineno', '?')}"

    # 1. dotted names rooted at slicer / qt / ctk / vtk
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or isinstance(parents.get(node), ast.Attribute):
            continue
        chain = _chain(node)
        if chain is None:
            continue
        head, *rest = chain.split(".")
        if head not in aliases:
            continue
        cur = aliases[head]
        for attr in rest:
            if cur in record.modules:
                if attr not in record.modules[cur]:
                    problems.append(f"{where(node)}: {cur}.{attr}: not in the record")
                    break
                cur = f"{cur}.{attr}"
            elif cur in record.objects:
                if attr not in record.members(record.objects[cur]):
                    problems.append(f"{where(node)}: {cur}.{attr}: {record.objects[cur]} has no {attr}")
                break
            else:
                break

    # names bound to the ui object, to ui widgets, and to parameter nodes, per function
    for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.Lambda))] + [tree]:
        ui_names, param_names = set(), set()
        for n in ast.walk(func):
            if isinstance(n, ast.Assign):
                pairs = []
                for t in n.targets:
                    if isinstance(t, ast.Tuple) and isinstance(n.value, ast.Tuple):
                        pairs += list(zip(t.elts, n.value.elts))
                    else:
                        pairs.append((t, n.value))
                for t, v in pairs:
                    if isinstance(t, ast.Name) and _chain(v) == "self.ui":
                        ui_names.add(t.id)
                    if isinstance(t, ast.Name) and isinstance(v, ast.Call) and isinstance(v.func, ast.Attribute) \
                            and v.func.attr == "getParameterNode":
                        param_names.add(t.id)

        def widget_of(expr):
            c = _chain(expr)
            if c is None:
                return None
            parts = c.split(".")
            if parts[:2] == ["self", "ui"] and len(parts) == 3:
                return parts[2]
            if len(parts) == 2 and parts[0] in ui_names:
                return parts[1]
            return None

        for n in ast.walk(func):
            # widgets of the .ui and their members
            if isinstance(n, ast.Attribute):
                name = widget_of(n)
                if name is not None and name not in widgets:
                    problems.append(f"{where(n)}: ui.{name}: no such widget in the .ui file")
                owner = widget_of(n.value)
                if owner in widgets and n.attr not in record.members(widgets[owner]):
                    problems.append(f"{where(n)}: ui.{owner}.{n.attr}: {widgets[owner]} has no {n.attr}")
                if fields and ((isinstance(n.value, ast.Name) and n.value.id in param_names) or (
                        isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Attribute)
                        and n.value.func.attr == "getParameterNode")):
                    if n.attr not in fields | PARAM_NODE_EXTRA:
                        problems.append(f"{where(n)}: parameter node field {n.attr!r} is not declared")
            # typed signal checks: ui.X.connect("sig", ...) and (ui.X, "sig", slot) tuples
            pair = None
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.args \
                    and n.func.attr in ("connect", "disconnect"):
                pair = (n.func.value, n.args[0])
            elif isinstance(n, ast.Tuple) and len(n.elts) >= 2 and isinstance(n.elts[1], ast.Constant):
                pair = (n.elts[0], n.elts[1])
            if pair is not None:
                owner, sig = pair
                text = sig.value if isinstance(sig, ast.Constant) else class_strings.get(
                    sig.attr if isinstance(sig, ast.Attribute) else getattr(sig, "id", None))
                name = widget_of(owner)
                if isinstance(text, str) and name in widgets and SIGNAL_RE.match(text) and \
                        _norm_signal(text) not in record.class_signals(widgets[name]):
                    problems.append(f"{where(n)}: ui.{name} ({widgets[name]}) has no signal {text}")

    for node in ast.walk(tree):
        # 2. MRML / VTK methods (CamelCase calls on objects)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr[:1].isupper():
            recv = _chain(node.func.value)
            head = recv.split(".")[0] if recv else None
            if head not in aliases and head not in other_modules and node.func.attr not in record.methods:
                problems.append(f"{where(node)}: method {node.func.attr}(): no class of the record has it")
        # 3. every signal-like string must be a recorded signal
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SIGNAL_RE.match(node.value):
            if _norm_signal(node.value) not in record.signals:
                problems.append(f"{where(node)}: signal {node.value!r}: not in the record")
    return problems


def check_ui(ui_path, record: Record, fields: set, field_types: dict | None = None) -> list:
    problems = []
    root = ET.parse(ui_path).getroot()
    allowed = set(record.data["ui_widget_classes"])
    widgets = {}
    for w in root.iter("widget"):
        cls, name = w.get("class"), w.get("name")
        widgets[name] = cls
        if cls not in allowed or cls not in record.classes:
            problems.append(f"{ui_path}: widget {name}: class {cls} not in the record")
            continue
        for p in w.findall("property"):
            if p.get("stdset") == "0":
                value = p.findtext("string")
                if p.get("name") != "SlicerParameterName":
                    problems.append(f"{ui_path}: {name}: dynamic property {p.get('name')} is not used by Slicer")
                elif value not in fields:
                    problems.append(f"{ui_path}: {name}: SlicerParameterName {value!r} is no parameter node field")
                elif field_types and value in field_types:
                    why = binding_problem(record, cls, field_types[value])
                    if why:
                        problems.append(f"{ui_path}: {name}: SlicerParameterName {value!r}: {why}")
            elif p.get("name") not in record.members(cls, ("properties",)):
                problems.append(f"{ui_path}: {name}: {cls} has no property {p.get('name')}")
    for c in root.iter("connection"):
        sender, signal = c.findtext("sender"), c.findtext("signal")
        receiver, slot = c.findtext("receiver"), c.findtext("slot")
        if _norm_signal(signal) not in record.class_signals(widgets.get(sender, "")):
            problems.append(f"{ui_path}: connection {sender}.{signal}: no such signal")
        if slot.split("(")[0] not in record.members(widgets.get(receiver, ""), ("methods",)):
            problems.append(f"{ui_path}: connection to {receiver}.{slot}: no such slot")
    return problems


def check_module(module_dir, record: Record | None = None, sources: dict | None = None) -> list:
    """All problems of the module folder (`sources`: file name -> text, to check edited copies)."""
    module_dir = Path(module_dir)
    record = record or Record()
    side = sorted(f"AnomalyReviewLib/{p.name}" for p in (module_dir / "AnomalyReviewLib").glob("slicer_*.py"))
    files = ["AnomalyReview.py"] + side
    texts = {f: (sources or {}).get(f) or (module_dir / f).read_text(encoding="utf-8") for f in files}
    fields, field_types = set(), {}
    for text in texts.values():
        fields |= parameter_fields(ast.parse(text))
        field_types.update(parameter_field_types(ast.parse(text)))
    ui = module_dir / "Resources" / "UI" / "AnomalyReview.ui"
    widgets = ui_widgets(ui)
    problems = check_ui(ui, record, fields, field_types)
    for f, text in texts.items():
        problems += check_source(text, record, widgets, fields, f)
    return problems
