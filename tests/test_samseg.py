"""The `samseg` detector (FreeSurfer SAMSEG's lesion model in a child process): a real run on MSLUB
patient 26 downsampled to 3 mm (FLAIR + T1 + T2) with short fitting and sampling settings, cancel,
bad input, and the registry listing it only when samseg is installed."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from uad_label.detectors import samseg_runner
from uad_label.detectors.samseg_runner import samseg_available
from uad_label.errors import InputError

MODS = ("FLAIR", "T1", "T2")
# short settings (SAMSEG's defaults are 100 / 20 / 50 / 50): the 3 mm case runs in about 2-4 minutes on 2 idle
# cores; the atlas registration and the VAE sweeps cost the same at any resolution
FAST = {"preprocessed": True, "max_iterations": 3, "deformation_iterations": 3, "samples": 3, "burnin": 2,
        "threads": 2}
_skip = pytest.mark.skipif(not samseg_available(), reason="no SAMSEG environment "
                           "(bash scripts/samseg_env.sh)")


def needs_samseg(test):
    # a real SAMSEG run: a few minutes on 2 idle cores, far longer on a loaded machine (pytest.ini's 900 s)
    return _skip(pytest.mark.timeout(3600)(test))


def _downsample(img: sitk.Image, spacing: float, label: bool) -> sitk.Image:
    size = [int(round(s * o / spacing)) for s, o in zip(img.GetSize(), img.GetSpacing())]
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing((spacing,) * 3)
    ref.SetDirection(img.GetDirection())
    ref.SetOrigin(img.TransformContinuousIndexToPhysicalPoint([(spacing / o - 1) / 2 for o in img.GetSpacing()]))
    src = img if label else sitk.SmoothingRecursiveGaussian(img, spacing / 3)  # anti-aliasing
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, 0.0)
    return sitk.Cast(out > 0.5, sitk.sitkUInt8) if label else out


@pytest.fixture(scope="module")
def case3mm(patient26, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("p26_3mm")
    for m in (*MODS, "GT"):
        img = sitk.ReadImage(str(patient26 / f"{m}.nii.gz"), sitk.sitkFloat32)
        sitk.WriteImage(_downsample(img, 3.0, label=m == "GT"), str(out / f"{m}.nii.gz"))
    return out


def _children() -> list[int]:
    """Live SAMSEG child processes of this test process (from /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"samseg_runner.py" in cmdline:
            kids.append(int(stat.parent.name))
    return kids


def _samseg_temp_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("uad-samseg-*")}


@pytest.fixture(scope="module")
def run3mm(case3mm):
    from uad_label.detectors import get_detector

    before = _samseg_temp_dirs()
    messages = []
    result = get_detector("samseg").detect({m: case3mm / f"{m}.nii.gz" for m in MODS}, FAST,
                                           progress=lambda f, m: messages.append((f, m)))
    return result, messages, before


@needs_samseg
def test_real_run_finds_the_lesions_in_the_native_grid(run3mm, case3mm):
    result, _, _ = run3mm
    flair = sitk.ReadImage(str(case3mm / "FLAIR.nii.gz"))
    amap = result.anomaly_map
    assert amap.GetPixelID() == sitk.sitkFloat32
    assert amap.GetSize() == flair.GetSize() and np.allclose(amap.GetSpacing(), flair.GetSpacing())
    assert np.allclose(amap.GetOrigin(), flair.GetOrigin()) and np.allclose(amap.GetDirection(), flair.GetDirection())
    m = sitk.GetArrayFromImage(amap)
    assert 0.0 <= m.min() and m.max() <= 1.0 and m.max() > 0.9  # a posterior, confident somewhere
    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(case3mm / "GT.nii.gz"))) > 0
    mask = sitk.GetArrayFromImage(result.mask) > 0
    dice = 2 * (mask & gt).sum() / (mask.sum() + gt.sum())
    # FLAIR thresholding gets about 0.46 at 1 mm; SAMSEG's lesion label must find most lesion voxels
    assert dice > 0.35, dice
    assert result.info["threshold"] == pytest.approx(0.3) and result.info["threshold_source"].startswith("default")
    assert result.info["components"] and result.info["image_score"] > 0


@needs_samseg
def test_real_run_reports_tissue_volumes_and_progress(run3mm):
    result, messages, _ = run3mm
    info = result.info["samseg"]
    assert info["inputs"] == ["T1", "FLAIR", "T2"] and info["lesion_mask_pattern"] == {"T1": 0, "FLAIR": 1, "T2": 1}
    vols = info["volumes_ml"]
    wm = vols["Left-Cerebral-White-Matter"] + vols["Right-Cerebral-White-Matter"]
    assert 200 < wm < 800 and 0 < vols["Lesions"] == info["lesion_ml"]
    assert info["intracranial_ml"] > wm and info["max_rss_mb"] > 100
    stages = info["stages_s"]
    assert "affine registration to SAMSEG's atlas" in stages
    assert "lesion posterior: sampling with the lesion shape model" in stages
    assert all(s >= 0 for s in stages.values())
    texts = [m for _, m in messages]
    assert any("burn-in sweep 2" in t for t in texts) and any("sample sweep 3" in t for t in texts)
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


@needs_samseg
def test_samseg_runs_outside_this_process_and_leaves_nothing(run3mm):
    _, _, before = run3mm
    assert "tensorflow" not in sys.modules  # TensorFlow stayed in the child
    assert _children() == []  # the child exited: its memory is back
    assert _samseg_temp_dirs() - before == set()


