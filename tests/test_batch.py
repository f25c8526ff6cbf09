"""`uad batch`: per-case outputs, summary, overview, resumable, one failing case does not stop the rest."""
from __future__ import annotations

import csv
import json

import SimpleITK as sitk
from phantoms import brain_phantom

from uad_label.cli.main import main


def test_batch_outputs_resume_and_failure(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, lesion in enumerate((True, False)):
        img, _ = brain_phantom(seed=i, lesion=lesion)
        sitk.WriteImage(img, str(src / f"c{i}_FLAIR.nii.gz"))
        sitk.WriteImage(img, str(src / f"c{i}_T1.nii.gz"))
    sitk.WriteImage(sitk.Image(16, 16, 16, sitk.sitkFloat32), str(src / "bad_FLAIR.nii.gz"))
    out = tmp_path / "out"
    rc = main(["batch", "flair_threshold", str(src), "--preprocessed", "--out", str(out)])
    assert rc == 1  # one case failed
    for c in ("c0", "c1"):
        for f in ("map.nii.gz", "mask.nii.gz", "result.json", "report.png"):
            assert (out / c / f).is_file(), (c, f)
        assert sitk.ReadImage(str(out / c / "map.nii.gz")).GetPixelID() == sitk.sitkFloat32
    err = json.loads((out / "bad" / "error.json").read_text(encoding="utf-8"))
    assert "brain" in err["error"]
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["case"] for r in rows] == ["c0", "c1", "bad"]  # ranked by score, failures last
    assert rows[0]["status"] == "ok" and float(rows[0]["image_score"]) > float(rows[1]["image_score"])
    assert rows[2]["status"] == "failed" and rows[2]["error"]
    assert (out / "overview.png").is_file() and "c0/report.png" in (out / "index.html").read_text(encoding="utf-8")
    # resume: finished cases are skipped, the failed one is tried again
    mtime = (out / "c0" / "result.json").stat().st_mtime
    main(["batch", "flair_threshold", str(src), "--preprocessed", "--out", str(out)])
    assert (out / "c0" / "result.json").stat().st_mtime == mtime
    rows = {r["case"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["c0"]["skipped"] == "1" and rows["bad"]["status"] == "failed"
