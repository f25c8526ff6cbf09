"""Speed of the exact sliding-window inpainting heat map: per-window loop (the published way: one G
pass per window) versus the batched uad_kernels path (masked copies built on the device in chunks,
G in large batches, bf16 autocast on CUDA, fused box error + heat-map assembly) and the local
engine (uad_label.networks.inpainting_local: G's box output recomputed only where the box changes
features; the detector's default on a CPU).

One 256x256 slice, box 16, stride 4: 3,721 windows, same G, same windows. On a CPU the loop runs
over the first --loop-windows windows and its time is extrapolated to 3,721 (the full loop takes
far too long here); both timings come from the same run, and the scores of the looped windows are
compared with the batched ones. --volume also times a whole 182-slice volume (windows touching
the brain only, as the detector runs). Needs only torch and uad_kernels (no MONAI, no SimpleITK).

  python benchmarks/inpainting/bench_speed.py --device cuda --out benchmarks/inpainting/h200
  python benchmarks/inpainting/bench_speed.py --device cpu --ngf 8 --out benchmarks/inpainting/cpu
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from uad_label.networks.inpainting import InpaintGenerator, count_parameters  # noqa: E402
from uad_label.networks.inpainting_local import LocalBoxInpainter, local_inpaint_heatmap  # noqa: E402

try:
    import uad_kernels  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    import importlib.util

    spec = importlib.util.spec_from_file_location("uad_kernels", ROOT / "kernels" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "kernels")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["uad_kernels"] = mod
    spec.loader.exec_module(mod)
from uad_kernels import inpaint_heatmap, inpaint_windows  # noqa: E402


def phantom_slice(S=256, z=0.5, seed=0):
    """A brain-like slice: ellipse of tissue with texture, zero background; (img, brain)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    r = max(0.05, 1 - (2 * z - 1) ** 2) ** 0.5
    brain = (((xx - S / 2) / (75 * r)) ** 2 + ((yy - S / 2) / (92 * r)) ** 2) < 1
    tex = torch.rand(S, S, generator=g) * 0.2 + 0.6 + 0.2 * torch.sin(xx / 7.0) * torch.cos(yy / 11.0)
    return (tex * brain).float(), brain


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def run(args):
    dev = torch.device(args.device)
    torch.manual_seed(0)
    g = InpaintGenerator(ngf=args.ngf, num_downs=8).to(dev).eval()
    S, box, stride = 256, 16, 4
    img, brain = phantom_slice(S)
    img, brain = img.to(dev), brain.to(dev)
    cuda = dev.type == "cuda"

    def model(b):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and not args.fp32):
            return g(b).float()

    starts = inpaint_windows((S, S), box, stride, device=dev)
    n_all = starts.shape[0]
    # batched (all 3,721 windows)
    with torch.no_grad():  # warm-up: one batch
        model(img[None, None].expand(min(args.batch_size, n_all), 1, S, S).contiguous())
    sync(dev)
    t = time.perf_counter()
    res = inpaint_heatmap(img[None], model, box=box, stride=stride, fill=1.0, batch_size=args.batch_size)
    sync(dev)
    t_batched = time.perf_counter() - t

    def local(im, br=None, only_brain=False):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and not args.fp32):
            return local_inpaint_heatmap(LocalBoxInpainter(g), im, box=box, stride=stride, fill=1.0,
                                         batch_size=args.local_batch_size, brain_mask=br, only_brain=only_brain)

    local(img)  # warm-up
    sync(dev)
    t = time.perf_counter()
    res_local = local(img)
    sync(dev)
    t_local = time.perf_counter() - t
    # per-window loop (published): copy, one G pass, box error, heat map, per window
    n_loop = n_all if args.loop_windows <= 0 else min(args.loop_windows, n_all)
    heat = torch.zeros(S, S, device=dev)
    count = torch.zeros(S, S, device=dev)
    loop_scores = []
    with torch.no_grad():
        model(img[None, None])
        sync(dev)
        t = time.perf_counter()
        for k in range(n_loop):
            x0, y0 = (int(v) for v in starts[k])
            copy = img.clone()
            copy[x0:x0 + box, y0:y0 + box] = 1.0
            rec = model(copy[None, None])[0, 0]
            s = (rec[x0:x0 + box, y0:y0 + box] - img[x0:x0 + box, y0:y0 + box]).abs().mean()
            heat[x0:x0 + box, y0:y0 + box] += s
            count[x0:x0 + box, y0:y0 + box] += 1
            loop_scores.append(float(s))  # the published code reads each score back
        sync(dev)
        t_loop = time.perf_counter() - t
    t_loop_all = t_loop * n_all / n_loop
    diff = float((torch.tensor(loop_scores) - res.scores[:n_loop].cpu()).abs().max())
    out = {"slice": f"{S}x{S}", "box": box, "stride": stride, "windows": n_all, "ngf": args.ngf,
           "g_parameters": count_parameters(g), "batch_size": args.batch_size,
           "precision": "bf16 autocast" if cuda and not args.fp32 else "fp32",
           "batched_s": round(t_batched, 4), "loop_windows_timed": n_loop, "loop_s_timed": round(t_loop, 3),
           "loop_s_per_slice": round(t_loop_all, 3), "loop_extrapolated": n_loop < n_all,
           "speedup": round(t_loop_all / t_batched, 2), "max_score_diff_vs_loop": diff,
           "local_s": round(t_local, 4), "local_batch_size": args.local_batch_size,
           "local_speedup_vs_loop": round(t_loop_all / t_local, 2),
           "local_max_score_diff_vs_batched": float((res_local.scores - res.scores).abs().max()),
           "local_max_heatmap_diff_vs_batched": float((res_local.heatmap - res.heatmap).abs().max())}
    if args.volume:
        t = time.perf_counter()
        n_win = 0
        for z in range(182):
            im, br = phantom_slice(S, (z + 0.5) / 182, seed=z)
            im, br = im.to(dev), br.to(dev)
            if not bool(br.any()):
                continue
            r = inpaint_heatmap(im[None], model, box=box, stride=stride, fill=1.0, batch_size=args.batch_size,
                                brain_mask=br, only_brain=True)
            n_win += r.starts.shape[0]
        sync(dev)
        out["volume_182_slices_s"] = round(time.perf_counter() - t, 2)
        out["volume_windows"] = n_win
        t = time.perf_counter()
        for z in range(182):
            im, br = phantom_slice(S, (z + 0.5) / 182, seed=z)
            im, br = im.to(dev), br.to(dev)
            if bool(br.any()):
                local(im, br, only_brain=True)
        sync(dev)
        out["local_volume_182_slices_s"] = round(time.perf_counter() - t, 2)
    return out