def test_job_folders_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    """A run killed with SIGKILL/SIGTERM never reaches its cleanup: the next run removes its copy of the scans."""
    import subprocess

    from uad_label.detectors.samseg import OWNER_FILE, TMP_PREFIX, remove_left_behind

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    dirs = {}
    for name, owner in (("live", str(os.getpid())), ("killed", dead), ("new_ownerless", None),
                        ("old_ownerless", None), ("bad_owner", "not a pid")):
        d = dirs[name] = tmp_path / f"{TMP_PREFIX}{name}"
        d.mkdir()
        (d / "FLAIR.nii.gz").write_bytes(b"scan")
        if owner is not None:
            (d / OWNER_FILE).write_text(owner)
    os.utime(dirs["old_ownerless"], (1.0, 1.0))
    (tmp_path / "other-folder").mkdir()
    removed = remove_left_behind(tmp_path)
    assert sorted(p.name for p in removed) == [f"{TMP_PREFIX}killed", f"{TMP_PREFIX}old_ownerless"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["other-folder"] + sorted(f"{TMP_PREFIX}{n}" for n in ("bad_owner", "live", "new_ownerless"))


@needs_samseg
def test_cancel_kills_the_samseg_process(case3mm):
    from uad_label.detectors import get_detector

    class Cancelled(Exception):
        pass

    def progress(fraction, message):
        if message.startswith("affine registration"):  # SAMSEG is running in its process now
            assert len(_children()) == 1
            raise Cancelled(message)

    before = _samseg_temp_dirs()
    with pytest.raises(Cancelled):
        get_detector("samseg").detect({m: case3mm / f"{m}.nii.gz" for m in MODS}, FAST, progress=progress)
    assert _children() == []
    assert _samseg_temp_dirs() - before == set()


def test_missing_flair_is_named(case3mm):
    from uad_label.detectors.samseg import Samseg

    with pytest.raises(InputError, match=r"needs modalities \['FLAIR'\], missing \['FLAIR'\]"):
        Samseg().detect({"T1": case3mm / "T1.nii.gz", "T2": case3mm / "T2.nii.gz"}, FAST)


def test_wrong_modality_is_refused(patient26):
    from uad_label.detectors.samseg import Samseg

    with pytest.raises(ValueError, match="not have FLAIR contrast"):
        Samseg().detect({"FLAIR": patient26 / "T1.nii.gz"}, {"preprocessed": True})


@pytest.mark.parametrize("params, named", [
    ({"samples": 0}, r"parameter 'samples': expected an integer in \[1, 1000\], received 0"),
    ({"burnin": -1}, "parameter 'burnin'"),
    ({"lesion_mask_flair": 2}, r"parameter 'lesion_mask_flair': expected one of \[-1, 0, 1\], received 2"),
    ({"shape_model": "maybe"}, "parameter 'shape_model': expected true or false"),
    ({"threads": 1.5}, "parameter 'threads': expected an integer"),
    ({"sample": 5}, r"unknown parameter\(s\) \['sample'\]"),
])
def test_bad_parameters_are_named(params, named):
    from uad_label.detectors.samseg import Samseg

    with pytest.raises(ValueError, match=named):
        Samseg().validate(params)


def test_runner_reads_progress_lines():
    parse = samseg_runner.ProgressParser(burnin=50, samples=50, max_iterations=100)
    assert parse("@@uad 0.100 fitting") == (0.1, "fitting")
    assert parse("iterationNumber: 0") == (pytest.approx(0.102), "model fit: resolution level 1/2, EM iteration 1")
    assert parse("iterationNumber: 9")[0] == pytest.approx(0.12)
    # the iteration count restarts on SAMSEG's second resolution level
    assert parse("iterationNumber: 0") == (pytest.approx(0.302), "model fit: resolution level 2/2, EM iteration 1")
    assert parse("Burn-in 25 times") == (pytest.approx(0.5 + 0.45 * 25 / 100), "lesion sampler: burn-in sweep 25")
    assert parse("Sample 50 times")[0] == pytest.approx(0.95)
    assert parse("EM converged!") is None and parse("Sample 1 of them") is None


@pytest.fixture
def reload_registry():
    import uad_label.detectors as registry

    yield lambda: importlib.reload(registry)
    importlib.reload(registry)  # back to the real availability check


@pytest.mark.parametrize("installed", [False, True])
def test_server_lists_samseg_only_when_it_imports(monkeypatch, reload_registry, installed):
    from uad_server_app.lib.configs.detectors import enabled_detectors

    monkeypatch.setattr(samseg_runner, "samseg_available", lambda: installed)
    registry = reload_registry()
    assert ("samseg" in registry.available()) is installed
    assert ("samseg" in enabled_detectors({"models": "all"})) is installed
    if installed:  # listing it (and building the detector) imports no TensorFlow
        assert registry.get_detector("samseg").info()["optional_modalities"] == ["T1", "T2"]
        assert "tensorflow" not in sys.modules


@_skip
def test_tensorflow_lives_in_samseg_environment_only():
    """TensorFlow next to the server is loaded by MONAI Label (torch.utils.tensorboard) and Triton imported
    after it crashes the process: SAMSEG's interpreter has it, the server's does not, and the server's
    process imports MONAI Label's tensorboard path and then Triton without crashing."""
    import subprocess

    from uad_label.detectors.samseg_runner import samseg_python

    assert samseg_python() != sys.executable
    assert importlib.util.find_spec("tensorflow") is None
    code = ("import sys, numpy, torch.utils.tensorboard, monailabel.interfaces.app, uad_label;"
            "from uad_label.detectors import get_detector; get_detector('samseg');"
            "import triton; print('tensorflow' in sys.modules, numpy.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    flag, numpy_version = out.stdout.split()
    assert flag == "False" and int(numpy_version.split(".")[0]) < 2
