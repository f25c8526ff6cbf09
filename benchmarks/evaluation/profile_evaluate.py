"""Where `uad evaluate` spends its time per 182x218x182 volume, and the ranking metrics before/after.

    nice -n 10 .venv/bin/python benchmarks/evaluation/profile_evaluate.py [--case DIR] [--repeats 5]

One run times (a) each stage of one evaluation of flair_threshold on MSLUB patient 26 (NIfTI read, the NaN
check's second decompression, detection stages, ground-truth read, component-filtered counts at 100
thresholds, distinct-sample collapse, AUROC + AUPRC: scikit-learn before, one sorted pass after) and (b) the
whole `evaluate()` with the metrics code as committed (git HEAD's metrics.py and level_components.py, and
evaluate.py's (i, j, k) copies: "before") and as in the working tree ("after"), everything else the same,
each in a fresh process (warm-up call, then one timed call), interleaved
repeat by repeat with the load average of each. The metrics of both must be identical. Writes profile.json
and profile.md next to this file.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import environment  # noqa: E402


def _timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


# evaluate.py's array conversion as committed, put back into the working tree's evaluate.py
AFTER_ARRAYS = """        score = sitk.GetArrayFromImage(result.anomaly_map)
        gt = sitk.GetArrayViewFromImage(gt_img) > 0.5
        mask = sitk.GetArrayViewFromImage(result.mask) > 0
"""
BEFORE_ARRAYS = """        from uad_label.preprocess.geometry import image_to_xyz
        score = image_to_xyz(result.anomaly_map)
        gt = image_to_xyz(gt_img) > 0.5
        mask = image_to_xyz(result.mask) > 0
"""


def before_tree() -> Path:
    """A copy of the working tree's uad_label with the metrics code as committed (git HEAD)."""
    import shutil
    import subprocess
    import tempfile

    root = HERE.parents[1]
    tree = Path(tempfile.mkdtemp(prefix="uad-eval-before-"))
    shutil.copytree(root / "uad_label", tree / "uad_label", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("uad_label/evaluation/metrics.py", "uad_label/evaluation/level_components.py"):
        text = subprocess.run(["git", "show", f"HEAD:{name}"], cwd=root, capture_output=True, text=True,
                              check=True).stdout
        (tree / name).write_text(text)
    evaluate = tree / "uad_label" / "evaluation" / "evaluate.py"
    source = evaluate.read_text()
    if AFTER_ARRAYS not in source:
        raise RuntimeError("evaluate.py changed: update AFTER_ARRAYS in this benchmark")
    evaluate.write_text(source.replace(AFTER_ARRAYS, BEFORE_ARRAYS))
    return tree


TIMED = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from uad_label.evaluation.evaluate import evaluate
evaluate("flair_threshold", sys.argv[2], None, {"preprocessed": True}, progress=False)  # warm-up
t = time.perf_counter()
m = evaluate("flair_threshold", sys.argv[2], None, {"preprocessed": True}, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "dsc_upper": m["dsc_upper"], "auprc": m["auprc"],
                  "auroc": m["auroc"], "module": __import__("uad_label").__file__}))
