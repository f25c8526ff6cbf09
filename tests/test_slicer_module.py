"""The Slicer extension's build and module file, without Slicer: CMake configure + install in
standalone mode with the machine's cmake (installed files == the module's files), and the module
file importing against minimal stand-ins of Slicer's Python modules (names and structure)."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from server_fixture import ROOT

MODULE_DIR = ROOT / "slicer_extension" / "AnomalyReview"


def module_files() -> set[str]:
    return {str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".png", ".ui")}


def test_cmake_standalone_configure_and_install(tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed on this machine")
    build, prefix = tmp_path / "build", tmp_path / "prefix"
    out = subprocess.run([cmake, "-S", str(ROOT), "-B", str(build), f"-DCMAKE_INSTALL_PREFIX={prefix}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "standalone mode" in out.stdout  # no Slicer here: the fallback chose itself
    out = subprocess.run([cmake, "--install", str(build)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    installed_root = prefix / "AnomalyReview"
    installed = {str(p.relative_to(installed_root)) for p in installed_root.rglob("*") if p.is_file()}
    assert {f for f in installed if f.endswith(".py")} == {f for f in module_files() if f.endswith(".py")}
    assert installed == module_files()
    for f in installed:
        assert (installed_root / f).read_bytes() == (MODULE_DIR / f).read_bytes()
    # the installed folder is usable as is: its library imports from there
    code = f"import sys; sys.path.insert(0, {str(installed_root)!r}); import AnomalyReviewLib; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"


def test_cmake_lists_every_module_file():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", "AnomalyReview")
    for f in module_files():
        assert f in text, f"{f} is not listed in slicer_extension/AnomalyReview/CMakeLists.txt"


class _Base:
    def __init__(self, parent=None):
        self.parent = parent


def test_module_file_structure_with_slicer_stand_ins(monkeypatch):
    """Slicer is not installable here: import the module file against stand-ins to check that it
    defines the template's classes and that every library name it uses exists."""
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
                 "ScriptedLoadableModuleWidget"):
        setattr(slm, name, type(name, (_Base,), {}))
    slicer = types.ModuleType("slicer")
    slicer.ScriptedLoadableModule = slm
    for name in ("qt", "ctk", "vtk"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "slicer", slicer)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    spec = importlib.util.spec_from_file_location("AnomalyReview_under_test", MODULE_DIR / "AnomalyReview.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert issubclass(mod.AnomalyReview, slm.ScriptedLoadableModule)
    assert issubclass(mod.AnomalyReviewWidget, slm.ScriptedLoadableModuleWidget)
    assert issubclass(mod.AnomalyReviewLogic, slm.ScriptedLoadableModuleLogic)
    assert issubclass(mod.AnomalyReviewTest, slm.ScriptedLoadableModuleTest)
    logic_api = ("connect", "start_infer", "start_next_case", "start_train", "start_save", "finish_infer",
                 "update_threshold", "decide", "jump_to_finding", "jump_to_slice", "edited_label", "screenshot", "wait")
    for name in logic_api:
        assert callable(getattr(mod.AnomalyReviewLogic, name)), name
    for name in ("test_display_pipeline", "test_server_flow", "runTest"):
        assert callable(getattr(mod.AnomalyReviewTest, name))
    src = (MODULE_DIR / "AnomalyReview.py").read_text(encoding="utf-8")
    assert "import requests" not in src and "import cgi" not in src and "torchvision" not in src
