"""`uad pseudo-label`: a detector's masks and maps stored as pseudo-labels with their own tag and provenance,
resumable, failures recorded, approved final labels always winning; the labelled cases a segmenter trains on."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from sample_cases import template_datastore

from uad_label.batch.pseudo_label import check_tag, pseudo_label, store
from uad_label.cases import best_label, find_cases
from uad_label.errors import InputError
from uad_label.training.labels import labelled_cases

ROOT = Path(__file__).resolve().parents[1]
PRE = {"preprocessed": True}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Three small template-space cases (sub-000 healthy, sub-001/002 with lesions), FLAIR/T1/T2."""
    return template_datastore(tmp_path_factory.mktemp("pl") / "ds", 1, 2)


@pytest.fixture()
def ds(source, tmp_path) -> Path:
    """A copy of the datastore where sub-002 has an approved final label (its ground truth)."""
    d = tmp_path / "ds"
    shutil.copytree(source, d)
    (d / "labels" / "final").mkdir(parents=True)
    shutil.copy(d / "ground_truth" / "sub-002.nii.gz", d / "labels" / "final" / "sub-002_FLAIR.nii.gz")
    return d


def test_pseudo_labels_go_to_their_own_tag_with_provenance_and_final_labels_win(ds, tmp_path):
    final_bytes = (ds / "labels" / "final" / "sub-002_FLAIR.nii.gz").read_bytes()
    s = pseudo_label("flair_threshold", ds, tmp_path / "out", PRE, tag="flair")
    assert s["labelled"] == ["sub-000_FLAIR", "sub-001_FLAIR"] and s["skipped_final"] == ["sub-002"]
    assert not s["failed"]
    labels = sorted(p.name for p in (ds / "labels" / "flair").iterdir())
    assert labels == ["sub-000_FLAIR.nii.gz", "sub-001_FLAIR.nii.gz"]
    assert (ds / "labels" / "final" / "sub-002_FLAIR.nii.gz").read_bytes() == final_bytes
    # the mask is the detector's mask and the map its float map, on the image's grid
    mask = sitk.ReadImage(str(ds / "labels" / "flair" / "sub-001_FLAIR.nii.gz"))
    amap = sitk.ReadImage(str(ds / "labels" / "flair_map" / "sub-001_FLAIR.nii.gz"))
    out_mask = sitk.ReadImage(str(tmp_path / "out" / "sub-001" / "mask.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(out_mask))
    assert sitk.GetArrayFromImage(mask).any() and amap.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64)
    assert mask.GetSize() == sitk.ReadImage(str(ds / "sub-001_FLAIR.nii.gz")).GetSize()
    # provenance in MONAI Label's datastore JSON
    objects = json.loads((ds / "datastore_v2.json").read_text())["objects"]
    info = objects["sub-001_FLAIR"]["labels"]["flair"]["info"]
    assert info["source"] == "pseudo-label" and info["detector"] == "flair_threshold"
    assert info["params"]["preprocessed"] is True and info["threshold"] == pytest.approx(0.99)
    assert info["uad_label_version"] and info["date"].startswith("20") and info["map_tag"] == "flair_map"
    assert "flair" not in objects["sub-002_FLAIR"]["labels"]
    # precedence for training: the final label, with the final weight; the others their pseudo-label
    chosen = {c.case_id: (c.tag, c.weight) for c in labelled_cases([ds], pseudo_tags=["flair"], final_weight=3.0)}
    assert chosen == {"sub-000": ("flair", 1.0), "sub-001": ("flair", 1.0), "sub-002": ("final", 3.0)}


def test_a_rerun_resumes_and_different_parameters_are_refused(ds, tmp_path):
    out = tmp_path / "out"
    pseudo_label("flair_threshold", ds, out, PRE, tag="flair")
    before = (out / "sub-000" / "result.json").stat().st_mtime_ns
    s = pseudo_label("flair_threshold", ds, out, PRE, tag="flair")
    assert (out / "sub-000" / "result.json").stat().st_mtime_ns == before  # not run again
    assert s["labelled"] == ["sub-000_FLAIR", "sub-001_FLAIR"]
    with pytest.raises(InputError, match="out: .* holds a run of flair_threshold with parameters"):
        pseudo_label("flair_threshold", ds, out, {**PRE, "threshold": 0.95}, tag="flair")


def test_a_run_stopped_midway_keeps_the_labels_of_the_cases_it_finished(ds, tmp_path, monkeypatch):
    """SAMSEG takes 20 minutes a case: a batch killed after hours keeps what it finished, stored as it went."""
    from uad_label.batch import runner

    process, seen = runner.process, []

    def stop_at_the_second_case(det, case, case_dir, params):
        seen.append(case.case_id)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return process(det, case, case_dir, params)

    monkeypatch.setattr(runner, "process", stop_at_the_second_case)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        pseudo_label("flair_threshold", ds, out, PRE, tag="flair")
    assert seen == ["sub-000", "sub-001"]
    assert sorted(p.name for p in (ds / "labels" / "flair").iterdir()) == ["sub-000_FLAIR.nii.gz"]
    objects = json.loads((ds / "datastore_v2.json").read_text())["objects"]
    assert objects["sub-000_FLAIR"]["labels"]["flair"]["info"]["detector"] == "flair_threshold"
    # a rerun stores what an earlier run finished before it runs anything (here the label was lost)
    (ds / "labels" / "flair" / "sub-000_FLAIR.nii.gz").unlink()
    seen.clear()
    seen.append("a first case")  # the rerun's first case is stopped
    with pytest.raises(KeyboardInterrupt):
        pseudo_label("flair_threshold", ds, out, PRE, tag="flair")
    assert seen == ["a first case", "sub-001"]
    assert (ds / "labels" / "flair" / "sub-000_FLAIR.nii.gz").is_file()
    monkeypatch.setattr(runner, "process", process)
    s = pseudo_label("flair_threshold", ds, out, PRE, tag="flair")  # the rerun runs sub-001 only
    assert s["labelled"] == ["sub-000_FLAIR", "sub-001_FLAIR"]
    assert (ds / "labels" / "flair" / "sub-001_FLAIR.nii.gz").is_file()


def test_a_failing_case_is_recorded_and_the_others_are_labelled(ds, tmp_path):
    (ds / "sub-001_FLAIR.nii.gz").write_bytes(b"not an image")
    s = pseudo_label("flair_threshold", ds, tmp_path / "out", PRE, tag="flair")
    assert [f["case"] for f in s["failed"]] == ["sub-001"] and s["labelled"] == ["sub-000_FLAIR"]
    assert (tmp_path / "out" / "sub-001" / "error.json").is_file()
    assert not (ds / "labels" / "flair" / "sub-001_FLAIR.nii.gz").exists()


def test_a_final_label_saved_during_the_run_wins(ds, tmp_path):
    out = tmp_path / "out"
    pseudo_label("flair_threshold", ds, out, PRE, tag="flair")
    case = next(c for c in find_cases(ds) if c.case_id == "sub-000")
    shutil.copy(ds / "ground_truth" / "sub-000.nii.gz", ds / "labels" / "final" / "sub-000_FLAIR.nii.gz")
    assert store(ds, case, out / "sub-000", "flair", {"source": "pseudo-label"}) is None
    assert best_label(ds, "sub-000", case.images, ["flair"])[0] == "final"
    assert best_label(ds, "sub-001", next(c for c in find_cases(ds) if c.case_id == "sub-001").images,
                      ["flair"])[0] == "flair"


def test_case_folders_get_labels_with_a_provenance_file(source, tmp_path):
    data = tmp_path / "cases"
    for case in ("sub-000", "sub-001"):
        (data / case).mkdir(parents=True)
        for m in ("FLAIR", "T1", "T2"):
            shutil.copy(source / f"{case}_{m}.nii.gz", data / case / f"{m}.nii.gz")
    s = pseudo_label("flair_threshold", data, tmp_path / "out", PRE)
    assert s["tag"] == "flair_threshold" and s["labelled"] == ["sub-000", "sub-001"]
    info = json.loads((data / "labels" / "flair_threshold" / "sub-001.json").read_text())
    assert info["detector"] == "flair_threshold"
    assert (data / "labels" / "flair_threshold_map" / "sub-001.nii.gz").is_file()
    assert [c.case_id for c in find_cases(data)] == ["sub-000", "sub-001"]  # labels/ is not a case


@pytest.mark.parametrize("tag", ["final", "original", "../escape", "a/b", "x_map", "", "-x", "a" * 65])
def test_reserved_or_unsafe_tags_are_refused(tag):
    with pytest.raises(InputError, match="tag: expected a label tag"):
        check_tag(tag)


def test_bad_input_names_the_parameter(ds, tmp_path):
    with pytest.raises(InputError, match="tag: expected"):
        pseudo_label("flair_threshold", ds, tmp_path / "o", PRE, tag="final")
    with pytest.raises(InputError, match="data: expected a datastore or a folder"):
        pseudo_label("flair_threshold", tmp_path / "missing", tmp_path / "o", PRE)
    with pytest.raises(InputError, match="nbins"):
        pseudo_label("flair_threshold", ds, tmp_path / "o", {**PRE, "nbins": "many"})
    with pytest.raises(InputError, match="pseudo_tags: expected pseudo-label tags"):
        labelled_cases([ds], pseudo_tags=["final"])
    with pytest.raises(InputError, match="final_weight: expected a weight > 0"):
        labelled_cases([ds], pseudo_tags=["flair"], final_weight=0)
    assert not (ds / "labels" / "flair_threshold").exists()


def test_cli_prints_the_summary_and_exits_1_on_failure(ds, tmp_path):
    (ds / "sub-000_FLAIR.nii.gz").write_bytes(b"not an image")
    r = subprocess.run([sys.executable, "-m", "uad_label.cli.main", "pseudo-label", "flair_threshold", str(ds),
                        "--preprocessed", "--out", str(tmp_path / "out"), "--tag", "flair"],
                       cwd=ROOT, capture_output=True, encoding="utf-8")
    assert r.returncode == 1, r.stderr
    assert "1 pseudo-label(s) 'flair' stored" in r.stdout and "1 case(s) with a final label skipped" in r.stdout
    assert "FAILED sub-000" in r.stdout
    r = subprocess.run([sys.executable, "-m", "uad_label.cli.main", "pseudo-label", "flair_threshold", str(ds),
                        "--out", str(tmp_path / "out2"), "--tag", "final"], cwd=ROOT, capture_output=True,
                       encoding="utf-8")
    assert r.returncode == 2 and "tag: expected a label tag" in r.stderr
