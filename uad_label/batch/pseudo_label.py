"""Pseudo-labels (`uad pseudo-label`, the server's `pseudo_label` scoring method): a detector's mask and map of
every unlabelled case, stored as labels with the detector's own tag, for a fast segmenter to learn from.

- Cases: those of the datastore or folder without an approved `final` label (an annotator's label always wins:
  a case with one is skipped, and a final label saved while the run goes on is not overwritten or shadowed).
- The detector runs through the batch engines (`runner.run_batch`, or `ray_engine.run_batch_ray`), into OUT:
  resumable (finished cases are skipped), failures recorded per case, the same files as `uad batch`.
- Each case's mask goes to labels/<tag>/ and its float map to labels/<tag>_map/ as soon as the case has run (a
  run stopped midway keeps the labels of the cases it finished; a rerun stores those a previous run left), with
  provenance in the label's info (detector, package version, parameters, threshold and its source, date, image
  score). In a MONAI Label datastore (the cases' images lie directly in the folder) this goes through the
  datastore (info in datastore_v2.json, atomic copies); in a folder of case folders, to
  labels/<tag>/<case>.nii.gz with the info in <case>.json beside it.
- The tag is never `final` or `original` (MONAI Label's own) and never ends in `_map`.
"""
from __future__ import annotations

import csv
import json
import logging
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..cases import RESERVED_TAGS, Case, final_label, find_cases, image_id
from ..errors import InputError
from .runner import case_folder

log = logging.getLogger(__name__)
MAP_SUFFIX = "_map"
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not _TAG.match(tag) or tag.endswith(MAP_SUFFIX) or tag in RESERVED_TAGS:
        raise InputError(f"tag: expected a label tag of letters, digits, '-' and '_' (at most 64, not ending in "
                         f"{MAP_SUFFIX!r}, not one of {sorted(RESERVED_TAGS)}), received {tag!r}")
    return tag


def _is_datastore(root: Path, cases: list[Case]) -> bool:
    """A MONAI Label datastore: every case's images are files directly in `root`."""
    return bool(cases) and all(Path(p).parent.resolve() == root.resolve() and Path(p).is_file()
                               for c in cases for p in c.images.values())


def _write_manifest(cases: list[Case], path: Path) -> Path:
    from ..atomic import atomic_path

    modalities = sorted({m for c in cases for m in c.images})
    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", *modalities])
        for c in cases:
            w.writerow([c.case_id, *[str(Path(c.images[m]).resolve()) if m in c.images else "" for m in modalities]])
    return path


def _check_previous_run(out: Path, detector: str, params: dict) -> None:
    """A resumed run must use the detector and parameters of the run that wrote OUT (else its pseudo-labels
    would mix settings under one provenance)."""
    prev = out / "batch.json"
    if not prev.is_file():
        return
    try:
        before = json.loads(prev.read_text(encoding="utf-8"))
    except ValueError:
        return
    if before.get("detector") != detector or before.get("params") != json.loads(json.dumps(params)):
        raise InputError(f"out: {out} holds a run of {before.get('detector')} with parameters {before.get('params')}"
                         f", not {detector} with {dict(params)}; use another --out, or --force to redo it")