def meta(dev):
    m = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": platform.machine(),
         "python": platform.python_version(),
         "torch": torch.__version__, "numpy": np.__version__, "threads": torch.get_num_threads(),
         "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if dev.type == "cuda":
        m["gpu"] = torch.cuda.get_device_name(0)
        try:
            import triton
            m["triton"] = triton.__version__
        except ImportError:
            m["triton"] = None
    else:
        m["cpu_count"] = os.cpu_count()
    return m


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ngf", type=int, default=None, help="G width (default 64 = published on CUDA, 8 on a CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per batch (default 512 CUDA, 64 CPU)")
    p.add_argument("--loop-windows", type=int, default=None,
                   help="windows of the loop actually timed (default all on CUDA, 200 on a CPU; <=0 = all)")
    p.add_argument("--local-batch-size", type=int, default=512, help="windows per call of the local engine")
    p.add_argument("--volume", action="store_true", help="also time a 182-slice volume")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.ngf = args.ngf or (64 if cuda else 8)
    args.batch_size = args.batch_size or (512 if cuda else 64)
    args.loop_windows = args.loop_windows if args.loop_windows is not None else (0 if cuda else 200)
    dev = torch.device(args.device)
    result = {"meta": meta(dev), "result": run(args)}
    print(json.dumps(result, indent=2))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
