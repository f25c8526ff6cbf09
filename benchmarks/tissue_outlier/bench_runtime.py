"""Runtime of tissue_outlier on a 182x218x182 case (MSLUB patient 26, template space, FSL's MNI
grid) and on raw clinical scans through the full preprocessing (N4, registration to the 197x233x189
template grid, T1/T2 rigidly onto the FLAIR), FLAIR alone and FLAIR + T1 + T2. Writes results.json /
results.md next to this file.

    python benchmarks/tissue_outlier/bench_runtime.py [--repeats 3]

Per stage, wall seconds (the detector's `latencies`) and CPU seconds of the process (all threads:
`time.process_time` around the stage's functions, wrapped here): `load`; `preprocess` with its
parts `heads` (head masks), `n4`, `register` (FLAIR -> template), `register_modalities` (T1/T2 ->
FLAIR) and `other` (template, resampling into the work grid); `contrast_check`; `detect` (the
detector's own work: EM + MRF, map); `post` (back to the native grid, components); `total`. The
machine is shared, so CPU seconds are the comparable number; the load average is recorded. The
first call in a process also builds the atlas priors on the grid (cached afterwards: a server or a
batch run on one grid pays it once); it is reported separately as `first_call`."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import environment  # noqa: E402

from uad_label.detectors import get_detector  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
P26 = DATA / "mslub" / "patient26"
RAW = DATA / "raw_clinical"
STAGES = ("load", "preprocess", "heads", "n4", "register", "register_modalities", "other", "contrast_check",
          "detect", "post", "total")


@contextlib.contextmanager
def cpu_by_stage(det, cpu: dict):
    """Wrap the functions each stage runs so that their CPU seconds add up in `cpu`."""
    import uad_label.preprocess as pre
    import uad_label.preprocess.contrast as con
    import uad_label.preprocess.register as reg

    targets = [(reg, "head_mask", "heads"), (reg, "n4_bias_correct", "n4"), (reg, "register_to_template", "register"),
               (reg, "register_rigid", "register_modalities"), (pre, "preprocess", "preprocess"),
               (con, "check_modality_contrast", "contrast_check"), (det, "compute_map", "detect")]
    saved = []
    for owner, name, stage in targets:
        fn = getattr(owner, name)
        saved.append((owner, name, owner.__dict__.get(name)))

        def wrapped(*a, _fn=fn, _stage=stage, **k):
            c = time.process_time()
            try:
                return _fn(*a, **k)
            finally:
                cpu[_stage] = cpu.get(_stage, 0.0) + time.process_time() - c
        setattr(owner, name, wrapped)
    try:
        yield
    finally:
        for owner, name, old in saved:
            if old is None:
                delattr(owner, name)
            else:
                setattr(owner, name, old)


def one_call(det, images, params) -> dict:
    cpu: dict = {}
    with cpu_by_stage(det, cpu):
        c = time.process_time()
        r = det.detect(images, params, progress=lambda f, m: None)
        cpu["total"] = time.process_time() - c
    lat = r.info["latencies"]
    wall = {"load": lat["load"], "preprocess": lat["preprocess"], "contrast_check": lat.get("contrast_check", 0.0),
            "detect": lat["detect"], "post": lat["postprocess"], "total": lat["total"],
            "heads": None, "n4": lat.get("preprocess.n4", 0.0), "register": lat.get("preprocess.register", 0.0),
            "register_modalities": lat.get("preprocess.register_modalities", 0.0)}
    wall["other"] = wall["preprocess"] - wall["n4"] - wall["register"] - wall["register_modalities"]
    cpu = {s: cpu.get(s, 0.0) for s in STAGES if s not in ("other", "post", "load")} | {
        "other": cpu.get("preprocess", 0.0) - sum(cpu.get(s, 0.0) for s in ("heads", "n4", "register",
                                                                          "register_modalities"))}
    cpu["load_post"] = cpu["total"] - cpu["preprocess"] - cpu["contrast_check"] - cpu["detect"]
    return {"wall": {k: (None if v is None else round(v, 3)) for k, v in wall.items()},
            "cpu": {k: round(v, 3) for k, v in cpu.items()}, "loadavg_1min": round(os.getloadavg()[0], 2),
            "modalities": list(r.info["tissue_outlier"]["channels"]),
            "intrastudy": {k: v.get("accepted") for k, v in r.info["preprocessing"].get("modalities", {}).items()}}


def raw_study(patient: str, study: str, modalities) -> dict:
    names = {"FLAIR": "FLAIR", "T1": "T1W", "T2": "T2W"}
    return {m: RAW / patient / f"{study}_{names[m]}.nii.gz" for m in modalities}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    det = get_detector("tissue_outlier")
    load_before = os.getloadavg()
    mm = ("FLAIR", "T1", "T2")
    cases = [
        ("patient26 FLAIR (template space, 182x218x182)", {"FLAIR": P26 / "FLAIR.nii.gz"}, {"preprocessed": True}),
        ("patient26 FLAIR+T1+T2 (template space, 182x218x182)", {m: P26 / f"{m}.nii.gz" for m in mm},
         {"preprocessed": True}),
        ("raw patient01 study1 FLAIR (320x320x36)", raw_study("patient01", "study1", ("FLAIR",)), {}),
        ("raw patient01 study1 FLAIR+T1W+T2W", raw_study("patient01", "study1", mm), {}),
        ("raw patient12 study1 FLAIR+T1W+T2W (320x320x48)", raw_study("patient12", "study1", mm), {}),
    ]
    results = []
    for name, images, params in cases:
        rows = [one_call(det, images, params) for _ in range(args.repeats)]
        warm = rows[1:] or rows

        def med(kind, stage):
            vals = [r[kind][stage] for r in warm if r[kind].get(stage) is not None]
            return round(statistics.median(vals), 3) if vals else None
        res = {"case": name, "params": params, "runs": len(rows), "first_call": rows[0],
               "median_warm": {"wall": {s: med("wall", s) for s in rows[0]["wall"]},
                               "cpu": {s: med("cpu", s) for s in rows[0]["cpu"]}},
               "all_runs": rows}
        results.append(res)
        print(json.dumps({k: res[k] for k in ("case", "median_warm")}), flush=True)
    env = {**environment(), "load_average_before": load_before, "load_average_after": os.getloadavg()}
    (HERE / "results.json").write_text(json.dumps({"environment": env, "results": results}, indent=2),
                                       encoding="utf-8")
    lines = [f"# tissue_outlier runtime\n\n{env['date']}; {env['processor']}, {env['cpus']} CPUs shared with "
             f"other jobs (load average {load_before[0]:.1f} before, {env['load_average_after'][0]:.1f} after; "
             f"per run in results.json); python {env['python']}, numpy {env['numpy']}, SimpleITK "
             f"{env.get('SimpleITK')}. `python benchmarks/tissue_outlier/bench_runtime.py --repeats {args.repeats}`; "
             "default parameters. Median of the warm runs (after the first of each case), wall / CPU seconds "
             "(CPU: all threads of the process).\n",
             "| case | total wall / CPU s | preprocess | of which N4 | register FLAIR | T1/T2 onto FLAIR | "
             "other (resample) | contrast check | detect | first call: total wall / CPU s | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def pair(d, s, key="cpu"):
        w, c = d["wall"].get(s), d["cpu"].get(s)
        return "-" if not w and not c else f"{w or 0:.2f} / {c or 0:.2f}"
    for r in results:
        m = r["median_warm"]
        loads = [x["loadavg_1min"] for x in r["all_runs"]]
        lines.append(f"| {r['case']} | {pair(m, 'total')} | {pair(m, 'preprocess')} | {pair(m, 'n4')} | "
                     f"{pair(m, 'register')} | {pair(m, 'register_modalities')} | {pair(m, 'other')} | "
                     f"{pair(m, 'contrast_check')} | {pair(m, 'detect')} | {pair(r['first_call'], 'total')} | "
                     f"{min(loads):.1f}-{max(loads):.1f} |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
