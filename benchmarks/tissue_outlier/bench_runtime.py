"""Runtime of tissue_outlier on a 182x218x182 case (MSLUB patient 26, template space, FSL's MNI
grid) and on raw clinical scans through the full preprocessing (N4, registration to the 197x233x189
template grid), FLAIR alone and FLAIR + T1 + T2. Writes results.json / results.md next to this file.

    python benchmarks/tissue_outlier/bench_runtime.py [--repeats 3]

`detect` is the detector's own work (EM + MRF, map); `total` adds loading, preprocessing,
the contrast check and the way back to the native grid with the findings. The first call in a
process also builds the atlas priors on the grid (cached afterwards: a server or a batch run on one
grid pays it once); it is reported separately as `first_call`."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import environment  # noqa: E402

from uad_label.detectors import get_detector  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
P26 = DATA / "mslub" / "patient26"
RAW = DATA / "raw_clinical" / "patient01"


def run(det, images, params, repeats):
    rows = []
    for _ in range(repeats):
        r = det.detect(images, params, progress=lambda f, m: None)
        lat = r.info["latencies"]
        rows.append({k: lat.get(k) for k in ("load", "preprocess", "contrast_check", "detect", "postprocess", "total")})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    det = get_detector("tissue_outlier")
    load_before = os.getloadavg()
    cases = [
        ("patient26 FLAIR (template space, 182x218x182)", {"FLAIR": P26 / "FLAIR.nii.gz"},
         {"preprocessed": True}, True),
        ("patient26 FLAIR+T1+T2 (template space, 182x218x182)",
         {m: P26 / f"{m}.nii.gz" for m in ("FLAIR", "T1", "T2")}, {"preprocessed": True}, True),
        ("raw patient01 study1 FLAIR (320x320x36, N4 + registration)",
         {"FLAIR": RAW / "study1_FLAIR.nii.gz"}, {}, False),
        ("raw patient01 study1 FLAIR+T1W+T2W", {"FLAIR": RAW / "study1_FLAIR.nii.gz", "T1": RAW / "study1_T1W.nii.gz",
                                                "T2": RAW / "study1_T2W.nii.gz"}, {}, False),
    ]
    results = []
    for name, images, params, repeat in cases:
        rows = run(det, images, params, args.repeats if repeat else 1)
        warm = rows[1:] or rows
        res = {"case": name, "params": params, "first_call": rows[0],
               "detect_s_median": round(statistics.median(r["detect"] for r in warm), 3),
               "total_s_median": round(statistics.median(r["total"] for r in warm), 3), "runs": len(rows)}
        results.append(res)
        print(json.dumps(res), flush=True)
    env = {**environment(), "load_average_before": load_before, "load_average_after": os.getloadavg()}
    (HERE / "results.json").write_text(json.dumps({"environment": env, "results": results}, indent=2),
                                       encoding="utf-8")
    lines = [f"# tissue_outlier runtime\n\n{env['date']}; {env['processor']}, {env['cpus']} CPUs shared with "
             f"other jobs (load average {load_before[0]:.1f} before, {env['load_average_after'][0]:.1f} after); "
             f"python {env['python']}, numpy {env['numpy']}, SimpleITK {env.get('SimpleITK')}. "
             f"`python benchmarks/tissue_outlier/bench_runtime.py --repeats {args.repeats}`; default parameters.\n",
             "| case | detect s (median, warm) | total s (median, warm) | first call: detect / total s |",
             "|---|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['case']} | {r['detect_s_median']:.2f} | {r['total_s_median']:.2f} | "
                     f"{r['first_call']['detect']:.2f} / {r['first_call']['total']:.2f} |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
