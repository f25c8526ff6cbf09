"""`uad batch`: a detector over every case of a folder, resumable, one failure never stops the rest.

Output layout (OUT_DIR):
  <case>/map.nii.gz, <case>/mask.nii.gz, <case>/result.json, <case>/report.png   finished cases
  <case>/error.json                                                              failed cases
  summary.csv      one row per case: case, status, image_score, findings, volume, seconds, error
  overview.png     cases ranked by image score;  index.html  the same table with each report
A case is finished when its result.json and report.png exist (result.json is written last, atomically);
a re-run skips finished cases (unless --force) and retries failed ones.
"""
from __future__ import annotations

import csv
import json
import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..evaluation.cases import discover_cases
from ..io import find_modalities, image_extension

log = logging.getLogger(__name__)
SUMMARY_FIELDS = ("case", "status", "image_score", "n_findings", "anomalous_volume_ml", "threshold",
                  "seconds", "skipped", "error")


@dataclass
class BatchCase:
    case_id: str
    images: dict[str, Path]


def find_cases(input_dir: str | Path) -> list[BatchCase]:
    """Case folders (FLAIR/T1/T2 by name), a flat datastore (`<case>_FLAIR.nii.gz`...; MONAI Label
    `labels/` and `ground_truth/` are ignored) or a folder of single scans (each taken as FLAIR)."""
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"INPUT_DIR: {root} is not a folder")
    cases: list[BatchCase] = []
    try:
        cases = [BatchCase(c.case_id, dict(c.images)) for c in discover_cases(root, require_gt=False)]
    except ValueError:
        cases = []
    seen = {str(p) for c in cases for p in c.images.values()}
    for f in sorted(root.iterdir()):  # scans whose name carries no modality: one case each
        if f.is_file() and image_extension(f) and not f.name.startswith(".") and str(f) not in seen:
            from ..evaluation.cases import flat_case_id

            if flat_case_id(f.name) is None:
                ext = image_extension(f)
                cases.append(BatchCase(f.name[: -len(ext)], {"FLAIR": f}))
    for c in cases:
        c.images.pop("GT", None)
    cases = [c for c in cases if c.images]
    if not cases:
        raise ValueError(f"INPUT_DIR: found no cases in {root} (case folders, <case>_FLAIR.nii.gz files, or scans)")
    return sorted(cases, key=lambda c: c.case_id)


def _safe_name(case_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in case_id).lstrip(".") or "case"


def finished(case_dir: Path) -> bool:
    return (case_dir / "result.json").is_file() and (case_dir / "report.png").is_file()


def run_case(det, case: BatchCase, case_dir: Path, params: dict) -> dict:
    from ..io import load_image
    from ..results import write_json_atomic
    from .report import case_report

    t = time.perf_counter()
    loaded = {m: load_image(p) for m, p in case.images.items()}
    result = det.detect(loaded, params, progress=lambda f, m: None)
    case_dir.mkdir(parents=True, exist_ok=True)
    info = dict(result.info)
    info["case"] = case.case_id
    info["inputs"] = {m: str(p) for m, p in case.images.items()}
    result.info = info
    from ..io import save_image

    save_image(result.anomaly_map, case_dir / "map.nii.gz")
    save_image(result.mask, case_dir / "mask.nii.gz")
    for name, img in result.extras.items():
        save_image(img, case_dir / f"{name}.nii.gz")
    ref = loaded.get(det.modalities[0]) or next(iter(loaded.values()))
    case_report(ref, result.anomaly_map, result.mask, info, case_dir / "report.png", title=case.case_id)
    info["batch_seconds"] = round(time.perf_counter() - t, 3)
    write_json_atomic(info, case_dir / "result.json")  # last: marks the case finished
    (case_dir / "error.json").unlink(missing_ok=True)
    return info


def _row(case_id: str, info: dict, skipped: bool) -> dict:
    return {"case": case_id, "status": "ok", "image_score": info.get("image_score"),
            "n_findings": len(info.get("components", [])), "anomalous_volume_ml": info.get("anomalous_volume_ml"),
            "threshold": info.get("threshold"), "seconds": info.get("batch_seconds", ""), "skipped": int(skipped),
            "error": ""}


def run_batch(detector: str, input_dir: str | Path, out_dir: str | Path, params: dict | None = None,
              force: bool = False, limit: int | None = None,
              progress: Callable | None = None) -> list[dict]:
    from ..detectors import get_detector
    from ..results import write_json_atomic
    from .report import overview

    det = get_detector(detector)
    p = det.validate(params or {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases = find_cases(input_dir)[:limit] if limit else find_cases(input_dir)
    rows: list[dict] = []
    bar = progress(total=len(cases)) if progress else None
    for case in cases:
        case_dir = out / _safe_name(case.case_id)
        if not force and finished(case_dir):
            try:
                info = json.loads((case_dir / "result.json").read_text(encoding="utf-8"))
                rows.append(_row(case.case_id, info, skipped=True))
                if bar:
                    bar.update(1)
                continue
            except (OSError, ValueError):
                pass  # unreadable result: run again
        if bar:
            bar.set_postfix_str(case.case_id)
        t = time.perf_counter()
        try:
            info = run_case(det, case, case_dir, p)
            rows.append(_row(case.case_id, info, skipped=False))
        except Exception as exc:  # recorded, the batch goes on
            log.warning("case %s failed: %s", case.case_id, exc)
            case_dir.mkdir(parents=True, exist_ok=True)
            err = {"case": case.case_id, "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc(limit=8), "seconds": round(time.perf_counter() - t, 3)}
            write_json_atomic(err, case_dir / "error.json")
            rows.append({"case": case.case_id, "status": "failed", "image_score": "", "n_findings": "",
                         "anomalous_volume_ml": "", "threshold": "", "seconds": err["seconds"], "skipped": 0,
                         "error": err["error"]})
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    rows.sort(key=lambda r: (r["status"] != "ok", -float(r["image_score"]) if r["status"] == "ok" else 0.0, r["case"]))
    tmp = out / ".summary.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out / "summary.csv")
    overview(rows, out, detector)
    write_json_atomic({"detector": detector, "params": p, "cases": len(rows),
                       "ok": sum(r["status"] == "ok" for r in rows),
                       "failed": sum(r["status"] != "ok" for r in rows)}, out / "batch.json")
    return rows
