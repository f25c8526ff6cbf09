"""Evaluation cases from the raw clinical scans of ../shared/data/raw_clinical (what a clinic sends):
one folder per study with a FLAIR, holding FLAIR / T1 / T2 (links to the scanner files) and GT =
the patient's gt.nii.gz brought from the common space onto that study's FLAIR grid (nearest
neighbour through the inverse of studyN_FLAIR_to_common_space.txt, which maps common-space points
to FLAIR points as ITK registration writes it).

The GT is a mask of lesion CHANGES between the two studies, not of all lesions: stable lesions
count as false positives and a change is visible in one study only (new lesions in the later one,
vanished ones in the earlier one). `median_flair_ratio` in cases.json (median FLAIR inside GT /
median of the brightest 30 % of the head) shows in which study a patient's changes are bright.

    python benchmarks/tissue_outlier/build_raw_cases.py /tmp/uad_raw_eval
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

RAW = Path(__file__).resolve().parents[3] / "shared" / "data" / "raw_clinical"
FILES = {"FLAIR": "FLAIR", "T1": "T1W", "T2": "T2W"}
# studies our preprocessing refuses (registration quality check; found with `uad batch flair_threshold`):
# every detector refuses them, so `uad evaluate` (which stops at a refused case) leaves them out
EXCLUDED = {"patient09_study2": "registration check: 87.9 % of the template brain inside the head mask (< 90 %)",
            "patient20_study2": "registration check: Mattes MI -0.238 (> -0.25), 83.4 % of the brain in the head"}


def main(out: str) -> None:
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    summary = []
    for patient in sorted(p for p in RAW.iterdir() if (p / "gt.nii.gz").exists()):
        gt = sitk.ReadImage(str(patient / "gt.nii.gz"))
        for study in (1, 2):
            flair_path = patient / f"study{study}_FLAIR.nii.gz"
            if not flair_path.exists():
                continue
            case = root / f"{patient.name}_study{study}"
            if case.name in EXCLUDED:
                print(f"{case.name}: left out, {EXCLUDED[case.name]}")
                continue
            case.mkdir(exist_ok=True)
            for mod, tag in FILES.items():
                src = patient / f"study{study}_{tag}.nii.gz"
                link = case / f"{mod}.nii.gz"
                if src.exists() and not link.exists():
                    link.symlink_to(src)
            flair = sitk.ReadImage(str(flair_path), sitk.sitkFloat32)
            to_common = sitk.ReadTransform(str(patient / f"study{study}_FLAIR_to_common_space.txt"))
            mask = sitk.Resample(gt, flair, to_common.GetInverse(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            sitk.WriteImage(mask, str(case / "GT.nii.gz"))
            f, g = sitk.GetArrayFromImage(flair), sitk.GetArrayFromImage(mask) > 0
            head = f > np.percentile(f, 70)
            mods = sorted(m for m in FILES if (case / f"{m}.nii.gz").exists())
            ratio = float(np.median(f[g]) / np.median(f[head])) if g.any() else None
            summary.append({"case": case.name, "modalities": mods,
                            "gt_voxels": int(g.sum()),
                            "gt_ml": round(float(g.sum() * np.prod(flair.GetSpacing()) / 1000), 3),
                            "median_flair_ratio": None if ratio is None else round(ratio, 3)})
            print(json.dumps(summary[-1]))
    (root / "cases.json").write_text(json.dumps({"cases": summary, "excluded": EXCLUDED}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
