"""Inference time and peak memory of the reconstruction detectors per 182x218x182 volume (the MSLUB
patient of ../shared, FSL MNI grid, template-space input), one detector per subprocess so that the
peak resident memory is that detector's own.

    .venv/bin/python benchmarks/recon/bench_recon.py --device cpu --repeats 3
    python benchmarks/recon/bench_recon.py --device cuda --repeats 10     # GPU machine (needs monai)

Writes benchmarks/recon/results_<device>.json and .md. Latencies are those the detector reports
(uad_label result 'latencies'); the first call (imports, weight loading) is reported apart."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

CHILD = r"""
import json, resource, sys, time
import torch
from uad_label.detectors import get_detector
name, case, device, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
det = get_detector(name)
mod = det.modalities[0]
images = {mod: f"{case}/{mod}.nii.gz"}
params = {"preprocessed": True, "device": device}
t = time.perf_counter(); det.detect(images, params); first = time.perf_counter() - t
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
runs = []
for _ in range(repeats):
    r = det.detect(images, params)
    runs.append(r.info["latencies"])
out = {"detector": name, "modality": mod, "first_call_s": round(first, 3), "runs": runs,
       "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
if device == "cuda":
    out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
print("RESULT " + json.dumps(out))
"""


def main() -> int:
    from common import environment

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--case", default=str(ROOT.parent / "shared" / "data" / "mslub" / "patient26"))
    p.add_argument("--detectors", nargs="+", default=["baur_ae", "ae3d", "strega"])
    args = p.parse_args()
    results = []
    for name in args.detectors:
        proc = subprocess.run([sys.executable, "-c", CHILD, name, args.case, args.device, str(args.repeats)],
                              capture_output=True, text=True, cwd=ROOT, env={**os.environ})
        line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
        if proc.returncode or not line:
            results.append({"detector": name, "error": proc.stderr[-2000:]})
            continue
        r = json.loads(line[0][7:])
        for key in ("detect", "total"):
            vals = sorted(run[key] for run in r["runs"])
            r[f"{key}_median_s"] = vals[len(vals) // 2]
        results.append(r)
        print(name, {k: v for k, v in r.items() if k != "runs"}, flush=True)
    env = environment()
    previous = HERE / f"results_{args.device}.json"
    if previous.exists():  # keep the other detectors' rows (each row carries its own environment)
        old = json.loads(previous.read_text(encoding="utf-8"))
        results = [r for r in old["results"] if r["detector"] not in args.detectors] + results
    for r in results:
        r.setdefault("environment", env)
    out = {"environment": env, "case": args.case, "volume": "182x218x182 (FSL MNI 1 mm), template-space input",
           "device": args.device, "repeats": args.repeats, "results": results}
    (HERE / f"results_{args.device}.json").write_text(json.dumps(out, indent=2))
    lines = [f"# Reconstruction detectors: inference per 182x218x182 volume ({args.device})", "",
             f"{env['date']}, {env['processor']}, {env['cpus']} CPUs, load average {env['load_average_1min']:.1f}, "
             f"torch {env['torch']}, device {env['device']}", "",
             "| detector | first call s | detect s (median) | total s (median) | peak RSS MB | peak CUDA MB | "
             "load avg |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['detector']} | error | | | | |")
            continue
        lines.append(f"| {r['detector']} | {r['first_call_s']} | {r['detect_median_s']:.2f} | "
                     f"{r['total_median_s']:.2f} | "
                     f"{r['peak_rss_mb']} | {r.get('peak_cuda_mb', '-')} | "
                     f"{r['environment']['load_average_1min']:.1f} |")
    (HERE / f"results_{args.device}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
