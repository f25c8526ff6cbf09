"""The allowed import directions of docs/architecture.md, checked on every module's syntax tree
(function-level imports included): a new import that runs the wrong way fails here."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package folder -> the name it imports as
PACKAGES = {"uad_label": "uad_label", "kernels": "uad_kernels", "server_app": "uad_server_app"}

# Layers, bottom first: a module may import its own layer and the layers below, never above.
LAYERS = [
    ("base", {"uad_kernels", "uad_label.errors", "uad_label.device", "uad_label.atomic"}),
    ("arrays", {"uad_label.transforms", "uad_label.networks", "uad_label.diffusion", "uad_label.augment",
                "uad_label.postprocess"}),
    ("images", {"uad_label.io", "uad_label.cases", "uad_label.template", "uad_label.preprocess", "uad_label.tissue",
                "uad_label.results", "uad_label.weights", "uad_label.synth", "uad_label.runtime"}),
    ("detectors", {"uad_label.detectors"}),
    ("training", {"uad_label.training"}),
    ("front ends", {"uad_label.cli", "uad_label.server", "uad_label.batch", "uad_label.active",
                    "uad_label.evaluation", "uad_label.dicom", "uad_server_app", "uad_label"}),
]
# the GPU image has torch, triton, cupy, numpy, scipy, scikit-image: no SimpleITK, nibabel, MONAI Label
IMAGE_LIBRARIES = {"SimpleITK", "nibabel", "monailabel"}
FRONT_END_LIBRARIES = {"monailabel", "fastapi", "uvicorn"}


def _unit(module: str) -> str:
    """The layer unit of a dotted module name: 'uad_label.detectors.ppr' -> 'uad_label.detectors'."""
    parts = module.split(".")
    if parts[0] == "uad_label" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def _layer(unit: str) -> int | None:
    for i, (_, units) in enumerate(LAYERS):
        if unit in units:
            return i
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import in `source`."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names = [a.name for a in node.names]
            if not node.module:  # `from . import x`: each name is a module of that package
                out.extend((f"{target}.{n}", [], node.lineno) for n in names)
            else:
                out.append((target, names, node.lineno))
    return out


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    unit = _unit(module)
    mine = _layer(unit)
    found = []
    for target, names, line in imports(source, module, is_package):
        top = target.split(".")[0]
        where = f"{module}:{line} imports {target}"
        if mine is not None and mine <= 1 and top in IMAGE_LIBRARIES:
            found.append(f"{where}: layer '{LAYERS[mine][0]}' must import on the GPU image (no {top})")
        if top in FRONT_END_LIBRARIES and mine is not None and mine < len(LAYERS) - 1:
            found.append(f"{where}: only front ends talk to MONAI Label / the web stack")
        if unit == "uad_kernels" and top in ("uad_label", "uad_server_app"):
            found.append(f"{where}: the kernel library depends on nothing of the product")
        theirs = _layer(_unit(target)) if top in PACKAGES.values() else None
        if mine is not None and theirs is not None and theirs > mine:
            found.append(f"{where}: layer '{LAYERS[mine][0]}' may not import layer '{LAYERS[theirs][0]}'")
        if unit == "uad_label.training" and _unit(target) == "uad_label.detectors":
            private = [n for n in names if n.startswith("_")]
            if private:
                found.append(f"{where}: training uses private detector names {private}")
    return found


def _modules():
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, module_name(path)


def test_every_package_has_a_layer():
    units = {_unit(m) for _, m in _modules()}
    assert {u for u in units if _layer(u) is None} == set()


def test_imports_run_downward():
    found = [v for path, m in _modules()
             for v in violations(path.read_text(encoding="utf-8"), m, path.name == "__init__.py")]
    assert found == []


@pytest.mark.parametrize("module, source, message", [
    ("uad_label.detectors.ppr", "from ..training import resolve_device", "may not import layer 'training'"),
    ("uad_label.networks.ppr_maps", "import SimpleITK as sitk", "GPU image"),
    ("uad_label.preprocess.pipeline", "from ..detectors import get_detector", "may not import layer 'detectors'"),
    ("uad_label.training.strega", "from ..detectors.recon_base import _helper", "private detector names"),
    ("uad_kernels.inpaint", "from uad_label.errors import InputError", "depends on nothing"),
    ("uad_label.detectors.base", "import monailabel", "only front ends"),
    ("uad_label.transforms.canvas", "def f():\n    from ..cli import main", "may not import layer 'front ends'"),
])
def test_a_wrong_way_import_is_caught(module, source, message):
    found = violations(source, module)
    assert found and message in found[0]


def test_allowed_imports_pass():
    assert violations("from ..networks.ppr_maps import exact_map\nfrom ..device import resolve_device",
                      "uad_label.detectors.ppr") == []
    assert violations("from ..detectors.strega import canvas_tissue_input", "uad_label.training.strega") == []