def _provenance(detector: str, params: dict, info: dict) -> dict:
    from .. import __version__

    return {"source": "pseudo-label", "detector": detector, "uad_label_version": __version__,
            "params": json.loads(json.dumps(dict(params))), "threshold": info.get("threshold"),
            "threshold_source": info.get("threshold_source"), "image_score": info.get("image_score"),
            "n_findings": len(info.get("components", [])), "anomalous_volume_ml": info.get("anomalous_volume_ml"),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _image_id(case: Case, detector_modality: str) -> str:
    return image_id(case.images.get(detector_modality) or next(iter(case.images.values())))


def store(root: Path, case: Case, case_dir: Path, tag: str, provenance: dict, datastore=None,
          modality: str = "FLAIR") -> str | None:
    """Store one case's mask and map as pseudo-labels; returns the label id, or None when the case gained a
    final label meanwhile (it wins: nothing is stored)."""
    from ..atomic import copy_file
    from .runner import finished

    if final_label(root, case.case_id, case.images) is not None:
        return None
    if not finished(case_dir):
        raise FileNotFoundError(f"{case_dir}: the detector's outputs are not complete")
    info = {**provenance, "map_tag": tag + MAP_SUFFIX}
    if datastore is not None:
        image_id = _image_id(case, modality)
        datastore.save_label(image_id, str(case_dir / "mask.nii.gz"), tag, info)
        datastore.save_label(image_id, str(case_dir / "map.nii.gz"), tag + MAP_SUFFIX, {**info, "kind": "map"})
        return image_id
    label_id = case.case_id
    for t, name in ((tag, "mask.nii.gz"), (tag + MAP_SUFFIX, "map.nii.gz")):
        copy_file(case_dir / name, root / "labels" / t / f"{label_id}.nii.gz")
    from ..results import write_json_atomic

    write_json_atomic(info, root / "labels" / tag / f"{label_id}.json")
    return label_id


def pseudo_label(detector: str, data: str | Path, out: str | Path, params: dict | None = None,
                 tag: str | None = None, engine: str = "local", force: bool = False, limit: int | None = None,
                 address: str | None = None, workers: int = 2, gpus_per_worker: float | None = None,
                 progress: Callable | None = None, datastore=None) -> dict:
    """Run `detector` over the unlabelled cases of `data` into `out` and store its pseudo-labels (see the module
    docstring). `datastore`: the server's datastore object (else one is opened on `data` when it is a datastore).
    Returns a summary (also written to OUT/pseudo_label.json)."""
    from ..detectors import get_detector

    tag = check_tag(tag or detector)
    root, out = Path(data), Path(out)
    if not root.is_dir():
        raise InputError(f"data: expected a datastore or a folder of cases, received {root}")
    if engine not in ("local", "ray"):
        raise InputError(f"engine: expected 'local' or 'ray', received {engine!r}")
    det = get_detector(detector)
    validated = det.validate(params or {})  # passed on: the batch engines do not validate them again
    p = dict(validated)
    cases = find_cases(root)
    if not cases:
        raise InputError(f"data: no case (FLAIR, T1, T2 ... images) in {root}")
    approved = [c.case_id for c in cases if final_label(root, c.case_id, c.images) is not None]
    todo = [c for c in cases if c.case_id not in approved]
    out.mkdir(parents=True, exist_ok=True)
    if not force:
        _check_previous_run(out, detector, p)
    summary = {"detector": detector, "tag": tag, "map_tag": tag + MAP_SUFFIX, "data": str(root), "out": str(out),
               "params": p, "cases": len(cases), "skipped_final": approved, "labelled": [], "failed": [],
               "final_meanwhile": [], "engine": engine}
    if todo:
        manifest = _write_manifest(todo, out / "pseudo_cases.csv")
        by_id = {c.case_id: c for c in todo}
        if datastore is None and _is_datastore(root, cases):
            from ..active.datastore import SafeLocalDatastore

            datastore = SafeLocalDatastore(str(root), auto_reload=False)
        modality = det.modalities[0]

        def keep(row: dict) -> None:
            """Store one case's pseudo-label as soon as the engine hands its row over (the finished cases first,
            then each as it has run): a run stopped after hours keeps them."""
            case = by_id.get(row["case"])
            if case is None:
                return
            if row["status"] != "ok":
                summary["failed"].append({"case": row["case"], "error": row["error"]})
                return
            case_dir = case_folder(out, case.case_id)
            info = json.loads((case_dir / "result.json").read_text(encoding="utf-8"))
            label_id = store(root, case, case_dir, tag, _provenance(detector, p, info), datastore, modality)
            (summary["final_meanwhile"] if label_id is None else summary["labelled"]).append(label_id or case.case_id)

        t0 = time.perf_counter()
        if engine == "local":
            from .runner import run_batch

            run_batch(detector, manifest, out, validated, force=force, limit=limit, progress=progress,
                      on_result=keep)
        else:
            from .ray_engine import run_batch_ray

            run_batch_ray(detector, manifest, out, validated, force=force, limit=limit, address=address,
                          workers=workers, gpus_per_worker=gpus_per_worker, progress=progress,
                          on_result=lambda row, _state: keep(row))
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        for key in ("labelled", "final_meanwhile"):
            summary[key].sort()
        summary["failed"].sort(key=lambda f: f["case"])
    from ..results import write_json_atomic

    write_json_atomic(summary, out / "pseudo_label.json")
    log.info("pseudo-label %s: %d labelled, %d failed, %d with a final label", detector, len(summary["labelled"]),
             len(summary["failed"]), len(approved) + len(summary["final_meanwhile"]))
    return summary
