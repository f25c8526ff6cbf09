"""Intrastudy registration (T1W / T2W rigidly onto the FLAIR of one study) inside the raw pipeline:
CPU seconds of each registration and its mean error over brain points against the dataset's own
`studyN_{T1W,T2W}_intrastudy_to_FLAIR.txt` transforms (affine; the identity row is the scanner
geometry). Writes intrastudy.json / intrastudy.md next to this file.

    python benchmarks/tissue_outlier/bench_intrastudy.py
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import environment  # noqa: E402

import uad_label.preprocess.register as reg  # noqa: E402
from uad_label.io import load_image  # noqa: E402
from uad_label.preprocess import PreprocessOptions, preprocess  # noqa: E402

HERE = Path(__file__).resolve().parent
RAW = Path(__file__).resolve().parents[3] / "shared" / "data" / "raw_clinical"
STUDIES = [("patient01", "study1"), ("patient01", "study2"), ("patient12", "study1"), ("patient12", "study2")]


def main() -> None:
    cpu = []
    original = reg.register_rigid

    def timed(*a, **k):
        c = time.process_time()
        out = original(*a, **k)
        cpu.append(time.process_time() - c)
        return out
    reg.register_rigid = timed
    rows = []
    load_before = os.getloadavg()
    for patient, study in STUDIES:
        files = {"FLAIR": "FLAIR", "T1": "T1W", "T2": "T2W"}
        imgs = {m: load_image(RAW / patient / f"{study}_{f}.nii.gz") for m, f in files.items()}
        cpu.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            case = preprocess(imgs, PreprocessOptions(on_registration_failure="warn"))
        idx = np.argwhere(case.brain)[::2000]
        flair_lps = case.work_voxel_to_native_ras(idx) * [-1, -1, 1]
        inv = case.work_to_native.GetInverse()
        for (mod, key), seconds in zip((("T1", "T1W"), ("T2", "T2W")), cpu):
            given = sitk.ReadTransform(str(RAW / patient / f"{study}_{key}_intrastudy_to_FLAIR.txt"))
            ref = np.array([given.TransformPoint(tuple(p)) for p in flair_lps])
            ours = np.array([case.modality_transforms[mod].TransformPoint(inv.TransformPoint(tuple(p)))
                             for p in flair_lps])
            info = case.registration["modalities"][mod]
            rows.append({"study": f"{patient}_{study}", "modality": key, "cpu_s": round(seconds, 3),
                         "wall_s": round(info["seconds"], 3), "accepted": info["accepted"],
                         "identity_error_mm": round(float(np.linalg.norm(flair_lps - ref, axis=1).mean()), 3),
                         "error_mm": round(float(np.linalg.norm(ours - ref, axis=1).mean()), 3),
                         "loadavg_1min": round(os.getloadavg()[0], 2)})
            print(json.dumps(rows[-1]), flush=True)
    reg.register_rigid = original
    summary = {"mean_error_mm": round(float(np.mean([r["error_mm"] for r in rows])), 3),
               "mean_identity_error_mm": round(float(np.mean([r["identity_error_mm"] for r in rows])), 3),
               "accepted": sum(r["accepted"] for r in rows), "registrations": len(rows),
               "mean_cpu_s": round(float(np.mean([r["cpu_s"] for r in rows])), 3)}
    env = {**environment(), "load_average_before": load_before, "load_average_after": os.getloadavg()}
    (HERE / "intrastudy.json").write_text(json.dumps({"environment": env, "summary": summary, "rows": rows},
                                                     indent=2), encoding="utf-8")
    lines = [f"# Intrastudy registration (T1W/T2W onto FLAIR)\n\n{env['date']}; {env['cpus']} shared CPUs, load "
             f"average {load_before[0]:.1f} before, {env['load_average_after'][0]:.1f} after; SimpleITK "
             f"{env.get('SimpleITK')}. `python benchmarks/tissue_outlier/bench_intrastudy.py`; default options. "
             "Error: mean distance over brain points to the dataset's transform.\n",
             "| study | modality | CPU s | wall s | accepted | error mm | identity error mm |",
             "|---|---|---:|---:|---|---:|---:|"]
    lines += [f"| {r['study']} | {r['modality']} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} | {r['accepted']} | "
              f"{r['error_mm']:.2f} | {r['identity_error_mm']:.2f} |" for r in rows]
    lines.append(f"| **mean** | | {summary['mean_cpu_s']:.2f} | | {summary['accepted']}/{summary['registrations']} | "
                 f"{summary['mean_error_mm']:.2f} | {summary['mean_identity_error_mm']:.2f} |")
    (HERE / "intrastudy.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
