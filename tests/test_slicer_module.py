"""The Slicer extension's build and module file, without Slicer: CMake configure + install in
standalone mode with the machine's cmake (installed files == the module's files), the self-test
registered as a ctest, and the module file in Slicer's shape on recording fakes of Slicer."""
from __future__ import annotations

import shutil
import subprocess
import sys

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
                         capture_output=True, encoding="utf-8", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "standalone mode" in out.stdout  # no Slicer here: the fallback chose itself
    out = subprocess.run([cmake, "--install", str(build)], capture_output=True, encoding="utf-8", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    installed_root = prefix / "AnomalyReview"
    installed = {str(p.relative_to(installed_root)) for p in installed_root.rglob("*") if p.is_file()}
    assert {f for f in installed if f.endswith(".py")} == {f for f in module_files() if f.endswith(".py")}
    assert installed == module_files()
    for f in installed:
        assert (installed_root / f).read_bytes() == (MODULE_DIR / f).read_bytes()
    # the installed folder is usable as is: its library imports from there
    code = f"import sys; sys.path.insert(0, {str(installed_root)!r}); import AnomalyReviewLib; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8").stdout.strip() == "ok"


def test_cmake_lists_every_module_file():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", "AnomalyReview")
    for f in module_files():
        assert f in text, f"{f} is not listed in slicer_extension/AnomalyReview/CMakeLists.txt"


def test_module_in_slicers_shape_on_the_fakes(monkeypatch):
    """The module file against recording fakes of Slicer (tests/slicer_fakes.py): the template's
    classes, the widget built from Resources/UI/AnomalyReview.ui by slicer.util.loadUI, its widgets
    bound to the parameter node, and a Logic usable without the widget."""
    import slicer_fakes as sf

    f, mod = sf.load_module(monkeypatch)
    slm = sys.modules["slicer.ScriptedLoadableModule"]
    assert issubclass(mod.AnomalyReview, slm.ScriptedLoadableModule)
    assert issubclass(mod.AnomalyReviewWidget, slm.ScriptedLoadableModuleWidget)
    assert issubclass(mod.AnomalyReviewLogic, slm.ScriptedLoadableModuleLogic)
    assert issubclass(mod.AnomalyReviewTest, slm.ScriptedLoadableModuleTest)
    for name in ("start_connect", "connect", "start_infer", "start_next_case", "start_train", "start_save",
                 "finish_infer", "restore", "update_threshold", "decide", "jump_to_finding", "jump_to_slice",
                 "edited_label", "show_chart", "screenshot", "wait"):
        assert callable(getattr(mod.AnomalyReviewLogic, name)), name
    w = mod.AnomalyReviewWidget()
    w.setup()
    (panel,) = w.layout.children["widgets"]
    assert (panel.qt_class, panel.name) == ("qMRMLWidget", "AnomalyReview")  # the .ui's top widget
    ui = (MODULE_DIR / "Resources" / "UI" / "AnomalyReview.ui").read_text(encoding="utf-8")
    bound = set(w._gui_tag.values())
    assert bound == {"serverUrl", "flairVolume", "t1Volume", "t2Volume", "useDatastore", "viaSession",
                     "hideBelowThreshold", "autoRun", "extraMap"} and all(f"<string>{b}</string>" in ui for b in bound)
    assert set(bound) <= set(mod.AnomalyReviewParameterNode.fields)
    assert f.scene.GetNodesByClass("vtkMRMLScriptedModuleNode")  # the parameter node is in the scene
    for test in ("test_widget_review", "test_scene_close", "runTest"):
        assert callable(getattr(mod.AnomalyReviewTest, test))


def test_module_files_are_small_and_the_self_test_is_a_ctest():
    for p in MODULE_DIR.rglob("*.py"):
        n = len(p.read_text(encoding="utf-8").splitlines())
        assert n < 600, f"{p.name}: {n} lines"
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    testing = cmake[cmake.index("if(BUILD_TESTING)"):]
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in testing.split("endif()")[0]
    src = (MODULE_DIR / "AnomalyReview.py").read_text(encoding="utf-8")
    assert 'slicer.util.loadUI(self.resourcePath("UI/AnomalyReview.ui"))' in src
    for text in [src] + [p.read_text(encoding="utf-8") for p in (MODULE_DIR / "AnomalyReviewLib").glob("*.py")]:
        assert "import requests" not in text and "import cgi" not in text and "torchvision" not in text
