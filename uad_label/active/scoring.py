"""Scoring: run a detector over the datastore and write an image-level anomaly score into each
case's representative image info (see cases.py), so strategies can rank unlabelled cases.

Info keys written (MONAI Label image info, `datastore.update_image_info`):

- `anomaly_scores`: {detector: {"score", "uncertainty", "anomalous_volume_ml", "n_findings",
  "params_key", "image_mtime", "ts", "seconds"}} - one entry per detector that scored the case;
- `anomaly_score`: the score of the datastore's primary detector (the one strategies use by default);
- `uncertainty`: the segmenter's mean uncertainty (only from detectors that return an `uncertainty`
  map or `mean_uncertainty` in their JSON; absent otherwise).

Scoring is incremental: a case whose entry has the same detector parameters and image file mtime is
skipped, so MONAI Label's automatic re-scoring (on start, after each next-sample and training) costs
only the cases that are new or changed. `force: true` in the request re-scores everything; `images`
(a list of image ids) restricts the run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any, Callable

import SimpleITK as sitk

from .cases import case_of, representatives

log = logging.getLogger(__name__)

SCORE_KEY = "anomaly_score"
SCORES_KEY = "anomaly_scores"
UNCERTAINTY_KEY = "uncertainty"


def params_key(detector: str, params: dict) -> str:
    text = json.dumps({"detector": detector, **params}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def mean_uncertainty(result) -> float | None:
    """The segmenter's mean uncertainty: `mean_uncertainty` from its JSON, else the mean of its
    `uncertainty` map over the voxels where the map is non-zero."""
    value = result.info.get("mean_uncertainty")
    if value is not None:
        return float(value)
    unc = result.extras.get("uncertainty") if result.extras else None
    if unc is None:
        return None
    arr = sitk.GetArrayViewFromImage(unc)
    inside = arr[arr != 0]
    return float(inside.mean()) if inside.size else 0.0


def score_case(detector_name: str, image_path: str, params: dict) -> dict:
    """Run a detector on the case of `image_path`; the entry stored under anomaly_scores[detector]."""
    from ..cases import case_of
    from ..detectors import get_detector

    det = get_detector(detector_name)
    p = det.validate(params)
    t = time.perf_counter()
    result = det.detect(case_of(image_path).images, p, progress=lambda f, m: None)
    entry = {
        "score": float(result.info["image_score"]),
        "anomalous_volume_ml": float(result.info.get("anomalous_volume_ml", 0.0)),
        "n_findings": len(result.info.get("components", [])),
        "params_key": params_key(detector_name, p),
        "image_mtime": os.path.getmtime(image_path),
        "ts": int(time.time()),
        "seconds": round(time.perf_counter() - t, 3),
    }
    unc = mean_uncertainty(result)
    if unc is not None:
        entry["uncertainty"] = unc
    return entry


def _write(datastore, image_id: str, detector: str, entry: dict, primary: bool) -> None:
    if hasattr(datastore, "merge_image_info"):
        scores = datastore.merge_image_info(image_id, SCORES_KEY, {detector: entry})
    else:
        scores = dict(datastore.get_image_info(image_id).get(SCORES_KEY) or {})
        scores[detector] = entry
        datastore.update_image_info(image_id, {SCORES_KEY: scores})
    extra: dict[str, Any] = {}
    if primary:
        extra[SCORE_KEY] = entry["score"]
    if "uncertainty" in entry:
        extra[UNCERTAINTY_KEY] = entry["uncertainty"]
    if extra:
        datastore.update_image_info(image_id, extra)


def score_datastore(datastore, detector: str, params: dict, *, primary: bool = True, force: bool = False,
                    images: list[str] | None = None, progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Score every case (its representative image) of the datastore with `detector`.
    Returns {"scored": {image_id: score}, "skipped": [...], "failed": {image_id: error}}."""
    from ..detectors import get_detector

    p = get_detector(detector).validate(params)
    key = params_key(detector, p)
    reload = getattr(datastore, "reload_if_changed", None)
    if reload:
        reload()
    ids = list(representatives(datastore.list_images()).values())
    if images:
        wanted = {case_of(i)[0] for i in images}
        ids = [i for i in ids if case_of(i)[0] in wanted]
    out: dict[str, Any] = {"detector": detector, "scored": {}, "skipped": [], "failed": {}}
    for n, image_id in enumerate(ids):
        path = datastore.get_image_uri(image_id)
        if not path or not os.path.exists(path):
            out["failed"][image_id] = "image file not found"
            continue
        old = (datastore.get_image_info(image_id).get(SCORES_KEY) or {}).get(detector)
        if (not force and old and old.get("params_key") == key
                and old.get("image_mtime") == os.path.getmtime(path)):
            out["skipped"].append(image_id)
            continue
        try:
            entry = score_case(detector, path, p)
        except Exception as exc:  # one bad case must not stop the others
            log.warning("scoring %s with %s failed: %s", image_id, detector, exc)
            out["failed"][image_id] = f"{type(exc).__name__}: {exc}"
            continue
        _write(datastore, image_id, detector, entry, primary)
        out["scored"][image_id] = entry["score"]
        if progress:
            progress(n + 1, len(ids), image_id)
    log.info("scoring %s: %d scored, %d unchanged, %d failed", detector, len(out["scored"]),
             len(out["skipped"]), len(out["failed"]))
    return out
