"""Runtime (and quality) of the `samseg` detector per setting on a 182x218x182 case (FLAIR+T1+T2).

    nice -n 10 .venv/bin/python benchmarks/samseg/bench_runtime.py [--case ../shared/data/mslub/patient26]
        [--settings default,fast,no_shape_model] [--out benchmarks/samseg/runtime]

Each setting runs the detector once through the product path (`Samseg.detect`, template-space input,
SAMSEG in its child process) and records the wall time, SAMSEG's stages, the child's peak memory, the
machine's load (the development machine is shared: runs are not comparable across loads), and the
published metrics on the case (upper-bound Dice, AUPRC, AUROC; Dice at 0.3 and 0.5). Results are
merged into OUT/results.json (one entry per setting, the latest run wins) and OUT/results.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import environment  # noqa: E402

SETTINGS = {
    "default": {},
    # a quarter of the sampler, a fifth of the fit
    "fast": {"samples": 20, "burnin": 20, "max_iterations": 20, "deformation_iterations": 10},
    "no_shape_model": {"shape_model": False},
    "fit_only_fast": {"shape_model": False, "max_iterations": 20, "deformation_iterations": 10},
}


def run_setting(case: Path, name: str, threads: int) -> dict:
    import SimpleITK as sitk

    from uad_label.detectors import get_detector
    from uad_label.evaluation.metrics import dice, evaluate_maps
    from uad_label.preprocess.geometry import image_to_xyz

    params = {"preprocessed": True, "threads": threads, **SETTINGS[name]}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = get_detector("samseg").detect({m: case / f"{m}.nii.gz" for m in ("FLAIR", "T1", "T2")}, params,
                                           progress=lambda f, m: print(f"[{name}] {100 * f:3.0f}% {m}", flush=True))
    seconds = time.perf_counter() - t0
    score = image_to_xyz(result.anomaly_map)
    gt = image_to_xyz(sitk.ReadImage(str(case / "GT.nii.gz"))) > 0.5
    res = evaluate_maps([score], [gt]).result()
    info = result.info["samseg"]
    return {"params": params, "seconds": round(seconds, 1), "samseg_seconds": info["seconds"],
            "samseg_cpu_seconds": info["cpu_seconds"],
            "stages_s": info["stages_s"], "max_rss_mb": info["max_rss_mb"],
            "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
            "dsc_upper": round(res["dsc_upper"], 4), "auprc": round(res["auprc"], 4), "auroc": round(res["auroc"], 4),
            "best_threshold": round(res["best_threshold"], 3),
            "dice_at_0.3": round(dice(score > 0.3, gt), 4), "dice_at_0.5": round(dice(score > 0.5, gt), 4),
            "lesion_ml": info["lesion_ml"], "shape": list(score.shape), "environment": environment()}


def write_markdown(results: dict, path: Path) -> None:
    rows = ["| setting | params | wall s | CPU s | stages (s) | peak MB | load before/after | upper Dice | AUPRC | "
            "AUROC | Dice@0.3 | Dice@0.5 |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        extra = {k: v for k, v in r["params"].items() if k not in ("preprocessed",)}
        stages = ", ".join(f"{k.split(':')[0].split(' (')[0]} {v}" for k, v in r["stages_s"].items() if v >= 1)
        load = r["load_average_1min"]
        cpu = r.get("samseg_cpu_seconds")  # not recorded by the first runs
        rows.append(f"| {name} | {json.dumps(extra)} | {r['seconds']:.0f} | {'-' if cpu is None else round(cpu)} | "
                    f"{stages} | {r['max_rss_mb']} | "
                    f"{load['before']} / {load['after']} | {r['dsc_upper']:.3f} | {r['auprc']:.3f} | "
                    f"{r['auroc']:.3f} | "
                    f"{r['dice_at_0.3']:.3f} | {r['dice_at_0.5']:.3f} |")
    env = next(iter(results.values()))["environment"]
    head = (f"# samseg runtime on MSLUB patient 26 (182x218x182, FLAIR+T1+T2, template space)\n\n"
            f"Machine: {env['cpus']} CPUs ({env['processor']}), shared with other jobs (see the load column); "
            f"Python {env['python']}, numpy {env['numpy']}. Written by bench_runtime.py.\n\n")
    path.write_text(head + "\n".join(rows) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default=str(HERE.parents[2] / "shared" / "data" / "mslub" / "patient26"))
    ap.add_argument("--settings", default="default,fast,no_shape_model",
                    help=f"comma-separated, from {sorted(SETTINGS)}")
    ap.add_argument("--threads", type=int, default=0, help="SAMSEG threads (0 = all cores)")
    ap.add_argument("--out", default=str(HERE / "runtime"))
    args = ap.parse_args()
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        ap.error(f"--settings: unknown {unknown}; expected some of {sorted(SETTINGS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in names:
        results[name] = run_setting(Path(args.case), name, args.threads)
        path.write_text(json.dumps(results, indent=1))
        write_markdown(results, out / "results.md")
        print(json.dumps({name: {k: v for k, v in results[name].items() if k != "environment"}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
