"""AnomalyReview's pure library without a server: NIfTI reader/writer against SimpleITK and
nibabel (real scans of ../shared when present), multipart against requests_toolbelt, numpy
components against uad_label's, jobs without Qt, and the import footprint Slicer needs."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from phantoms import brain_phantom
from requests_toolbelt import MultipartDecoder, MultipartEncoder
from server_fixture import ROOT

from uad_label.postprocess import components as ref

LIB_DIR = ROOT / "slicer_extension" / "AnomalyReview"
sys.path.insert(0, str(LIB_DIR))
from AnomalyReviewLib import CANCELLED, DONE, FAILED, Cancelled, Job, Review, multipart, nifti  # noqa: E402
from AnomalyReviewLib import components as comp  # noqa: E402
from AnomalyReviewLib.client import ModelInfo, changed_params, coerce_param  # noqa: E402


def test_library_imports_without_slicer_scipy_or_server_packages():
    code = ("import sys; sys.path.insert(0, %r); "
            "import AnomalyReviewLib, AnomalyReviewLib.workflow, AnomalyReviewLib.display; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('scipy', 'SimpleITK', 'monailabel', 'requests', "
            "'torch', 'torchvision', 'cgi', 'slicer', 'qt', 'vtk', 'nibabel', 'requests_toolbelt')]; print(bad)"
            % str(LIB_DIR))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- NIfTI

def _sitk_affine(img: sitk.Image) -> np.ndarray:
    a = np.eye(4)
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    a[:3, :3] = np.diag([-1, -1, 1]) @ d * np.asarray(img.GetSpacing())
    a[:3, 3] = np.asarray(img.GetOrigin()) * [-1, -1, 1]
    return a


def test_reader_matches_simpleitk_and_nibabel_on_real_scans(patient26):
    for name in ("FLAIR.nii.gz", "T1.nii.gz", "GT.nii.gz"):
        path = patient26 / name
        ours = nifti.read(path)
        nb = nib.load(str(path))
        assert np.allclose(ours.affine, nb.affine, atol=1e-4)
        assert np.array_equal(ours.array, np.asarray(nb.get_fdata(dtype=np.float64)).astype(ours.array.dtype)) or \
            np.allclose(ours.array, nb.get_fdata(), rtol=1e-6, atol=1e-6)
        im = sitk.ReadImage(str(path))
        assert ours.shape == im.GetSize()
        assert np.allclose(ours.affine, _sitk_affine(im), atol=1e-3)
        assert np.allclose(ours.array, sitk.GetArrayFromImage(im).transpose(2, 1, 0), rtol=1e-6, atol=1e-6)


def test_writer_round_trip_oblique_anisotropic_read_by_simpleitk_and_nibabel(tmp_path):
    img, _ = brain_phantom(spacing=(0.9, 1.1, 3.0), direction=(0.0, -1.0, 0.0, 0.8, 0.0, 0.6, -0.6, 0.0, 0.8))
    src = tmp_path / "src.nii.gz"
    sitk.WriteImage(img, str(src))
    ours = nifti.read(src)
    assert np.allclose(ours.affine, _sitk_affine(img), atol=1e-4)
    assert np.allclose(ours.spacing, [0.9, 1.1, 3.0], atol=1e-5)
    label = ours.with_array((ours.array > 150).astype(np.uint8))
    out = nifti.write(label, tmp_path / "label.nii.gz")
    back = sitk.ReadImage(str(out))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert np.allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-4)
    assert np.allclose(back.GetDirection(), img.GetDirection(), atol=1e-5)
    assert np.allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-5)
    assert np.array_equal(sitk.GetArrayFromImage(back).transpose(2, 1, 0), label.array)
    nb = nib.load(str(out))
    assert np.allclose(nb.affine, ours.affine, atol=1e-4)
    assert np.allclose(nb.get_qform(), ours.affine, atol=1e-4)  # the qform agrees with the sform
    again = nifti.read(out)
    assert np.array_equal(again.array, label.array) and np.allclose(again.affine, ours.affine, atol=1e-5)
    # float32 maps and uncompressed files too
    fmap = ours.with_array(ours.array.astype(np.float32) / 200)
    p = nifti.write(fmap, tmp_path / "map.nii")
    assert np.array_equal(nifti.read(p).array, fmap.array) and nifti.read(p).array.dtype == np.float32


def test_reader_applies_scaling_qform_only_and_big_endian(tmp_path):
    arr = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    aff = np.array([[-2.0, 0, 0, 10], [0, 3.0, 0, -5], [0, 0, 1.5, 7], [0, 0, 0, 1]])
    im = nib.Nifti1Image(arr, aff)
    im.header.set_slope_inter(0.5, 10)
    im.header.set_sform(None, code=0)
    im.set_qform(aff, code=1)
    p = tmp_path / "scaled.nii.gz"
    nib.save(im, str(p))
    ours = nifti.read(p)
    assert np.allclose(ours.array, arr * 0.5 + 10) and np.allclose(ours.affine, aff)
    be = nib.Nifti1Image(arr.astype(">f4"), aff)
    p2 = tmp_path / "be.nii"
    nib.save(be, str(p2))
    assert np.array_equal(nifti.read(p2).array, arr.astype(np.float32))
    with pytest.raises(nifti.NiftiError):
        nifti.read_bytes(b"not a nifti file" * 40)


# ----------------------------------------------------------------------------- multipart

def test_multipart_encode_decode_and_toolbelt_interop():
    data = bytes(range(256)) * 50 + b"\r\n--x\r\n"
    body, ct = multipart.encode([("params", json.dumps({"a": 1})), ("files", multipart.FilePart("a.nii.gz", data)),
                                 ("files", multipart.FilePart('b "q".nii.gz', b"B"))])
    parts = MultipartDecoder(body, ct).parts
    assert [p.content for p in parts] == [b'{"a": 1}', data, b"B"]
    ours = multipart.decode(body, ct)
    assert [(p.name, p.filename, p.data) for p in ours] == [("params", None, b'{"a": 1}'), ("files", "a.nii.gz", data),
                                                            ("files", 'b "q".nii.gz', b"B")]
    enc = MultipartEncoder(fields={"params": (None, '{"t": 0.5}', "application/json"),
                                   "image": ("map.nii.gz", data, "application/gzip")})
    got = multipart.decode_fields(enc.to_string(), enc.content_type)
    assert got["params"].data == b'{"t": 0.5}' and got["image"].data == data and got["image"].filename == "map.nii.gz"
    with pytest.raises(multipart.MultipartError):
        multipart.decode(b"--zz\r\nbroken", "multipart/form-data; boundary=zz")


# ----------------------------------------------------------------------------- components

@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_numpy_components_match_uad_label(connectivity):
    rng = np.random.default_rng(connectivity)
    from scipy import ndimage as ndi
    scores = ndi.gaussian_filter(rng.random((40, 36, 30)), 1.2).astype(np.float32)
    for q in (0.6, 0.8, 0.95):
        t = float(np.quantile(scores, q))
        for size, vv in ((0.0, 1.0), (20.0, 1.0), (7.5, 0.75), (30.0, 2.0)):
            ours = comp.threshold_mask(scores, t, size, vv, connectivity, use_scipy=False)
            theirs = ref.threshold_mask(scores, t, size, vv, connectivity)
            assert np.array_equal(ours, theirs), (q, size, vv)
        mask = ref.threshold_mask(scores, t, 5.0, 1.0, connectivity)
        rows, labels = comp.component_table(mask, scores, 1.0, lambda x: x * 2.0, connectivity, use_scipy=False)
        expect = ref.component_table(mask, scores, 1.0, lambda x: x * 2.0, connectivity)
        assert len(rows) == len(expect)
        for r, e in zip(rows, expect):
            for k in ("id", "voxels", "volume_ml", "centroid_index", "centroid_ras", "bbox_index"):
                assert r[k] == e[k], k
            assert r["max_score"] == pytest.approx(e["max_score"]) and r["mean_score"] == pytest.approx(e["mean_score"])
            peak = tuple(r["peak_index"])
            assert labels[peak] == r["id"] and scores[peak] == pytest.approx(r["max_score"])
            assert (labels == r["id"]).sum() == r["voxels"]


def test_size_filter_removes_components_of_at_most_the_minimum():
    m = np.zeros((20, 20, 20), np.float32)
    m[2:5, 2:5, 2:4] = 1  # 18 voxels
    m[10:13, 10:13, 10:12] = 1
    m[10, 10, 12] = 1  # 19 voxels
    m[15, 15, 15] = m[16, 16, 16] = 1  # diagonal neighbours: one component under 26-, two under 6-connectivity
    for use_scipy in (False, True):
        assert comp.threshold_mask(m, 0.5, 18.0, 1.0, use_scipy=use_scipy).sum() == 19
        assert comp.threshold_mask(m, 0.5, 17.0, 1.0, use_scipy=use_scipy).sum() == 37
        assert comp.label(m > 0, 26, use_scipy)[1] == 3 and comp.label(m > 0, 6, use_scipy)[1] == 4
        # mm^3, not voxels: at 0.5 mm^3 per voxel the 18-voxel component is 9 mm^3
        assert comp.threshold_mask(m, 0.5, 9.0, 0.5, use_scipy=use_scipy).sum() == 19
        assert comp.threshold_mask(m, 0.5, 8.9, 0.5, use_scipy=use_scipy).sum() == 37
    with pytest.raises(ValueError):
        comp.label(m > 0, 8)


def test_review_decisions_and_slice_jump():
    img, gt = brain_phantom()
    amap = nifti.NiftiImage(sitk.GetArrayFromImage(img).transpose(2, 1, 0) / 200.0, _sitk_affine(img))
    review = Review(amap, {"threshold": 0.8, "min_component_mm3": 5.0})
    assert len(review.findings) == 1
    f = review.findings[0]
    review.accept(f["id"])
    with pytest.raises(KeyError):
        review.accept(99)
    with pytest.raises(ValueError):
        review.decide(f["id"], "maybe")
    assert review.label_array().sum() == f["voxels"]
    k = int(round(f["centroid_index"][review.axis]))
    assert review.slice_scores()[k] > 0
    jump = review.slice_jump_point(k)
    assert review.finding_at(amap.ras_to_index(jump)[0]) == f["id"]
    assert review.final_label().shape == amap.shape and np.allclose(review.final_label().affine, amap.affine)
    with pytest.raises(ValueError, match="grid"):
        review.label_array(np.zeros((3, 3, 3)))


def test_params_from_the_options_table():
    m = ModelInfo.from_info("d", {"type": "anomaly", "params": {
        "threshold": {"default": None, "type": "float", "nullable": True},
        "nbins": {"default": 256, "type": "int"}, "flag": {"default": False, "type": "bool"}}})
    assert changed_params(m, {"threshold": "null", "nbins": "256", "flag": "yes"}) == {"flag": True}
    assert coerce_param({"type": "int"}, "12") == 12
    with pytest.raises(ValueError, match="nbins"):
        changed_params(m, {"nbins": "many"})
    stock = ModelInfo.from_info("seg", {"type": "segmentation", "config": {"largest_cc": False}})
    assert stock.is_segmenter and stock.params["largest_cc"]["default"] is False


# ----------------------------------------------------------------------------- jobs

def test_jobs_done_failed_cancelled_without_qt():
    job = Job(lambda ctx, x: (ctx.progress(0.5, "half"), x * 2)[1], 21).start()
    assert job.wait(5) == DONE and job.result == 42 and job.progress == (0.5, "half")

    def boom(ctx):
        raise RuntimeError("bad")

    job = Job(boom).start()
    assert job.wait(5) == FAILED and "bad" in str(job.error) and "RuntimeError" in job.traceback

    release = threading.Event()
    aborted = []

    def blocked(ctx):
        ctx.on_cancel(lambda: (aborted.append(1), release.set()))
        release.wait(10)
        ctx.check()
        return "finished anyway"

    job = Job(blocked).start()
    time.sleep(0.05)
    assert job.running
    job.cancel()
    assert job.poll() == CANCELLED and job.wait(2) == CANCELLED and job.result is None and aborted == [1]
    with pytest.raises(RuntimeError):
        job.start()

    def loop(ctx):
        while True:
            ctx.progress(None, "spinning")
            time.sleep(0.01)

    job = Job(loop).start()
    time.sleep(0.05)
    job.cancel()
    assert job.wait(2) == CANCELLED
    with pytest.raises(Cancelled):
        job.context.check()


def test_findings_have_one_source():
    """The Slicer module's findings rules are the server's module, copied byte for byte (the module's
    CMakeLists copies it at build time; this keeps the committed copy from drifting)."""
    root = Path(__file__).resolve().parents[1]
    server = root / "uad_label" / "postprocess" / "findings.py"
    module = root / "slicer_extension" / "AnomalyReview" / "AnomalyReviewLib" / "findings.py"
    assert module.read_bytes() == server.read_bytes()
    cmake = (root / "slicer_extension" / "AnomalyReview" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "uad_label/postprocess/findings.py" in cmake and "${MODULE_NAME}Lib/findings.py" in cmake
    import ast

    tree = ast.parse(server.read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "typing", "numpy"}  # imports in Slicer's Python as it is


# ----------------------------------------------------------------------------- display choices (no Slicer)

def test_display_choices():
    from AnomalyReviewLib import display
    assert display.color_node_for("image") == "vtkMRMLColorTableNodeFileInferno.txt"
    assert display.color_node_for("uncertainty") == "vtkMRMLColorTableNodeFileViridis.txt"
    # the min-size slider takes the server's range; without a maximum it never clamps the server's value
    assert display.min_size_range({"min_component_mm3": {"default": 20.0, "minimum": 0}}) == (0.0, 500.0, 1.0)
    assert display.min_size_range({"min_component_mm3": {"default": 20.0, "minimum": 5, "maximum": 80}}) == \
        (5.0, 80.0, 1.0)
    lo, hi, _ = display.min_size_range({"min_component_mm3": {"default": 20.0}}, current=2000.0)
    assert lo == 0 and hi >= 2000
    with pytest.raises(ValueError, match="min_component_mm3"):
        display.min_size_range({"min_component_mm3": {"maximum": 80}}, current=100.0)
    assert display.label_names(["lesion"]) == {1: "lesion"}
    assert display.label_names({"lesion": 1, "oedema": 2}) == {1: "lesion", 2: "oedema"}
    assert display.segment_name(3, {1: "lesion"}) == "label 3"
    a, b = np.zeros((3, 3, 3), np.uint8), np.zeros((3, 3, 3), np.uint8)
    a[0, 0, 0], b[1, 1, 1] = 1, 7
    assert display.union_label([a, None, b], (3, 3, 3)).sum() == 2
    with pytest.raises(ValueError, match="expected shape"):
        display.union_label([np.zeros((2, 2, 2))], (3, 3, 3))
    assert display.chart_point([[], [4, 5]]) == 4 and display.chart_point([]) is None
