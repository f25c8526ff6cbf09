"""The raw pipeline's resampling steps before / after issue 16's last changes, alternating in one process:
(x, y, z) arrays through a transposed copy (image_to_xyz / xyz_to_image) or on the axes-reversed grid
(onto_grid_xyz / xyz_for_resampling), and the field of view from an image of ones or from the reference's own
resampling (NaN outside). One raw clinical FLAIR (N4 skipped: the steps do not depend on it), its own
registration to the template, the template's 1 mm grid and the way back to the native grid.

    .venv/bin/python benchmarks/preprocess/resample_xyz.py [--scan PATH] [--repeats 7]

Writes results/resample_xyz.json and .md (median CPU and wall seconds per step, and the old / new check that
the arrays are equal).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE.parent), str(ROOT)]
from common import environment  # noqa: E402

from uad_label.preprocess.bias import head_mask, shrink_factors  # noqa: E402
from uad_label.preprocess.case import PreprocessOptions, onto_grid, onto_grid_xyz  # noqa: E402
from uad_label.preprocess.geometry import image_to_xyz, xyz_for_resampling, xyz_to_image  # noqa: E402
from uad_label.preprocess.register import register_to_template, work_grid_for  # noqa: E402
from uad_label.template import load_template_t1  # noqa: E402

SCAN = ROOT.parent / "shared" / "data" / "raw_clinical" / "patient01" / "study1_FLAIR.nii.gz"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def steps(flair: sitk.Image, head: sitk.Image, grid: sitk.Image, to_ref: sitk.Transform):
    """{step: (old, new)} callables returning comparable arrays."""
    inv = to_ref.GetInverse()
    work_map = image_to_xyz(onto_grid(flair, grid, to_ref))
    work_mask = (work_map > np.percentile(work_map[work_map > 0], 99)).astype(np.uint8)

    def fov_old():
        ones = sitk.Image(flair.GetSize(), sitk.sitkUInt8) + 1
        ones.CopyInformation(flair)
        a = image_to_xyz(onto_grid(flair, grid, to_ref), np.float32)
        fov = image_to_xyz(onto_grid(ones, grid, to_ref, interp=sitk.sitkNearestNeighbor,
                                     out_type=sitk.sitkUInt8)) > 0
        return np.concatenate([a.ravel(), fov.ravel()])

    def fov_new():
        a = onto_grid_xyz(flair, grid, to_ref, fill=np.nan)
        fov = ~np.isnan(a)
        a[~fov] = 0.0
        return np.concatenate([a.ravel(), fov.ravel()])

    def back(img_of, array, interp, out_type):
        return lambda: sitk.GetArrayFromImage(sitk.Resample(img_of(array, grid), flair, inv, interp, 0.0, out_type))

    return {
        "FLAIR onto the 1 mm grid + field of view": (fov_old, fov_new),
        "head mask onto the 1 mm grid (nearest)": (
            lambda: image_to_xyz(onto_grid(head, grid, to_ref, interp=sitk.sitkNearestNeighbor,
                                           out_type=sitk.sitkUInt8)),
            lambda: onto_grid_xyz(head, grid, to_ref, interp=sitk.sitkNearestNeighbor, out_type=sitk.sitkUInt8)),
        "map back to the native grid (linear)": (
            back(xyz_to_image, work_map, sitk.sitkLinear, sitk.sitkFloat32),
            back(xyz_for_resampling, work_map, sitk.sitkLinear, sitk.sitkFloat32)),
        "mask back to the native grid (nearest)": (
            back(xyz_to_image, work_mask, sitk.sitkNearestNeighbor, sitk.sitkUInt8),
            back(xyz_for_resampling, work_mask, sitk.sitkNearestNeighbor, sitk.sitkUInt8)),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scan", type=Path, default=SCAN)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args()
    env = environment()
    flair = sitk.Cast(sitk.ReadImage(str(a.scan)), sitk.sitkFloat32)
    opts = PreprocessOptions()
    head = head_mask(sitk.BinShrink(flair, shrink_factors(flair.GetSpacing(), opts.registration_spacing_mm)))
    to_ref, _ = register_to_template(flair, opts, moving_head=head)
    grid = work_grid_for(load_template_t1(), opts.spacing)
    rows = {}
    for name, (old, new) in steps(flair, head, grid, to_ref).items():
        x, y = old().astype(np.float64), new().astype(np.float64)  # also the warm-up
        same = f"{int((x != y).sum())} of {x.size} differ, by at most {float(np.abs(x - y).max()):.2g}"
        times = {"old": [], "new": []}
        for _ in range(a.repeats):
            for side, fn in (("old", old), ("new", new)):
                c, t = cpu(), time.perf_counter()
                fn()
                times[side].append((cpu() - c, time.perf_counter() - t))
        rows[name] = {"equal": same, **{f"{side}_{k}": float(np.median([x[i] for x in v]))
                                        for side, v in times.items() for i, k in enumerate(("cpu_s", "wall_s"))}}
        print(name, rows[name], flush=True)
    total = {k: sum(r[k] for r in rows.values()) for k in ("old_cpu_s", "new_cpu_s", "old_wall_s", "new_wall_s")}
    res = {"environment": env, "scan": a.scan.name, "repeats": a.repeats,
           "load_end": list(__import__("os").getloadavg()), "rows": rows, "total": total}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "resample_xyz.json").write_text(json.dumps(res, indent=2))
    lines = [f"# Resampling steps of the raw pipeline, old / new ({env['date']}, {env['cpus']} CPUs, "
             f"SimpleITK {env['SimpleITK']}, load {env['load_average_1min']:.1f} at the start)", "",
             f"`{a.scan.parent.name}/{a.scan.name}`, {a.repeats} alternating repeats, medians. Old: arrays through "
             "a transposed copy and the field of view from an image of ones; new: the axes-reversed grid and the "
             "field of view from the FLAIR's own resampling.", "",
             "| step | old CPU s | new CPU s | old wall s | new wall s | voxels old vs new |",
             "|---|---|---|---|---|---|"]
    for name, r in list(rows.items()) + [("total", {**total, "equal": ""})]:
        lines.append(f"| {name} | {r['old_cpu_s']:.3f} | {r['new_cpu_s']:.3f} | {r['old_wall_s']:.3f} | "
                     f"{r['new_wall_s']:.3f} | {r['equal']} |")
    (a.out / "resample_xyz.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
