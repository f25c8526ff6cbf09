"""`uad batch`: a detector over every case of a folder or manifest, resumable, one failure never stops the rest.
The local engine (`run_batch`) and the Ray engine (`ray_engine.run_batch_ray`) share everything here: which
cases are pending, how one case runs and is published, how a failure is recorded, the summary files.

Output layout (OUT_DIR):
  <case>/map.nii.gz, <case>/mask.nii.gz, <case>/result.json, <case>/report.png   finished cases
  <case>/error.json                                                              failed cases
  summary.csv      one row per case: case, status, image_score, findings, volume, seconds, error
  overview.png     cases ranked by image score;  index.html  the same table with each report
  batch.json       detector, parameters, counts, engine, workers, throughput
A case is written into a hidden staging folder and renamed into place whole (atomic per case), so a crash,
a killed worker or Ctrl-C never leaves half a case; a case is finished when its result.json and report.png
exist; a re-run skips finished cases (unless --force) and retries failed ones.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
import traceback
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

from ..cases import Case

log = logging.getLogger(__name__)
SUMMARY_FIELDS = ("case", "status", "image_score", "n_findings", "anomalous_volume_ml", "threshold",
                  "seconds", "skipped", "error")
_STAGING = ".partial-"  # hidden staging folders: OUT/.<case>.partial-<id>


def _safe_name(case_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in case_id).lstrip(".") or "case"


def case_folder(out: str | os.PathLike, case_id: str) -> Path:
    """Where a batch run writes (or wrote) the outputs of `case_id` under `out`."""
    return Path(out) / _safe_name(case_id)


def finished(case_dir: Path) -> bool:
    return (case_dir / "result.json").is_file() and (case_dir / "report.png").is_file()


def clean_staging(out: Path) -> int:
    """Remove staging folders left by a killed worker or an interrupted run; returns how many."""
    n = 0
    for p in Path(out).glob(f".*{_STAGING}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n


def _publish(stage: Path, case_dir: Path) -> None:
    """Move a complete staging folder into place (an unfinished or --force'd old folder is replaced)."""
    if case_dir.exists():
        shutil.rmtree(case_dir)
    os.replace(stage, case_dir)


def run_case(det, case: Case, case_dir: Path, params: dict, lock=None) -> dict:
    """Run one case and publish its folder whole. `lock` (a Ray worker's) serialises only the detection,
    so the next case's reading and the previous case's writing overlap it."""
    from ..io import load_image, save_image
    from ..results import write_json_atomic
    from .report import case_report

    t = time.perf_counter()
    loaded = {m: load_image(p) for m, p in case.images.items()}
    with lock or nullcontext():
        result = det.detect(loaded, params, progress=lambda f, m: None)
    stage = case_dir.parent / f".{case_dir.name}{_STAGING}{uuid.uuid4().hex[:12]}"
    try:
        stage.mkdir(parents=True)
        info = dict(result.info)
        info["case"] = case.case_id
        info["inputs"] = {m: str(p) for m, p in case.images.items()}
        result.info = info
        save_image(result.anomaly_map, stage / "map.nii.gz")
        save_image(result.mask, stage / "mask.nii.gz")
        for name, img in result.extras.items():
            save_image(img, stage / f"{name}.nii.gz")
        ref = loaded.get(det.modalities[0]) or next(iter(loaded.values()))
        case_report(ref, result.anomaly_map, result.mask, info, stage / "report.png", title=case.case_id)
        info["batch_seconds"] = round(time.perf_counter() - t, 3)
        write_json_atomic(info, stage / "result.json")
        _publish(stage, case_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return info


def ok_row(case_id: str, info: dict, skipped: bool) -> dict:
    return {"case": case_id, "status": "ok", "image_score": info.get("image_score"),
            "n_findings": len(info.get("components", [])), "anomalous_volume_ml": info.get("anomalous_volume_ml"),
            "threshold": info.get("threshold"), "seconds": info.get("batch_seconds", ""), "skipped": int(skipped),
            "error": ""}


def finished_row(case: Case, case_dir: Path, skipped: bool = False) -> dict | None:
    """The row of a case finished earlier (its outputs on disk), or None (not finished, or unreadable: run again)."""
    if not finished(case_dir):
        return None
    try:
        return ok_row(case.case_id, json.loads((case_dir / "result.json").read_text(encoding="utf-8")), skipped)
    except (OSError, ValueError):
        return None


def failed_row(case: Case, case_dir: Path, error: str, trace: str, seconds: float) -> dict:
    """Record a failed case (<case>/error.json) and return its summary row."""
    from ..results import write_json_atomic

    case_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"case": case.case_id, "error": error, "traceback": trace, "seconds": round(seconds, 3)},
                      case_dir / "error.json")
    return {"case": case.case_id, "status": "failed", "image_score": "", "n_findings": "", "anomalous_volume_ml": "",
            "threshold": "", "seconds": round(seconds, 3), "skipped": 0, "error": error}


