"""PatchDDM quality: per case Dice and HD95 (mm) of the segmentation (ensemble mean >= 0.5), mean
uncertainty, latencies; pooled upper-bound Dice / AUPRC / AUROC of the mean map by the evaluator's
protocol (uad_label.evaluation). Writes one JSON.

    python benchmarks/patchddm/eval_quality.py CASES_DIR --out benchmarks/patchddm/results/X.json [--preprocessed]
CASES_DIR: a `uad sample-data` folder (held-out synthetic cases) or a folder of case folders
(e.g. a symlink to ../shared/data/mslub/patient26). Uses the weights found as usual
($UAD_WEIGHTS_DIR, then the package's demo weights).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def hd95(pred: np.ndarray, gt: np.ndarray, spacing) -> float | None:
    """95th percentile of the symmetric surface distances (mm); None when either mask is empty."""
    from scipy import ndimage as ndi

    if not pred.any() or not gt.any():
        return None

    def surface(m):
        return m & ~ndi.binary_erosion(m, structure=ndi.generate_binary_structure(3, 1))

    sp, sg = surface(pred), surface(gt)
    dt_g = ndi.distance_transform_edt(~sg, sampling=spacing)
    dt_p = ndi.distance_transform_edt(~sp, sampling=spacing)
    return float(np.percentile(np.concatenate([dt_g[sp], dt_p[sg]]), 95))


def main() -> int:
    from benchmarks.common import environment
    from uad_label.cases import find_cases
    from uad_label.detectors import get_detector
    from uad_label.evaluation.metrics import PooledEvaluation, dice
    from uad_label.io import load_image
    from uad_label.preprocess.geometry import image_to_xyz

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--preprocessed", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--ensemble", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of this process (0: torch's default)")
    a = ap.parse_args()
    det = get_detector("patchddm")
    from uad_label.runtime import configure_threads

    configure_threads(a.threads)
    params = {"preprocessed": a.preprocessed, "steps": a.steps, "ensemble": a.ensemble}
    rows, maps, gts = [], [], []
    for case in find_cases(a.data_dir, require_gt=True):
        t = time.perf_counter()
        res = det.detect(case.images, params, progress=lambda f, m: None)
        seconds = time.perf_counter() - t
        gt_img = load_image(case.gt)
        gt = image_to_xyz(gt_img) > 0.5
        score = image_to_xyz(res.anomaly_map)
        mask = image_to_xyz(res.mask) > 0
        rows.append({"case": case.case_id, "dice": dice(mask, gt), "hd95_mm": hd95(mask, gt, gt_img.GetSpacing()),
                     "gt_ml": float(gt.sum() * np.prod(gt_img.GetSpacing()) / 1000),
                     "found_ml": res.info["anomalous_volume_ml"],
                     "mean_uncertainty": res.info["mean_uncertainty"], "components": len(res.info["components"]),
                     "seconds": round(seconds, 2), "sampling_seconds": res.info["sampling_seconds"],
                     "seconds_per_network_call": res.info["seconds_per_network_call"]})
        print(json.dumps(rows[-1]), flush=True)
        maps.append(score)
        gts.append(gt)
    lo, hi = min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
    pooled = PooledEvaluation(np.linspace(lo, hi, 100), max_removed_size=20, connectivity=26)
    for m, g in zip(maps, gts):
        pooled.add(m, g)
    r = pooled.result()
    from uad_label.weights import load_state

    _, card = load_state("patchddm")
    out = {"benchmark": "patchddm quality", "data": str(a.data_dir), "params": params, "per_case": rows,
           "dice_mean": float(np.mean([x["dice"] for x in rows])),
           "dsc_upper": r["dsc_upper"], "best_threshold": r["best_threshold"], "auprc": r["auprc"], "auroc": r["auroc"],
           "weights": {k: card.get(k) for k in ("config", "spacing_mm", "data", "training", "date")},
           "environment": environment()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("dice_mean", "dsc_upper", "auprc", "auroc")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
