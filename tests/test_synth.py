"""Synthetic data generator (uad_label.synth) and `uad sample-data`. Small, fast subjects
(downsample=4: 4 mm voxels) except where noted."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from uad_label.synth import (
    GT_DIR,
    MANIFEST,
    MARKER,
    MODALITIES,
    import_scans,
    load_template,
    make_subject,
    write_sample_data,
)
from uad_label.synth.template import xyz_from_sitk

DS = 4
MASKS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mslub" / "lesion_masks_mni"


def arr(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img)


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
            and np.allclose(a.GetDirection(), b.GetDirection()))


@pytest.fixture(scope="module")
def lesion_subject():
    return make_subject(11, True, "template", downsample=DS)


def test_deterministic_and_seed_dependent():
    a = make_subject(5, True, "native", downsample=DS)
    b = make_subject(5, True, "native", downsample=DS)
    c = make_subject(6, True, "native", downsample=DS)
    for m in MODALITIES:
        assert arr(a.images[m]).tobytes() == arr(b.images[m]).tobytes()
        assert a.images[m].GetDirection() == b.images[m].GetDirection()
    assert arr(a.lesion_mask).tobytes() == arr(b.lesion_mask).tobytes()
    assert a.meta == b.meta
    assert arr(a.images["FLAIR"]).shape != arr(c.images["FLAIR"]).shape or \
        arr(a.images["FLAIR"]).tobytes() != arr(c.images["FLAIR"]).tobytes()


def test_same_seed_healthy_and_lesion_share_anatomy():
    h = make_subject(5, False, "template", downsample=DS)
    lesioned = make_subject(5, True, "template", downsample=DS)
    assert h.healthy and not lesioned.healthy
    assert arr(h.lesion_mask).sum() == 0 and arr(lesioned.lesion_mask).sum() > 0
    outside = arr(lesioned.lesion_mask) == 0
    # identical away from the lesions (the soft border reaches a little beyond the mask)
    diff = arr(h.images["FLAIR"]).astype(int) - arr(lesioned.images["FLAIR"]).astype(int)
    assert np.mean(diff[outside] == 0) > 0.97


@pytest.mark.parametrize("geometry", ["template", "native"])
def test_tissue_contrast_order(geometry):
    s = make_subject(3, False, geometry, downsample=DS)
    t = s.tissues
    pure = {k: t[k] > 0.8 for k in ("GM", "WM", "CSF")}
    for k, v in pure.items():
        assert v.sum() > 20, k
    med = {m: {k: float(np.median(xyz_from_sitk(s.images[m])[v])) for k, v in pure.items()} for m in MODALITIES}
    assert med["T1"]["WM"] > med["T1"]["GM"] > med["T1"]["CSF"], med["T1"]
    assert med["T2"]["CSF"] > med["T2"]["GM"] > med["T2"]["WM"], med["T2"]
    assert med["FLAIR"]["GM"] > med["FLAIR"]["WM"] > med["FLAIR"]["CSF"], med["FLAIR"]
    brain = (t["GM"] + t["WM"] + t["CSF"]) > 0.5
    for m in MODALITIES:  # brain only: background is dark noise
        a = xyz_from_sitk(s.images[m])
        assert s.images[m].GetPixelID() == sitk.sitkInt16
        assert np.median(a[~brain]) < 0.15 * np.median(a[brain])


def test_lesions_in_white_matter_and_hyperintense(lesion_subject):
    s = lesion_subject
    gt = xyz_from_sitk(s.lesion_mask).astype(bool)
    assert s.lesion_mask.GetPixelID() == sitk.sitkUInt8 and set(np.unique(gt)) == {False, True}
    assert s.meta["n_lesions"] >= 1 and s.meta["lesion_volume_ml"] > 0
    assert np.mean(s.tissues["WM"][gt]) > 0.6           # lesions sit in white matter
    wm = (s.tissues["WM"] > 0.8) & ~gt
    img = {m: xyz_from_sitk(s.images[m]).astype(float) for m in MODALITIES}
    assert np.median(img["FLAIR"][gt]) > 1.2 * np.median(img["FLAIR"][wm])
    assert np.median(img["T2"][gt]) > 1.2 * np.median(img["T2"][wm])
    assert np.median(img["T1"][gt]) < np.median(img["T1"][wm])
    for m in MODALITIES:
        assert same_grid(s.images[m], s.lesion_mask)


def test_native_geometry_differs_from_template():
    ref = load_template(DS).reference
    t = make_subject(2, False, "template", downsample=DS)
    assert same_grid(t.images["T1"], ref)
    orientations = set()
    for seed in range(6):
        s = make_subject(seed, False, "native", downsample=DS)
        img = s.images["T1"]
        orientations.add(s.meta["orientation"])
        assert not same_grid(img, ref)
        sp = sorted(img.GetSpacing())
        assert sp[-1] == pytest.approx(1.2 * sp[0])            # anisotropic slice spacing
        rigid = s.meta["rigid"]
        assert 0 < max(abs(a) for a in rigid["angles_deg"]) <= 6
        assert max(abs(v) for v in rigid["translation_mm"]) <= 5
        for m in MODALITIES:
            assert same_grid(s.images[m], s.lesion_mask)
    assert orientations - {"RAS"}, orientations             # some subjects are not RAS


def test_write_sample_data_layout_manifest_and_determinism(tmp_path):
    m1 = write_sample_data(tmp_path / "a", n_healthy=1, n_lesion=2, seed=3, downsample=DS, progress=False)
    m2 = write_sample_data(tmp_path / "b", n_healthy=1, n_lesion=2, seed=3, downsample=DS, progress=False)
    a = tmp_path / "a"
    assert (a / MARKER).is_file() and not (a / ".tmp").exists()
    assert json.loads((a / MANIFEST).read_text(encoding="utf-8")) == m1 == m2
    assert [c["id"] for c in m1["cases"]] == ["sub-000", "sub-001", "sub-002"]
    assert [c["healthy"] for c in m1["cases"]] == [False, True, False]
    top = sorted(p.name for p in a.glob("*.nii.gz"))
    assert top == sorted(f"sub-00{i}_{m}.nii.gz" for i in range(3) for m in MODALITIES)
    for case in m1["cases"]:
        assert set(case) >= {"id", "healthy", "seed", "n_lesions", "lesion_volume_ml", "files", "ground_truth",
                             "geometry"}
        gt = sitk.ReadImage(str(a / case["ground_truth"]))
        assert case["ground_truth"] == f"{GT_DIR}/{case['id']}.nii.gz"
        assert gt.GetPixelID() == sitk.sitkUInt8
        assert (arr(gt).sum() == 0) == case["healthy"] == (case["n_lesions"] == 0)
        for m, name in case["files"].items():
            img = sitk.ReadImage(str(a / name))
            assert same_grid(img, gt), name
            again = sitk.ReadImage(str(tmp_path / "b" / name))
            assert arr(img).tobytes() == arr(again).tobytes()
        assert case["lesion_volume_ml"] == pytest.approx(arr(gt).sum() * np.prod(gt.GetSpacing()) / 1000, rel=1e-3)


def test_rewrite_and_refuse_foreign_folder(tmp_path):
    out = tmp_path / "ds"
    write_sample_data(out, n_healthy=1, n_lesion=0, downsample=DS, progress=False)
    write_sample_data(out, n_healthy=1, n_lesion=0, seed=1, downsample=DS, progress=False)  # ours: rewritten
    assert (out / MARKER).is_file()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="foreign"):
        write_sample_data(foreign, n_healthy=1, n_lesion=0, downsample=DS, progress=False)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        import_scans(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ValueError, match="no-masks"):
        write_sample_data(tmp_path / "o", 0, 1, lesion_masks_dir=tmp_path / "no-masks", progress=False)
    with pytest.raises(ValueError, match="geometry"):
        make_subject(0, False, "mni", downsample=DS)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "case1_FLAIR.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="case1_FLAIR.nii.gz"):
        import_scans(bad, tmp_path / "out2")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no scans"):
        import_scans(empty, tmp_path / "out3")
    with pytest.raises(ValueError, match="missing.nii.gz"):
        make_subject(0, tmp_path / "missing.nii.gz", "template", downsample=DS)


@pytest.mark.skipif(not MASKS_DIR.is_dir(), reason=f"real lesion masks not available at {MASKS_DIR}")
def test_real_mask_pasting():
    mask_path = sorted(MASKS_DIR.glob("*.nii.gz"))[0]
    s = make_subject(4, mask_path, "template", downsample=DS, deform_mm=0)
    assert s.meta["lesion_source"] == mask_path.name and not s.healthy
    # expected: the mask on the subject grid by physical coordinates (MNI FSL grid -> nilearn grid)
    src = sitk.Cast(sitk.ReadImage(str(mask_path)) > 0, sitk.sitkFloat32)
    src = sitk.SmoothingRecursiveGaussian(src, 0.45 * DS)
    ref = sitk.Resample(src, s.lesion_mask, sitk.Transform(), sitk.sitkLinear, 0.0) >= 0.5
    gt, exp = arr(s.lesion_mask) > 0, arr(ref) > 0
    assert gt.sum() > 0 and (gt == exp).all()
    img = xyz_from_sitk(s.images["FLAIR"]).astype(float)
    g = xyz_from_sitk(s.lesion_mask) > 0
    wm = (s.tissues["WM"] > 0.8) & ~g
    assert np.median(img[g]) > np.median(img[wm])
    n = make_subject(4, mask_path, "native", downsample=DS)
    assert arr(n.lesion_mask).sum() > 0 and same_grid(n.images["FLAIR"], n.lesion_mask)


@pytest.mark.skipif(not MASKS_DIR.is_dir(), reason=f"real lesion masks not available at {MASKS_DIR}")
def test_real_masks_folder_option(tmp_path):
    names = sorted(p.name for p in MASKS_DIR.glob("*.nii.gz"))[:2]
    man = write_sample_data(tmp_path / "bench", n_healthy=1, n_lesion=2, lesion_masks_dir=MASKS_DIR,
                            geometry="template", downsample=DS, progress=False)
    sources = [c["lesion_source"] for c in man["cases"]]
    assert sources == [names[0], "none", names[1]]
    assert all(c["n_lesions"] > 0 for c in man["cases"] if not c["healthy"])
    assert man["lesion_masks_dir"] == str(MASKS_DIR.resolve())


def test_interrupted_run_never_looks_complete(tmp_path, monkeypatch):
    import uad_label.synth.datastore as ds

    out = tmp_path / "ds"
    write_sample_data(out, n_healthy=1, n_lesion=1, downsample=DS, progress=False)
    real = ds.make_subject
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ds, "make_subject", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_sample_data(out, n_healthy=1, n_lesion=1, seed=9, downsample=DS, progress=False)
    assert not (out / MARKER).exists()            # an interrupted rewrite is not complete
    for p in out.rglob("*.nii.gz"):               # every file under a final name is whole
        if ".tmp" not in p.parts:
            sitk.ReadImage(str(p))
    monkeypatch.setattr(ds, "make_subject", real)
    write_sample_data(out, n_healthy=1, n_lesion=1, seed=9, downsample=DS, progress=False)
    assert (out / MARKER).is_file() and not (out / ".tmp").exists()


def _write_dicom_series(img: sitk.Image, folder: Path, description: str) -> None:
    folder.mkdir(parents=True)
    img = sitk.Cast(img, sitk.sitkInt16)
    direction = img.GetDirection()
    uid = "1.2.826.0.1.3680043.2.1125.1.42"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        for tag, value in [("0008|0060", "MR"), ("0020|000d", uid + ".1"), ("0020|000e", uid + ".2"),
                           ("0008|103e", description), ("0020|0013", str(k + 1)),
                           ("0020|0037", "\\".join(map(str, (direction[0], direction[3], direction[6],
                                                             direction[1], direction[4], direction[7])))),
                           ("0020|0032", "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, k))))),
                           ("0018|0050", str(img.GetSpacing()[2])), ("0008|0018", f"{uid}.3.{k + 1}")]:
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:04d}.dcm"))
        writer.Execute(sl)


def test_import_folder(tmp_path):
    s = make_subject(8, True, "native", downsample=DS)
    src = tmp_path / "scans"
    src.mkdir()
    # flat files, NRRD and MHA, with ground truth
    sitk.WriteImage(s.images["FLAIR"], str(src / "caseA_FLAIR.nrrd"))
    sitk.WriteImage(s.images["T1"], str(src / "caseA_T1.mha"))
    sitk.WriteImage(s.lesion_mask, str(src / "caseA_GT.nrrd"))
    (src / "README.txt").write_text("ignored")
    # a per-case folder with a NIfTI T2 and a DICOM FLAIR series
    (src / "caseB").mkdir()
    sitk.WriteImage(s.images["T2"], str(src / "caseB" / "T2.nii"))
    _write_dicom_series(s.images["FLAIR"], src / "caseB" / "series_flair", "AX FLAIR")
    out = tmp_path / "out"
    man = import_scans(src, out)
    assert (out / MARKER).is_file()
    cases = {c["id"]: c for c in man["cases"]}
    assert set(cases) == {"caseA", "caseB"}
    assert cases["caseA"]["files"] == {"FLAIR": "caseA_FLAIR.nii.gz", "T1": "caseA_T1.nii.gz"}
    assert cases["caseB"]["files"] == {"FLAIR": "caseB_FLAIR.nii.gz", "T2": "caseB_T2.nii.gz"}
    assert cases["caseA"]["healthy"] is False and cases["caseA"]["ground_truth"] == f"{GT_DIR}/caseA.nii.gz"
    assert cases["caseB"]["ground_truth"] is None and cases["caseB"]["healthy"] is None
    a = sitk.ReadImage(str(out / "caseA_FLAIR.nii.gz"))
    assert same_grid(a, s.images["FLAIR"]) and (arr(a) == arr(s.images["FLAIR"])).all()
    gt = sitk.ReadImage(str(out / GT_DIR / "caseA.nii.gz"))
    assert same_grid(gt, a) and (arr(gt) == arr(s.lesion_mask)).all()
    # a DICOM series cannot store a left-handed voxel order: compare in one common orientation
    d = sitk.DICOMOrient(sitk.ReadImage(str(out / "caseB_FLAIR.nii.gz")), "LPS")
    o = sitk.DICOMOrient(s.images["FLAIR"], "LPS")
    assert d.GetSize() == o.GetSize()
    assert np.allclose(d.GetSpacing(), o.GetSpacing(), atol=1e-3)
    assert np.allclose(d.GetOrigin(), o.GetOrigin(), atol=1e-2)
    assert np.allclose(d.GetDirection(), o.GetDirection(), atol=1e-4)
    assert (arr(d) == arr(o)).all()


def test_cli_sample_data(tmp_path, capsys):
    from uad_label.cli.main import main

    out = tmp_path / "cli"
    assert main(["sample-data", str(out), "--n-healthy", "1", "--n-lesion", "1", "--downsample", str(DS),
                 "--geometry", "template", "--no-progress"]) == 0
    assert (out / MARKER).is_file() and len(list(out.glob("*.nii.gz"))) == 6
    assert "wrote 2 case(s)" in capsys.readouterr().out
    assert main(["sample-data", str(tmp_path / "imp"), "--import", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
