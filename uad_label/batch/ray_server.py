"""The server's batch task on a Ray cluster (`--conf ray_address ADDR`): the cases of the selected images run on
Ray actors through `ray_engine.run_batch_ray` (the same per-case function as `uad batch`), then the server
saves each mask as the case's label and writes its image score, as the in-process task does. The datastore
and the Ray workers must see the same files (one machine, or a shared file system)."""
from __future__ import annotations

import csv
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


def batch_on_ray(address: str, model: str, params: dict, image_ids: list[str], datastore, tag: str,
                 primary: bool, save_label: bool = True, workers: int = 2) -> dict:
    """{image id: {label, image_score, n_findings, seconds} or {error}} like DetectorBatchInfer's answer."""
    from ..active.scoring import _write, params_key
    from ..cases import case_of
    from .ray_engine import run_batch_ray

    result: dict = {}
    cases = {}
    for image_id in image_ids:
        try:
            cases[image_id] = case_of(datastore.get_image_uri(image_id))
        except (OSError, ValueError) as exc:
            result[image_id] = {"error": f"{type(exc).__name__}: {exc}"}
    with tempfile.TemporaryDirectory(prefix="uad-ray-batch-") as tmp:
        manifest = Path(tmp) / "cases.csv"
        modalities = sorted({m for c in cases.values() for m in c.images})
        with open(manifest, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", *modalities])
            for image_id, c in cases.items():
                w.writerow([image_id, *[str(c.images.get(m, "")) for m in modalities]])
        t0 = time.time()
        rows = run_batch_ray(model, manifest, Path(tmp) / "out", params, address=address, workers=workers) \
            if cases else []
        from .runner import _safe_name

        for row in rows:
            image_id = row["case"]
            if row["status"] != "ok":
                result[image_id] = {"error": row["error"]}
                continue
            mask = Path(tmp) / "out" / _safe_name(image_id) / "mask.nii.gz"
            label = datastore.save_label(image_id, str(mask), tag, {}) if save_label else None
            entry = {"score": float(row["image_score"]), "anomalous_volume_ml": row["anomalous_volume_ml"],
                     "n_findings": row["n_findings"], "params_key": params_key(model, params),
                     "image_mtime": os.path.getmtime(datastore.get_image_uri(image_id)),
                     "ts": int(time.time()), "seconds": row["seconds"]}
            _write(datastore, image_id, model, entry, primary=primary)
            result[image_id] = {"label": label, "image_score": entry["score"], "n_findings": entry["n_findings"],
                                "seconds": entry["seconds"]}
        log.info("batch %s on Ray (%s): %d case(s) in %.1f s", model, address, len(rows), time.time() - t0)
    return result
