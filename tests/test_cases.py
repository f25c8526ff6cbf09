"""One case finder (uad_label.cases): the same folder gives the same cases and modalities to the CLI, the
server, batch, active learning, training and evaluation."""
from __future__ import annotations

import json

import pytest
import SimpleITK as sitk
from phantoms import brain_phantom

from uad_label.active.cases import group_cases
from uad_label.cases import case_of, find_cases, split_name
from uad_label.cli.main import main
from uad_label.detectors import get_detector
from uad_label.server.inputs import case_images
from uad_label.training.data import healthy_cases

EXPECTED = {
    "a": {"FLAIR", "T1", "T2"},  # flat <case>_<MODALITY> files
    "b": {"FLAIR"},
    "scan": {"FLAIR"},  # a scan whose name names no modality
    "c": {"FLAIR", "T2"},  # a case folder (with GT)
    "d_study1": {"FLAIR", "T1"},  # a folder holding two studies
    "d_study2": {"FLAIR"},
}


@pytest.fixture()
def folder(tmp_path):
    img, gt = brain_phantom(seed=1)
    root = tmp_path / "data"
    (root / "c").mkdir(parents=True)
    (root / "d").mkdir()
    (root / "ground_truth").mkdir()
    (root / "labels" / "final").mkdir(parents=True)  # MONAI Label's labels are no cases
    for name in ("a_FLAIR", "a_T1", "a_T2", "b_FLAIR", "scan", "c/FLAIR", "c/T2",
                 "d/study1_FLAIR", "d/study1_T1W", "d/study2_FLAIR", "labels/final/a_FLAIR"):
        sitk.WriteImage(img, str(root / f"{name}.nii.gz"))
    for name in ("ground_truth/a", "c/GT", "d/gt"):
        sitk.WriteImage(gt, str(root / f"{name}.nii.gz"))
    (root / "d" / "study1_T1W_intrastudy_to_FLAIR.txt").write_text("not an image", encoding="utf-8")
    return root


def _modalities(cases):
    return {c.case_id: set(c.images) for c in cases}


def test_find_cases_reads_every_layout(folder):
    cases = {c.case_id: c for c in find_cases(folder)}
    assert _modalities(cases.values()) == EXPECTED
    assert cases["a"].gt == folder / "ground_truth" / "a.nii.gz"
    assert cases["c"].gt == folder / "c" / "GT.nii.gz"
    assert cases["d_study1"].gt is None  # a folder-wide mask belongs to no single study
    with pytest.raises(ValueError, match=r"without a ground truth .*'b'"):
        find_cases(folder, require_gt=True)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        find_cases(folder / "nope")


def test_a_file_brings_its_case(folder):
    for case in find_cases(folder):
        for path in case.images.values():
            if split_name(path.name) and path.parent == folder:
                assert set(case_of(path).images) == EXPECTED[case.case_id]
                assert case_images(path) == case_of(path).images  # the server's rule is the same
    assert set(case_of(folder / "c").images) == EXPECTED["c"]
    with pytest.raises(ValueError, match="several"):
        case_of(folder / "d")  # two studies: the user picks one by a file
    assert set(case_of(folder / "d" / "study1_FLAIR.nii.gz").images) == {"FLAIR", "T1"}


@pytest.fixture()
def recorded(monkeypatch):
    """Modalities each front end hands to the detector."""
    det = get_detector("flair_threshold")
    calls = []
    original = type(det).detect

    def detect(self, images, *args, **kwargs):
        calls.append(set(images))
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(type(det), "detect", detect)
    return calls


def test_front_ends_agree(folder, tmp_path, recorded):
    # the CLI on one file of a flat case: its siblings come along, as on the server (was: FLAIR only)
    assert main(["detect", "flair_threshold", str(folder / "a_FLAIR.nii.gz"), "--preprocessed",
                 "--out", str(tmp_path / "one")]) == 0
    assert recorded[-1] == EXPECTED["a"]
    from uad_label.active.scoring import score_case

    score_case("flair_threshold", str(folder / "a_FLAIR.nii.gz"), {"preprocessed": True})
    assert recorded[-1] == EXPECTED["a"]
    recorded.clear()
    assert main(["batch", "flair_threshold", str(folder), "--preprocessed", "--out", str(tmp_path / "b")]) == 0
    batch = {p.parent.name: set(json.loads(p.read_text(encoding="utf-8"))["inputs"])
             for p in (tmp_path / "b").glob("*/result.json")}
    assert batch == EXPECTED
    # training takes every case of a folder without health marks as healthy, each with its FLAIR
    assert sorted(str(c["FLAIR"]) for c in healthy_cases(folder)) == sorted(
        str(c.images["FLAIR"]) for c in find_cases(folder))
    # active learning groups the datastore ids of the flat files the same way
    ids = [p.name[: -len(".nii.gz")] for p in folder.glob("*.nii.gz")]
    assert {k: set(v) for k, v in group_cases(ids).items()} == {k: EXPECTED[k] for k in ("a", "b")} | {"scan": {None}}
