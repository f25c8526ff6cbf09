"""Server overhead: POST /infer against the same detector called in-process, on the same scan, in one run.

    .venv/bin/python benchmarks/load/overhead.py [--detector flair_threshold] [--repeats 3] [--scan PATH]

Default scan: the raw clinical FLAIR ../shared/data/raw_clinical/patient01/study1_FLAIR.nii.gz (full
preprocessing: N4, registration), else a phantom (preprocessed). In-process and HTTP runs alternate
after one warm-up each; the HTTP request asks the default multipart (float map, mask, brain, JSON), what
the Slicer module receives. Writes overhead.json and overhead.md next to this file.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE.parent), str(ROOT / "tests"), str(ROOT)]
from common import environment  # noqa: E402
from server_fixture import Server  # noqa: E402

RAW = ROOT.parent / "shared" / "data" / "raw_clinical" / "patient01" / "study1_FLAIR.nii.gz"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", default="flair_threshold")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scan", default=str(RAW) if RAW.exists() else None)
    args = ap.parse_args()
    from uad_label.detectors import get_detector

    tmp = Path(tempfile.mkdtemp(prefix="uad_overhead_"))
    studies = tmp / "studies"
    studies.mkdir()
    params = {}
    if args.scan:
        shutil.copy(args.scan, studies / "scan_FLAIR.nii.gz")
        source = "raw clinical FLAIR " + Path(args.scan).parent.name + "/" + Path(args.scan).name
    else:
        import SimpleITK as sitk
        from phantoms import brain_phantom

        img, _ = brain_phantom(shape=(182, 218, 182), seed=1)
        sitk.WriteImage(img, str(studies / "scan_FLAIR.nii.gz"))
        params = {"preprocessed": True}
        source = "182x218x182 phantom (preprocessed)"
    scan = studies / "scan_FLAIR.nii.gz"
    det = get_detector(args.detector)
    server = Server(studies, tmp / "server.log")
    local, http, inside = [], [], []
    try:
        def run_local():
            t = time.perf_counter()
            det.detect({"FLAIR": scan}, params)
            return time.perf_counter() - t

        def run_http():
            t = time.perf_counter()
            r = requests.post(server.url + f"/infer/{args.detector}", params={"image": "scan_FLAIR"},
                              data={"params": json.dumps(params)}, timeout=600)
            took = time.perf_counter() - t
            assert r.status_code == 200, r.text[:500]
            return took

        run_local(), run_http()  # warm-up: template, caches, imports on both sides
        for _ in range(args.repeats):
            local.append(run_local())
            http.append(run_http())
            r = requests.post(server.url + f"/infer/{args.detector}", params={"image": "scan_FLAIR", "output": "json"},
                              data={"params": json.dumps(params)}, timeout=600)
            inside.append(r.json()["latencies"]["total"])
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    med = lambda a: round(float(np.median(a)), 3)  # noqa: E731
    res = {"detector": args.detector, "scan": source, "repeats": args.repeats,
           "in_process_s": [round(x, 3) for x in local], "http_s": [round(x, 3) for x in http],
           "detector_inside_server_s": [round(x, 3) for x in inside],
           "in_process_median_s": med(local), "http_median_s": med(http),
           "ratio_http_to_in_process": round(med(http) / med(local), 3), "target_ratio": 1.05,
           "environment": environment()}
    (HERE / "overhead.json").write_text(json.dumps(res, indent=2))
    (HERE / "overhead.md").write_text(
        f"# Server overhead\n\n`{args.detector}` on the {source}, {args.repeats} alternating runs after one "
        f"warm-up each: in-process `detect` median {res['in_process_median_s']} s, POST /infer (multipart: map, "
        f"mask, brain, JSON) median {res['http_median_s']} s, ratio **{res['ratio_http_to_in_process']}** "
        f"(target <= 1.05). The detector's own total inside the server: {res['detector_inside_server_s']} s. "
        f"{res['environment']['cpus']} CPUs, load (1 min) {res['environment']['load_average_1min']:.1f}, "
        f"{res['environment']['date']}.\n")
    print(json.dumps({k: v for k, v in res.items() if k != "environment"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