"""


def timed_run(tree: Path, cases: Path) -> dict:
    import subprocess

    out = subprocess.run([sys.executable, "-c", TIMED, str(tree), str(cases)], capture_output=True, text=True,
                         check=True, cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1])


def stages(case: Path) -> dict:
    import SimpleITK as sitk

    from uad_label.detectors import get_detector
    from uad_label.evaluation.level_components import filtered_counts
    from uad_label.evaluation.metrics import auroc_auprc, ranking_curve, weighted_samples
    from uad_label.io import _refuse_nifti_nan, load_image
    from uad_label.preprocess.geometry import image_to_xyz

    out = {}
    _, out["read FLAIR (SimpleITK, gzip)"] = _timed(sitk.ReadImage, str(case / "FLAIR.nii.gz"))
    _, out["NaN check of FLAIR (nibabel: decompresses again)"] = _timed(_refuse_nifti_nan, case / "FLAIR.nii.gz")
    res = get_detector("flair_threshold").detect({"FLAIR": case / "FLAIR.nii.gz"}, {"preprocessed": True})
    for k, v in res.info["latencies"].items():
        if k in ("load", "preprocess", "contrast_check", "detect", "postprocess", "total"):
            out[f"detect: {k}"] = v
    gt_img, out["read GT (load_image, with NaN check)"] = _timed(load_image, case / "GT.nii.gz")
    (score, gt), out["to (x, y, z) arrays"] = _timed(lambda: (image_to_xyz(res.anomaly_map),
                                                              image_to_xyz(gt_img) > 0.5))
    th = np.linspace(score.min(), score.max(), 100)
    _, out["filtered counts at 100 thresholds (union-find sweep)"] = _timed(filtered_counts, score, gt, th, 20, 26)
    samples, out["distinct (score, label) samples"] = _timed(weighted_samples, score, gt)
    from sklearn.metrics import average_precision_score, roc_auc_score

    s, y, w = samples
    _, out["AUROC + AUPRC, scikit-learn (before)"] = _timed(
        lambda: (roc_auc_score(y, s, sample_weight=w), average_precision_score(y, s, sample_weight=w)))
    _, out["AUROC + AUPRC, one sorted pass (after)"] = _timed(lambda: auroc_auprc(*ranking_curve(s, y, w)))
    out["distinct samples"] = int(s.size)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default=str(HERE.parents[2] / "shared" / "data" / "mslub" / "patient26"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import tempfile

    case = Path(args.case)
    cases = Path(tempfile.mkdtemp(prefix="uad-eval-profile-"))
    (cases / case.name).symlink_to(case.resolve())
    env = environment()
    stages(case)  # warm-up: imports, numba's cache, first-call allocations
    stage_rows = stages(case)
    trees = {"before": before_tree(), "after": HERE.parents[1]}
    runs = {"before": [], "after": []}
    metrics = {}
    for _ in range(args.repeats):
        for label, tree in trees.items():
            load = os.getloadavg()[0]
            r = timed_run(tree, cases)
            assert r["module"].startswith(str(tree)), r["module"]
            runs[label].append({"seconds": round(r["seconds"], 3), "load_average_1min": round(load, 2)})
            metrics[label] = {k: r[k] for k in ("dsc_upper", "auprc", "auroc")}
    identical = {k: abs(metrics["before"][k] - metrics["after"][k]) for k in metrics["after"]}
    out = {"benchmark": "uad evaluate flair_threshold, one 182x218x182 volume (MSLUB patient 26, --preprocessed)",
           "environment": env, "stages_s": stage_rows, "runs": runs,
           "median_s": {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()},
           "best_s": {k: min(r["seconds"] for r in v) for k, v in runs.items()},
           "metrics": metrics, "abs_difference": identical}
    (HERE / "profile.json").write_text(json.dumps(out, indent=2))
    md = [f"# Where `uad evaluate` spends its time ({env['date']})", "",
          f"Machine: {env['cpus']} CPUs ({env['processor']}), shared; load average {env['load_average_1min']:.1f} "
          f"at start. Python {env['python']}, numpy {env['numpy']}, numba {env.get('numba')}, scikit-learn "
          f"{env.get('sklearn')}. flair_threshold on MSLUB patient 26 (182x218x182), produced by profile_evaluate.py.",
          "", "## Stages of one evaluation (one pass, seconds)", "", "| stage | s |", "|---|---|"]
    md += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v:,} |" for k, v in stage_rows.items()]
    md += ["", "## Whole `evaluate()`, before and after, interleaved in one run", "",
           "| repeat | before s (load) | after s (load) |", "|---|---|---|"]
    for i, (b, a) in enumerate(zip(runs["before"], runs["after"])):
        md.append(f"| {i + 1} | {b['seconds']:.2f} ({b['load_average_1min']:.1f}) | "
                  f"{a['seconds']:.2f} ({a['load_average_1min']:.1f}) |")
    md += ["", f"Median {out['median_s']['before']:.2f} s before, {out['median_s']['after']:.2f} s after; best "
           f"{out['best_s']['before']:.2f} / {out['best_s']['after']:.2f} s. Metrics after: upper-bound Dice "
           f"{metrics['after']['dsc_upper']:.4f}, AUPRC {metrics['after']['auprc']:.4f}, AUROC "
           f"{metrics['after']['auroc']:.4f}; largest difference to before {max(identical.values()):.1e}.", ""]
    (HERE / "profile.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