def process(det, case: Case, case_dir: Path, params: dict, lock=None) -> dict:
    """One case, either engine: its ok row, or its failure recorded (the batch goes on)."""
    t = time.perf_counter()
    try:
        return ok_row(case.case_id, run_case(det, case, case_dir, params, lock), skipped=False)
    except Exception as exc:  # recorded, the batch goes on
        log.warning("case %s failed: %s", case.case_id, exc)
        return failed_row(case, case_dir, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=8),
                          time.perf_counter() - t)


def plan(input_path: str | Path, out: Path, force: bool,
         limit: int | None) -> tuple[list[tuple[Case, Path]], list[dict]]:
    """(cases to run with their folders, rows of the finished cases that are skipped). Clears stale staging."""
    from .manifest import list_cases

    out.mkdir(parents=True, exist_ok=True)
    clean_staging(out)
    cases = list_cases(input_path)
    cases = cases[:limit] if limit else cases
    todo, skipped = [], []
    for case in cases:
        case_dir = out / _safe_name(case.case_id)
        row = None if force else finished_row(case, case_dir, skipped=True)
        if row is not None:
            skipped.append(row)
        else:
            todo.append((case, case_dir))
    return todo, skipped


def show_progress(bar, rows: list[dict], t0: float, n_skipped: int, current: str = "") -> None:
    """Progress bar postfix shared by both engines: cases/min over the cases run (not skipped), failures."""
    if not bar:
        return
    ran = len(rows) - n_skipped
    rate = 60.0 * ran / max(time.perf_counter() - t0, 1e-9)
    failed = sum(r["status"] != "ok" for r in rows)
    bar.set_postfix_str(f"{rate:.1f} cases/min, {failed} failed" + (f", {current}" if current else ""))


def write_summary(rows: list[dict], out: Path, detector: str, params: dict, run_info: dict) -> list[dict]:
    """summary.csv (ranked by score, failures last), overview.png + index.html, batch.json (with run_info:
    engine, workers, throughput)."""
    from ..results import write_json_atomic
    from .report import overview

    rows.sort(key=lambda r: (r["status"] != "ok", -float(r["image_score"]) if r["status"] == "ok" else 0.0, r["case"]))
    tmp = out / ".summary.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out / "summary.csv")
    overview(rows, out, detector)
    write_json_atomic({"detector": detector, "params": params, "cases": len(rows),
                       "ok": sum(r["status"] == "ok" for r in rows),
                       "failed": sum(r["status"] != "ok" for r in rows),
                       "skipped": sum(int(r["skipped"]) for r in rows), **run_info}, out / "batch.json")
    return rows


def throughput(n_run: int, seconds: float) -> dict:
    return {"cases_run": n_run, "run_seconds": round(seconds, 2),
            "cases_per_min": round(60.0 * n_run / seconds, 2) if n_run and seconds > 0 else None}


def run_batch(detector: str, input_dir: str | Path, out_dir: str | Path, params: dict | None = None,
              force: bool = False, limit: int | None = None,
              progress: Callable | None = None, on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Run `detector` over the cases of `input_dir` into `out_dir` (finished cases skipped); `on_result` gets
    each case's row as soon as it is known: the finished ones first, then each case as it has run."""
    from ..detectors import get_detector

    det = get_detector(detector)
    p = det.validate(params or {})
    out = Path(out_dir)
    todo, rows = plan(input_dir, out, force, limit)
    n_skipped = len(rows)
    for row in rows if on_result else ():
        on_result(row)
    bar = progress(total=n_skipped + len(todo)) if progress else None
    if bar:
        bar.update(n_skipped)
    t0 = time.perf_counter()
    for case, case_dir in todo:
        show_progress(bar, rows, t0, n_skipped, case.case_id)
        rows.append(process(det, case, case_dir, p))
        if on_result:
            on_result(rows[-1])
        if bar:
            bar.update(1)
    show_progress(bar, rows, t0, n_skipped)
    if bar:
        bar.close()
    return write_summary(rows, out, detector, p, {"engine": "local", "workers": 1,
                                                  **throughput(len(todo), time.perf_counter() - t0)})
