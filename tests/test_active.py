"""Active learning without a server: cases, the crash-safe datastore, scoring, strategies, top-k."""
from __future__ import annotations

import json
import os
import threading

import pytest
import SimpleITK as sitk
from phantoms import brain_phantom

from uad_label.active.cases import representatives, unlabeled_representatives
from uad_label.active.datastore import SafeLocalDatastore
from uad_label.active.scoring import score_datastore
from uad_label.active.strategies import MostAnomalous, MostUncertain, RandomCase, pick, top_k

PRE = {"preprocessed": True}


def test_one_representative_per_case():
    ids = ["a_FLAIR", "a_T1", "a_T2", "b_T1", "b_T2", "scan", "c_GT"]
    assert representatives(ids) == {"a": "a_FLAIR", "b": "b_T2", "scan": "scan"}


def test_top_k_is_the_k_highest_and_pick_rotates_within_it():
    scores = {"a": 0.1, "b": 0.9, "c": 0.5, "d": None, "e": 0.7}
    assert top_k(scores, 3) == ["b", "e", "c"]
    assert top_k(scores, 0) == ["b", "e", "c", "a", "d"]  # unscored last
    now = 1000.0
    assert pick(scores, {}, 3, 60, now) == "b"
    assert pick(scores, {"b": now - 1}, 3, 60, now) == "e"
    # all of the top 3 served recently: the least recently served of them, never one outside the top-k
    served = {"b": now - 5, "e": now - 30, "c": now - 10}
    assert pick(scores, served, 3, 60, now) == "e"
    assert pick(scores, {"b": now - 1}, 1, 60, now) == "b"  # k=1: always the top case


@pytest.fixture()
def store(tmp_path):
    # case a: no lesion (low score), case b: lesion; T1 siblings must not count as cases
    for name, seed, lesion in (("a", 1, False), ("b", 2, True)):
        img, _ = brain_phantom(seed=seed, lesion=lesion)
        sitk.WriteImage(img, str(tmp_path / f"{name}_FLAIR.nii.gz"))
        sitk.WriteImage(img, str(tmp_path / f"{name}_T1.nii.gz"))
    return SafeLocalDatastore(str(tmp_path), extensions=["*.nii.gz"])


def test_scoring_writes_scores_incrementally_and_strategies_use_them(store, tmp_path):
    out = score_datastore(store, "flair_threshold", PRE)
    assert set(out["scored"]) == {"a_FLAIR", "b_FLAIR"} and not out["failed"]
    assert out["scored"]["b_FLAIR"] > out["scored"]["a_FLAIR"]
    info = store.get_image_info("b_FLAIR")
    assert info["anomaly_score"] == out["scored"]["b_FLAIR"]
    assert info["anomaly_scores"]["flair_threshold"]["n_findings"] >= 1
    assert "anomaly_score" not in store.get_image_info("b_T1")
    again = score_datastore(store, "flair_threshold", PRE)
    assert not again["scored"] and sorted(again["skipped"]) == ["a_FLAIR", "b_FLAIR"]
    changed = score_datastore(store, "flair_threshold", {**PRE, "threshold": 0.5})
    assert len(changed["scored"]) == 2  # other params: scored again

    ma = MostAnomalous(k=1)
    assert ma({"strategy": "most_anomalous"}, store)["id"] == "b_FLAIR"
    mu = MostUncertain(k=1)(({"strategy": "most_uncertain"}), store)
    assert mu["id"] == "b_FLAIR" and mu["fallback"] == "anomaly_score"  # no segmenter yet
    assert RandomCase(seed=0)({"strategy": "random"}, store)["id"] in ("a_FLAIR", "b_FLAIR")

    # a final label on any image of case b takes the whole case out
    lab = tmp_path / "lab.nii.gz"
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkUInt8), str(lab))
    store.save_label("b_T1", str(lab), "final", {})
    assert unlabeled_representatives(store) == ["a_FLAIR"]
    assert ma({"strategy": "most_anomalous"}, store)["id"] == "a_FLAIR"
    store.save_label("a_FLAIR", str(lab), "final", {})
    assert ma({"strategy": "most_anomalous"}, store) is None


def test_a_failing_case_is_recorded_and_the_rest_scored(store, tmp_path):
    sitk.WriteImage(sitk.Image(16, 16, 16, sitk.sitkFloat32), str(tmp_path / "empty_FLAIR.nii.gz"))
    store.refresh()
    out = score_datastore(store, "flair_threshold", PRE)
    assert "empty_FLAIR" in out["failed"] and len(out["scored"]) == 2


def test_datastore_json_is_replaced_atomically_under_concurrent_updates(store, tmp_path):
    errors = []

    def worker(n):
        try:
            for i in range(30):
                store.update_image_info("a_FLAIR" if n % 2 else "b_FLAIR", {f"w{n}": i})
                store.merge_image_info("a_FLAIR", "counts", {f"w{n}": i})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    data = json.loads((tmp_path / "datastore_v2.json").read_text(encoding="utf-8"))
    counts = data["objects"]["a_FLAIR"]["image"]["info"]["counts"]
    assert counts == {f"w{n}": 29 for n in range(6)}  # no lost update
    # a second datastore object (another process) sees the same state
    other = SafeLocalDatastore(str(tmp_path), extensions=["*.nii.gz"])
    assert other.get_image_info("a_FLAIR")["counts"] == counts
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_corrupt_datastore_json_is_moved_aside_and_rebuilt(tmp_path):
    img, _ = brain_phantom(seed=1)
    sitk.WriteImage(img, str(tmp_path / "x_FLAIR.nii.gz"))
    (tmp_path / "datastore_v2.json").write_text('{"name": "new-dataset", "objects": {"x_FL')  # truncated
    ds = SafeLocalDatastore(str(tmp_path), extensions=["*.nii.gz"])
    assert ds.list_images() == ["x_FLAIR"]
    assert list(tmp_path.glob("datastore_v2.json.corrupt-*"))
    json.loads((tmp_path / "datastore_v2.json").read_text(encoding="utf-8"))
