"""Preprocessing benchmark on the raw clinical scans of ../shared/data/raw_clinical.

    .venv/bin/python benchmarks/preprocess/run_benchmark.py [--data ../shared/data/raw_clinical]
        [--out benchmarks/preprocess/results] [--multimodal]

For each study FLAIR (and, with --multimodal, FLAIR+T1W+T2W registered together) it runs the
full pipeline from a cold process state for the first case (template loading included) and
records: per-stage timings, registration quality metrics, native-grid checks (a mask mapped back
has the native size/spacing/origin/direction), agreement with the dataset's own transforms
(intra-study T1W/T2W->FLAIR, and inter-study consistency through the common-space transforms),
and a PNG overlay of the template brain outline on the registered FLAIR (visual check).
Writes results.json and results.md in --out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402


def overlay_png(case, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from uad_label.preprocess.geometry import image_to_xyz
    from uad_label.template import load_template_brain_mask

    tb = image_to_xyz(load_template_brain_mask()) > 0
    a = case.arrays[case.reference]
    vmax = np.percentile(a[case.brain], 99.5)
    fig, ax = plt.subplots(1, 3, figsize=(13, 4.6))
    for i, (sl, name) in enumerate([(np.s_[:, :, 95], "axial z=95"), (np.s_[:, 126, :], "coronal y=126"),
                                    (np.s_[98, :, :], "sagittal x=98")]):
        ax[i].imshow(a[sl].T, origin="lower", cmap="gray", vmin=0, vmax=vmax)
        ax[i].contour(tb[sl].T, [0.5], colors="r", linewidths=0.8)
        ax[i].set_title(name)
        ax[i].axis("off")
    fig.suptitle(title + " - red: MNI152 template brain outline")
    fig.savefig(path, dpi=70, bbox_inches="tight")
    plt.close(fig)


def native_checks(case) -> dict:
    nat = case.native_reference
    m = case.brain_native()
    same = {a: getattr(m, a)() == getattr(nat, a)() for a in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection")}
    vol = float(sitk.GetArrayFromImage(m).sum() * np.prod(nat.GetSpacing()) / 1000.0)
    return {"mask_back_on_native_grid": all(same.values()), **{k[3:].lower(): v for k, v in same.items()},
            "native_brain_volume_ml": vol}


def transform_errors(case, study_dir: Path, study: str) -> dict:
    """Mean distance (mm) between our T1W/T2W->FLAIR mapping and the dataset's, over brain points."""
    out = {}
    idx = np.argwhere(case.brain)[::2000]
    nat = case.work_voxel_to_native_ras(idx) * [-1, -1, 1]
    inv = case.work_to_native.GetInverse()
    for mod, key in (("T1", "T1W"), ("T2", "T2W")):
        f = study_dir / f"{study}_{key}_intrastudy_to_FLAIR.txt"
        if mod not in case.modality_transforms or not f.exists():
            continue
        given = sitk.ReadTransform(str(f))
        ours = np.array([case.modality_transforms[mod].TransformPoint(inv.TransformPoint(tuple(p))) for p in nat])
        ref = np.array([given.TransformPoint(tuple(p)) for p in nat])
        out[mod] = float(np.linalg.norm(ours - ref, axis=1).mean())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "raw_clinical"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--multimodal", action="store_true", help="also run FLAIR+T1W+T2W per study")
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    if not data.exists():
        print(f"data folder {data} absent: nothing to benchmark", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)

    t_import = time.perf_counter()
    from uad_label.io import load_image
    from uad_label.preprocess import PreprocessOptions, preprocess

    import_s = time.perf_counter() - t_import
    rows, cases = [], {}
    runs = [("FLAIR",)] + ([("FLAIR", "T1W", "T2W")] if args.multimodal else [])
    for patient in sorted(p.name for p in data.iterdir() if p.is_dir()):
        for study in ("study1", "study2"):
            for mods in runs:
                files = {m: data / patient / f"{study}_{m}.nii.gz" for m in mods}
                if not all(f.exists() for f in files.values()):
                    continue
                t0 = time.perf_counter()
                imgs = {{"T1W": "T1", "T2W": "T2"}.get(m, m): load_image(f) for m, f in files.items()}
                load_s = time.perf_counter() - t0
                case = preprocess(imgs, PreprocessOptions(on_registration_failure="warn"))
                wall = time.perf_counter() - t0
                name = f"{patient}_{study}_{'+'.join(mods)}"
                png = out / f"overlay_{name}.png"
                overlay_png(case, png, name)
                reg = case.registration
                row = {
                    "case": name, "native_size": list(imgs["FLAIR"].GetSize()),
                    "native_spacing": [round(s, 3) for s in imgs["FLAIR"].GetSpacing()],
                    "wall_seconds_load_to_case": round(wall, 2), "load_seconds": round(load_s, 2),
                    "timings": {k: round(v, 2) for k, v in case.timings.items()},
                    "registration": {k: reg[k]
                                     for k in ("passed", "mutual_information", "brain_in_head", "fov_coverage")},
                    "affine_scales": reg["stages"].get("affine_scales"),
                    "modalities": {k: {kk: v[kk] for kk in ("accepted", "metric", "identity_metric", "max_shift_mm")}
                                   for k, v in reg["modalities"].items()},
                    "native": native_checks(case),
                    "intrastudy_error_mm_vs_dataset": transform_errors(case, data / patient, study),
                    "overlay_png": png.name,
                }
                rows.append(row)
                if mods == ("FLAIR",):
                    cases[(patient, study)] = case
                print(json.dumps(row), flush=True)

    consistency = {}
    for patient in sorted({p for p, _ in cases}):
        if (patient, "study1") not in cases or (patient, "study2") not in cases:
            continue
        c1, c2 = cases[(patient, "study1")], cases[(patient, "study2")]
        C1 = sitk.ReadTransform(str(data / patient / "study1_FLAIR_to_common_space.txt"))
        C2 = sitk.ReadTransform(str(data / patient / "study2_FLAIR_to_common_space.txt"))
        idx = np.argwhere(c1.brain)[::2000]
        n1 = c1.work_voxel_to_native_ras(idx) * [-1, -1, 1]
        n2 = c2.work_voxel_to_native_ras(idx) * [-1, -1, 1]
        pred = np.array([C2.TransformPoint(C1.GetInverse().TransformPoint(tuple(q))) for q in n1])
        d = np.linalg.norm(pred - n2, axis=1)
        consistency[patient] = {"mean_mm": float(d.mean()), "max_mm": float(d.max())}

    import monai  # noqa: F401  (versions only)
    import nilearn  # noqa: F401
    import skimage

    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "load_average_at_end": list(os.getloadavg()), "python": platform.python_version()},
        "versions": {"SimpleITK": sitk.Version_VersionString(), "numpy": np.__version__,
                     "nilearn": sys.modules["nilearn"].__version__, "scikit-image": skimage.__version__},
        "command": "python benchmarks/preprocess/run_benchmark.py" + (" --multimodal" if args.multimodal else ""),
        "import_seconds": round(import_s, 2),
        "runs": rows,
        "inter_study_consistency_mm": consistency,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Preprocessing benchmark (raw clinical scans)", "",
        f"Date {result['date']}; {result['machine']['platform']}, {result['machine']['cpu_count']} cores "
        f"(shared; load average at end {', '.join(f'{x:.1f}' for x in result['machine']['load_average_at_end'])}); "
        f"SimpleITK {result['versions']['SimpleITK']}.", "",
        f"Command: `{result['command']}`", "",
        "| case | native size / spacing | total s | N4 s | register s | other modalities s | resample s | MI | "
        "brain in head | FOV coverage | passed | mask back on native grid | native brain mL | "
        "T1/T2 vs dataset (mm) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t, g = r["timings"], r["registration"]
        lines.append(
            f"| {r['case']} | {r['native_size']} / {r['native_spacing']} | {r['wall_seconds_load_to_case']} | "
            f"{t.get('n4')} | "
            f"{t.get('register')} | {t.get('register_modalities', '-')} | {t.get('resample')} | "
            f"{g['mutual_information']:.3f} | "
            f"{g['brain_in_head']:.3f} | {g['fov_coverage']:.3f} | {g['passed']} | "
            f"{r['native']['mask_back_on_native_grid']} | "
            f"{r['native']['native_brain_volume_ml']:.0f} | "
            f"{', '.join(f'{k} {v:.2f}' for k, v in r['intrastudy_error_mm_vs_dataset'].items()) or '-'} |")
    lines += ["", "Inter-study consistency (study1 and study2 FLAIR registered independently to the template, "
              "compared through the dataset's common-space transforms; mean / max over brain points):", ""]
    lines += [f"- {p}: {v['mean_mm']:.2f} mm / {v['max_mm']:.2f} mm" for p, v in consistency.items()]
    lines += ["", "Visual check: `overlay_*.png` (template brain outline over the registered FLAIR)."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
