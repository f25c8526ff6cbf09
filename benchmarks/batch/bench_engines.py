"""`uad batch` engines side by side, in one run: local vs Ray with 1 and 2 workers (a local Ray cluster on
127.0.0.1 started by this script), on the same cases. Reports cases/min, peak memory per worker, and the
start-up cost of the cluster (ray.init) and of the actors (detector loaded once per actor).

    .venv/bin/python benchmarks/batch/bench_engines.py [--cases 6] [--raw 2] [--detector flair_threshold]

Template-space cases: ../shared/data/mslub/patient26 FLAIR copied N times (182x218x182, --preprocessed).
Raw cases (--raw N, 0 to skip): the first N studies of ../shared/data/raw_clinical (scanner grids with skull:
N4, registration to MNI and brain mask run per case). Every configuration starts from an empty output folder.
Writes engines.json and engines.md next to this file.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(ROOT))
from common import environment  # noqa: E402


def _one(engine: str, workers: int, src: str, out: str, detector: str, params: dict, threads: int) -> dict:
    """One configuration in this (fresh) process."""
    t = time.perf_counter()
    if engine == "local":
        from uad_label.batch.runner import run_batch
        from uad_label.runtime import configure_threads

        configure_threads(threads)  # 0: the libraries' defaults (what `uad batch` does without UAD_THREADS)

        run_batch(detector, src, out, params)
        info = json.loads((Path(out) / "batch.json").read_text())
        info["worker_peak_rss_mb"] = [round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)]
        info["cluster_start_seconds"] = 0.0
    else:
        import ray

        from uad_label.batch.ray_engine import run_batch_ray

        t0 = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1",
                 object_store_memory=200 * 2 ** 20, log_to_driver=False)
        cluster_s = time.perf_counter() - t0
        try:
            run_batch_ray(detector, src, out, params, workers=workers)
        finally:
            ray.shutdown()
        info = json.loads((Path(out) / "batch.json").read_text())
        info["cluster_start_seconds"] = round(cluster_s, 2)
    info["total_seconds"] = round(time.perf_counter() - t, 2)
    return info


def _run(engine: str, workers: int, src: Path, out: Path, detector: str, params: dict, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--one",
           json.dumps([engine, workers, str(src), str(out), detector, params, threads])]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{engine} x{workers} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--raw", type=int, default=2)
    ap.add_argument("--detector", default="flair_threshold")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_one(*json.loads(args.one))))
        return 0
    from uad_label.cases import find_cases

    # (engine, workers, torch/SimpleITK threads of the local engine; Ray actors always use 1 per worker)
    configs = [("local", 1, 0), ("local", 1, 1), ("ray", 1, 1), ("ray", 2, 1)]
    results = {"environment_start": environment(), "detector": args.detector, "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        sets = {}
        if args.cases:
            src = Path(tmp) / "template"
            src.mkdir()
            for i in range(args.cases):
                shutil.copy(DATA / "mslub" / "patient26" / "FLAIR.nii.gz", src / f"case{i:02d}_FLAIR.nii.gz")
            sets["template-space (patient26 FLAIR x %d, 182x218x182, preprocessed)" % args.cases] = \
                (src, {"preprocessed": True})
        if args.raw:
            manifest = Path(tmp) / "raw.csv"
            cases = find_cases(DATA / "raw_clinical")[: args.raw]
            mods = sorted({m for c in cases for m in c.images})
            manifest.write_text("id," + ",".join(mods) + "\n" + "".join(
                c.case_id + "," + ",".join(str(c.images.get(m, "")) for m in mods) + "\n" for c in cases))
            sets[f"raw clinical ({', '.join(c.case_id for c in cases)}; N4 + registration per case)"] = (manifest, {})
        for name, (src, params) in sets.items():
            rows = []
            for engine, workers, threads in configs:
                out = Path(tmp) / f"out-{engine}-{workers}-{threads}-{len(results['sets'])}"
                info = _run(engine, workers, src, out, args.detector, params, threads)
                info["load_average_1min_after"] = round(os.getloadavg()[0], 2)
                rows.append({"engine": engine, "workers": workers, "threads": threads or "default",
                             **{k: info.get(k) for k in (
                    "cases", "ok", "failed", "cases_per_min", "run_seconds", "startup_seconds", "cluster_start_seconds",
                    "total_seconds", "worker_peak_rss_mb", "load_average_1min_after")}})
                print(json.dumps(rows[-1]), flush=True)
            results["sets"][name] = rows
    results["environment_end"] = environment()
    (HERE / "engines.json").write_text(json.dumps(results, indent=2))
    env = results["environment_start"]
    lines = [f"# uad batch: local vs Ray engines ({args.detector})", "",
             f"{env['date']}, {env['device']} ({env['cpus']} CPUs, shared with other jobs; load average "
             f"{env['load_average_1min']:.1f} at start, {results['environment_end']['load_average_1min']:.1f} at end), "
             f"torch {env['torch']}, Ray local cluster on 127.0.0.1 (1 CPU per worker).", ""]
    for name, rows in results["sets"].items():
        lines += [f"## {name}", "", "| engine | workers | threads per worker | cases/min | run s | actors start s | "
                  "ray.init s | peak RSS per worker MB | load after |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            ray_ = r["engine"] == "ray"
            lines.append(f"| {r['engine']} | {r['workers']} | {r['threads']} | {r['cases_per_min']} | "
                         f"{r['run_seconds']} | {r['startup_seconds'] if ray_ else '-'} | "
                         f"{r['cluster_start_seconds'] if ray_ else '-'} | "
                         f"{', '.join(str(m) for m in r['worker_peak_rss_mb'] or [])} | "
                         f"{r['load_average_1min_after']} |")
        lines.append("")
    (HERE / "engines.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
