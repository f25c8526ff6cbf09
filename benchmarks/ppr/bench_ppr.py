"""Benchmark of the ppr dense inference paths: seconds per map and what the fast paths give up
against the exact stride-1 map.

Timing: a cube of `--size`^3 voxels that is all brain (worst case: every voxel is evaluated),
random network of width `--width`. Paths: exact (shift-and-stitch and a trous), coarse (stride-4
grid + trilinear), coarse + refinement of the top 2%, and the published patch-by-patch gather
(timed on `--patch-sample` voxels, extrapolated to the whole volume).

Accuracy: a real template-space FLAIR (`--volume`, a slab of `--slab` axial slices to keep the CPU
run short) with the trained weights; each fast map is compared with the exact map inside the brain.

    python benchmarks/ppr/bench_ppr.py --device cuda --size 256 --width 16 --out benchmarks/ppr/h200
    python benchmarks/ppr/bench_ppr.py --device cpu --size 64 --width 4 --out benchmarks/ppr/cpu \
        --volume /tmp/uad_synth_bench/sub-000_FLAIR.nii.gz --slab 40
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from uad_label.networks.ppr import build_ppr, count_parameters  # noqa: E402
from uad_label.networks.ppr_maps import (  # noqa: E402
    brain_bbox,
    coarse_map,
    exact_map,
    intensity_input,
    patch_map,
    refine_blocks,
    unit_affine,
)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, repeat=1):
    best, out = None, None
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        out = fn()
        _sync(device)
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return best, out


def _coarse_refined(net, img, brain_t, m, b, bbox, device, frac=0.02, block=16):
    emap = coarse_map(net, img, m, b, bbox, device)
    vals = emap[brain_t]
    level = torch.topk(vals, max(1, int(frac * vals.numel()))).values[-1]
    n = refine_blocks(net, img, emap, brain_t & (emap >= level), m, b, device, block=block)
    return emap, n


def timing(args, device):
    s = args.size
    net = build_ppr(1, args.width).eval().to(device)
    img = torch.rand(1, s, s, s, device=device)
    brain = np.ones((s, s, s), bool)
    brain_t = torch.from_numpy(brain).to(device)
    m, b = unit_affine(np.diag([1.0, 1.0, 1.0, 1.0]))
    bbox = brain_bbox(brain)
    slab = 32_000_000 if device.type == "cuda" else 2_000_000
    rows = []
    rep = 2 if device.type == "cuda" else 1
    exact_map(net, img[:, :40, :40, :40], m, b, brain_bbox(brain[:40, :40, :40]), device)  # warm-up
    for method in ("stitch", "dilated"):
        t, _ = _timed(lambda: exact_map(net, img, m, b, bbox, device, slab_voxels=slab, method=method), device, rep)
        rows.append({"path": f"exact ({method})", "seconds": round(t, 3)})
    t, _ = _timed(lambda: coarse_map(net, img, m, b, bbox, device), device, rep)
    rows.append({"path": "coarse stride 4 (no refinement)", "seconds": round(t, 3)})
    t, (_, nb) = _timed(lambda: _coarse_refined(net, img, brain_t, m, b, bbox, device), device, rep)
    rows.append({"path": "coarse + refine top 2% (16^3 blocks)", "seconds": round(t, 3), "blocks": nb})
    k = args.patch_sample
    sub = np.zeros_like(brain)
    sub.reshape(-1)[np.random.default_rng(0).choice(brain.size, k, replace=False)] = True
    t, _ = _timed(lambda: patch_map(net, img, sub, m, b, device), device, 1)
    rows.append({"path": f"patches (gather, {k} voxels timed, extrapolated)", "seconds": round(t * brain.size / k, 3),
                 "seconds_measured": round(t, 3)})
    return {"size": s, "voxels": int(brain.size), "width": args.width, "parameters": count_parameters(net),
            "rows": rows}


def accuracy(args, device):
    from uad_label.preprocess import PreprocessOptions, preprocess
    from uad_label.weights import load_state

    state, card = load_state("ppr")
    net = build_ppr(card["network"]["in_channels"], card["network"]["width"])
    net.load_state_dict(state)
    net.eval().to(device)
    case = preprocess({"FLAIR": args.volume}, PreprocessOptions(preprocessed=True))
    img = torch.from_numpy(intensity_input(case, ["FLAIR"])).to(device)
    brain = case.brain.copy()
    if args.slab:
        z = np.nonzero(brain.any(axis=(0, 1)))[0]
        mid = (z[0] + z[-1]) // 2
        keep = np.zeros(brain.shape[2], bool)
        keep[max(0, mid - args.slab // 2): mid + args.slab // 2] = True
        brain &= keep[None, None, :]
    brain_t = torch.from_numpy(brain).to(device)
    m, b = unit_affine(case.affine)
    bbox = brain_bbox(brain)
    t_exact, exact = _timed(lambda: exact_map(net, img, m, b, bbox, device), device)
    ref = exact[brain_t]
    top = ref >= torch.quantile(ref.float()[:: max(1, ref.numel() // 1_000_000)], 0.99)
    out = {"volume": str(args.volume), "brain_voxels": int(brain.sum()), "exact_seconds": round(t_exact, 3),
           "weights": {"width": card["network"]["width"], "steps": card.get("steps")}, "rows": []}
    variants = {"coarse (no refinement)": lambda: (coarse_map(net, img, m, b, bbox, device), 0)}
    for frac in (0.01, 0.02, 0.05):
        variants[f"coarse + refine {frac:.0%}"] = (
            lambda f=frac: _coarse_refined(net, img, brain_t, m, b, bbox, device, frac=f))
    for name, fn in variants.items():
        t, (emap, nb) = _timed(fn, device)
        v = emap[brain_t]
        d = (v - ref).abs()
        thr = torch.quantile(v.float()[:: max(1, v.numel() // 1_000_000)], 0.99)
        out["rows"].append({
            "path": name, "seconds": round(t, 3), "blocks": nb,
            "mean_abs_diff_mm": round(float(d.mean()), 4), "max_abs_diff_mm": round(float(d.max()), 4),
            "pearson": round(float(np.corrcoef(v.cpu().numpy(), ref.cpu().numpy())[0, 1]), 5),
            "top1pct_recall": round(float(((v >= thr) & top).sum() / top.sum()), 4),
            "top1pct_max_abs_diff_mm": round(float(d[top].max()), 4)})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--patch-sample", type=int, default=20000)
    ap.add_argument("--volume", default=None, help="template-space FLAIR for the accuracy part (optional)")
    ap.add_argument("--slab", type=int, default=0, help="only this many central axial slices of the brain (0: all)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    device = torch.device(args.device)
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "numpy": np.__version__,
            "device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
            "load_average": os.getloadavg(), "mixed_precision": "bf16 autocast" if device.type == "cuda" else "fp32"}
    res = {"meta": meta, "timing": timing(args, device)}
    if args.volume:
        res["accuracy"] = accuracy(args, device)
    meta["load_average_end"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(res, indent=2))
    tm = res["timing"]
    lines = [f"# ppr dense inference, {meta['device']} ({meta['gpu'] or platform.machine()}), {meta['date']}", "",
             f"torch {meta['torch']}, {meta['torch_threads']} threads, load average {meta['load_average']} -> "
             f"{meta['load_average_end']}, {meta['mixed_precision']}", "",
             f"## Timing: {tm['size']}^3 all-brain volume, width {tm['width']} ({tm['parameters']} parameters)", "",
             "| path | seconds |", "|---|---:|"]
    lines += [f"| {r['path']} | {r['seconds']} |" for r in tm["rows"]]
    if "accuracy" in res:
        a = res["accuracy"]
        lines += ["", f"## Accuracy against the exact map: {a['volume']}, {a['brain_voxels']} brain voxels, "
                  f"trained width {a['weights']['width']} (exact map {a['exact_seconds']} s)", "",
                  "| path | seconds | blocks | mean abs diff (mm) | max abs diff (mm) | Pearson | top-1% recall | "
                  "max diff in top 1% (mm) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['path']} | {r['seconds']} | {r['blocks']} | {r['mean_abs_diff_mm']} | "
                  f"{r['max_abs_diff_mm']} | "
                  f"{r['pearson']} | {r['top1pct_recall']} | {r['top1pct_max_abs_diff_mm']} |" for r in a["rows"]]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
