"""Throughput of `uad batch`: cases per minute, everything included (load, detect, map/mask/JSON,
PNG report), on full-size template-space volumes (182x218x182, --preprocessed protocol).

    .venv/bin/python benchmarks/batch/bench_batch.py [--cases 4] [--detector flair_threshold] [--case DIR]

Uses ../shared/data/mslub/patient26 FLAIR copied N times as a flat datastore (real brain, real size).
Learned detectors: run with --detector NAME on a machine with a GPU (the device is reported).
Writes results.json and results.md next to this file.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(ROOT))
from common import environment  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--detector", default="flair_threshold")
    ap.add_argument("--case", default=str(ROOT.parent / "shared" / "data" / "mslub" / "patient26"))
    args = ap.parse_args()
    from uad_label.batch.runner import run_batch

    flair = Path(args.case) / "FLAIR.nii.gz"
    if not flair.exists():
        print(f"no input volume at {flair}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for i in range(args.cases):
            shutil.copy(flair, src / f"case{i:02d}_FLAIR.nii.gz")
        out = Path(tmp) / "out"
        t = time.perf_counter()
        rows = run_batch(args.detector, src, out, {"preprocessed": True})
        wall = time.perf_counter() - t
        t = time.perf_counter()
        run_batch(args.detector, src, out, {"preprocessed": True})  # resume: everything skipped
        resume = time.perf_counter() - t
    ok = [r for r in rows if r["status"] == "ok"]
    per_case = [float(r["seconds"]) for r in ok]
    res = {"detector": args.detector, "cases": args.cases, "ok": len(ok), "wall_s": round(wall, 2),
           "cases_per_minute": round(60 * len(ok) / wall, 2),
           "seconds_per_case_mean": round(sum(per_case) / len(per_case), 2) if per_case else None,
           "resume_all_skipped_s": round(resume, 2), "volume": "182x218x182 (MNI, preprocessed)",
           "environment": environment()}
    (HERE / "results.json").write_text(json.dumps(res, indent=2))
    (HERE / "results.md").write_text(
        f"# uad batch throughput\n\n{res['detector']} on {res['environment']['device']} "
        f"({res['environment']['cpus']} CPUs, load {res['environment']['load_average_1min']:.1f}): "
        f"**{res['cases_per_minute']} cases/min** ({res['seconds_per_case_mean']} s per case, {res['volume']}, "
        f"map + mask + JSON + PNG report); resuming a finished batch of {args.cases}: "
        f"{res['resume_all_skipped_s']} s.\n")
    print(json.dumps({k: v for k, v in res.items() if k != "environment"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
