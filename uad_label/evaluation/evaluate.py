"""`uad evaluate`: run a detector over cases with ground truth and score it by the published
protocol (Meissen et al.): metrics pooled over the data set; upper-bound Dice over 100 thresholds
evenly spaced between the maps' minimum and maximum with the component filter applied after
thresholding; AUPRC and AUROC over voxels (scikit-learn); plus per-case Dice at the default
threshold."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..cases import find_cases
from ..detectors import get_detector
from ..errors import InputError
from ..io import load_image
from ..results import write_json_atomic
from .metrics import PooledEvaluation, dice


def evaluate(detector: str, data_dir: str | Path, out_dir: str | Path | None = None, params: dict | None = None,
             n_thresholds: int = 100, progress: bool = True, save_maps: bool = False,
             results_dir: str | Path | None = None) -> dict:
    """`results_dir`: score the results a `uad batch` or `uad pseudo-label` run wrote there (<case>/map.nii.gz,
    mask.nii.gz, result.json) instead of running the detector (e.g. SAMSEG's maps, 20 minutes per case)."""
    from tqdm import tqdm

    t0, c0 = time.perf_counter(), time.process_time()
    if out_dir is not None:
        from .plots import prefetch

        prefetch()  # the PR plot's imports overlap the detection
    det = get_detector(detector)
    p = det.validate(params)
    cases = find_cases(data_dir, require_gt=True)
    maps, gts, rows = [], [], []
    bar = tqdm(cases, desc=f"evaluate {detector}", unit="case", disable=not progress)
    for case in bar:
        bar.set_postfix_str(case.case_id)
        tc, cc = time.perf_counter(), time.process_time()
        # the mask is what is scored: the findings table and slice scores only for the saved results' JSON
        result = (stored_result(results_dir, case.case_id, detector) if results_dir is not None
                  else det.detect(case.images, p, progress=lambda f, m: None, findings=save_maps))
        info = result.info
        if results_dir is not None:
            for key in ("min_component_mm3", "connectivity"):  # the pooled curve's filter must be the run's
                if key in info and info[key] != p[key]:
                    raise InputError(f"{key}: case {case.case_id!r} was stored with {info[key]!r}, the evaluation "
                                     f"asks for {p[key]!r}: pass the stored run's parameters")
        n_components = len(info["components"]) if "components" in info else info["component_count"]
        gt_img = load_image(case.gt)
        if gt_img.GetSize() != result.anomaly_map.GetSize():
            raise ValueError(f"case {case.case_id}: ground truth {case.gt} has size {gt_img.GetSize()}, "
                             f"the map of its FLAIR {result.anomaly_map.GetSize()}: GT must be in the FLAIR's grid")
        # SimpleITK's (k, j, i) order: no metric depends on the axis order (the 6/18/26 neighbourhoods are
        # symmetric), and a plain copy is several times cheaper than the transposed (i, j, k) one
        score = sitk.GetArrayFromImage(result.anomaly_map)
        gt = sitk.GetArrayViewFromImage(gt_img) > 0.5
        mask = sitk.GetArrayViewFromImage(result.mask) > 0
        rows.append({"case": case.case_id, "dice_default": dice(mask, gt), "threshold": info["threshold"],
                     "gt_ml": float(gt.sum() * np.prod(gt_img.GetSpacing()) / 1000.0),
                     "detected_ml": info["anomalous_volume_ml"], "image_score": info["image_score"],
                     "components": n_components, "seconds": time.perf_counter() - tc,
                     "cpu_seconds": time.process_time() - cc})
        if save_maps and out_dir is not None:
            result.save(Path(out_dir) / "cases" / case.case_id)
        maps.append(score)
        gts.append(gt)
    lo = min(float(m.min()) for m in maps)
    hi = max(float(m.max()) for m in maps)
    pooled = PooledEvaluation(np.linspace(lo, hi, n_thresholds), max_removed_size=_voxels(p["min_component_mm3"]),
                              connectivity=p["connectivity"])
    pooled.add_many(zip(maps, gts))
    res = pooled.result()
    metrics = {"detector": detector, "dsc_upper": res["dsc_upper"], "auprc": res["auprc"], "auroc": res["auroc"],
               "best_threshold": res["best_threshold"], "cases": len(cases),
               "dice_default_mean": float(np.mean([r["dice_default"] for r in rows])),
               "per_case": rows, "dice_curve": res["dice_curve"], "params": p}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from .plots import plot_curves

        precision, recall = pooled.pr_curve()
        plot_curves(precision, recall, pooled.thresholds, pooled.dice_curve(),
                    f"{detector} on {Path(data_dir).name} ({len(cases)} cases)", out / "pr_curve.png", res["auprc"])
    # the whole evaluation: the cases, the pooled metrics and the outputs (but metrics.json's own writing)
    metrics["seconds"] = time.perf_counter() - t0
    metrics["cpu_seconds"] = time.process_time() - c0
    if out_dir is not None:
        write_json_atomic(metrics, out / "metrics.json")
    return metrics


def stored_result(results_dir: str | Path, case_id: str, detector: str):
    """The result of `case_id` as a batch run stored it, checked to come from `detector`."""
    from ..batch.runner import case_folder, finished
    from ..results import DetectionResult

    folder = case_folder(results_dir, case_id)
    if not finished(folder):
        raise InputError(f"results: no finished result of case {case_id!r} in {results_dir} (expected "
                         f"{folder.name}/map.nii.gz, mask.nii.gz and result.json, as `uad batch` writes them)")
    info = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    if info.get("detector") != detector:
        raise InputError(f"results: case {case_id!r} in {results_dir} comes from {info.get('detector')!r}, "
                         f"not {detector!r}")
    return DetectionResult(load_image(folder / "map.nii.gz"), load_image(folder / "mask.nii.gz"), info)


def _voxels(min_component_mm3: float) -> int:
    """The pooled curve is computed on voxel grids; the filter's mm^3 assumes the 1 mm work grid
    where 1 voxel = 1 mm^3 (the published protocol). Anisotropic native grids are scored on
    their own voxels, as the per-case masks are."""
    return int(np.floor(min_component_mm3))


def format_table(metrics: dict) -> str:
    lines = [f"{'case':<24}{'Dice@default':>14}{'GT mL':>10}{'found mL':>10}{'score':>10}{'s':>8}"]
    for r in metrics["per_case"]:
        lines.append(f"{r['case']:<24}{r['dice_default']:>14.3f}{r['gt_ml']:>10.2f}{r['detected_ml']:>10.2f}"
                     f"{r['image_score']:>10.4f}{r['seconds']:>8.2f}")
    lines.append("")
    lines.append(f"pooled over {metrics['cases']} case(s): upper-bound Dice {metrics['dsc_upper']:.3f} "
                 f"(threshold {metrics['best_threshold']:.4g}), AUPRC {metrics['auprc']:.3f}, "
                 f"AUROC {metrics['auroc']:.3f}; {metrics['seconds']:.1f} s")
    return "\n".join(lines)
