"""Benchmarks of the kernel library: `python benchmarks/kernels/bench_kernels.py [--quick] [--device cpu|cuda] \
[--out DIR]`
(also `uad bench kernels ...`). Prints a table and writes DIR/bench.json and DIR/results.md.

Rows: one per op, size and implementation:
  kernel     the Triton / CuPy path (CUDA only)
  reference  the vectorised torch reference on the same device
  baseline   what the code did before this library: a Python loop over patches / windows,
             MONAI's sliding_window_inference, numpy step by step
GB/s is the minimal memory traffic of the op (bytes read + written) over the time; copy_frac is
that over the copy bandwidth measured on the same device in the same run. speedup_vs_ref and
speedup_vs_base are the row's time against the reference and baseline times.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from uad_kernels import (
    error_map,
    gather_patches,
    importance_map,
    inpaint_heatmap,
    inpaint_windows,
    overlap_add,
    sliding_window_inference,
    sliding_window_starts,
)
from uad_kernels._common import has_cupy, has_triton

# ----------------------------------------------------------------------------- helpers


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device, repeat=3, warmup=1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def copy_bandwidth(device, nbytes) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = timeit(lambda: dst.copy_(src), device, repeat=5)
    return 2 * src.numel() * 4 / t / 1e9


def versions() -> dict:
    v = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for mod in ("triton", "cupy", "monai", "scipy", "skimage"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            v[mod] = None
    return v


class Rows:
    def __init__(self, device, copy_gbps):
        self.device = device
        self.copy_gbps = copy_gbps
        self.rows = []

    def add_group(self, op, size, times: dict, nbytes=None, note=""):
        """times: impl -> seconds (kernel / reference / baseline; missing ones omitted)."""
        ref = times.get("reference")
        base = times.get("baseline")
        for impl, t in times.items():
            if t is None:
                continue
            gbps = nbytes / t / 1e9 if nbytes else None
            self.rows.append({
                "op": op, "size": size, "device": self.device.type, "impl": impl, "seconds": t,
                "gb_per_s": gbps, "copy_frac": gbps / self.copy_gbps if gbps else None,
                "speedup_vs_ref": ref / t if ref else None, "speedup_vs_base": base / t if base else None,
                "note": note,
            })
        print(format_rows(self.rows[-len([t for t in times.values() if t is not None]):], header=False), flush=True)


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def format_rows(rows, header=True) -> str:
    lines = []
    if header:
        lines.append(f"{'op':<18} {'size':<34} {'dev':<4} {'impl':<9} {'seconds':>10} {'GB/s':>8} {'copy%':>6} "
                     f"{'x ref':>7} {'x base':>7}")
    for r in rows:
        lines.append(f"{r['op']:<18} {r['size']:<34} {r['device']:<4} {r['impl']:<9} {r['seconds']:>10.4f} "
                     f"{_fmt(r['gb_per_s'], '8.1f')} {_fmt(r['copy_frac'] and 100 * r['copy_frac'], '6.0f')} "
                     f"{_fmt(r['speedup_vs_ref'], '7.2f')} {_fmt(r['speedup_vs_base'], '7.2f')}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- pix2pix U-Net (test model)
class _UnetBlock(nn.Module):
    """The skip-connection block of the pix2pix U-Net generator (Isola et al., unet_256)."""

    def __init__(self, outer, inner, input_nc=None, sub=None, outermost=False, innermost=False, dropout=False):
        super().__init__()
        self.outermost = outermost
        input_nc = outer if input_nc is None else input_nc
        down = nn.Conv2d(input_nc, inner, 4, 2, 1, bias=False)
        if outermost:
            layers = [down, sub, nn.ReLU(), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
        elif innermost:
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False),
                      nn.BatchNorm2d(outer)]
        else:
            layers = [nn.LeakyReLU(0.2), down, nn.BatchNorm2d(inner), sub, nn.ReLU(),
                      nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=False), nn.BatchNorm2d(outer)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


def pix2pix_unet(in_ch=1, out_ch=1, num_downs=8, ngf=64) -> nn.Module:
    """UnetGenerator(num_downs=8, ngf=64) = pix2pix 'unet_256' (54.4 M parameters for 3 -> 3 channels)."""
    block = _UnetBlock(ngf * 8, ngf * 8, innermost=True)
    for _ in range(num_downs - 5):
        block = _UnetBlock(ngf * 8, ngf * 8, sub=block, dropout=True)
    block = _UnetBlock(ngf * 4, ngf * 8, sub=block)
    block = _UnetBlock(ngf * 2, ngf * 4, sub=block)
    block = _UnetBlock(ngf, ngf * 2, sub=block)
    return _UnetBlock(out_ch, ngf, input_nc=in_ch, sub=block, outermost=True).eval()


# ----------------------------------------------------------------------------- benches
def bench_gather(R: Rows, quick: bool, kernel_ok: bool):

    dev = R.device
    if dev.type == "cuda":
        side, patch, n = (256, 32, 2048) if quick else (512, 32, 16384)   # full: 2 GiB of patches
    else:
        side, patch, n = (96, 16, 256) if quick else (128, 16, 1024)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, side, side, side, generator=g).to(dev)
    centers = torch.randint(0, side, (n, 3), generator=g).to(dev)
    nbytes = 2 * n * patch ** 3 * 4
    padded = torch.nn.functional.pad(image[None], (patch,) * 6, mode="replicate")[0]
    starts = (centers - patch // 2 + patch).tolist()

    def loop():
        return torch.stack([padded[:, x:x + patch, y:y + patch, z:z + patch] for x, y, z in starts])

    times = {
        "kernel": timeit(lambda: gather_patches(image, centers, patch, padding="replicate", backend="triton"), dev)
        if kernel_ok else None,
        "reference": timeit(lambda: gather_patches(image, centers, patch, padding="replicate", backend="reference"),
                            dev),
        "baseline": timeit(loop, dev),
    }
    R.add_group("gather", f"{side}^3 img, {n} x {patch}^3 patches", times, nbytes, "baseline: per-patch slicing loop")


def bench_error_map(R: Rows, quick: bool, kernel_ok: bool):

    dev = R.device
    if dev.type == "cuda":
        shape = (1, 256, 256, 256) if quick else (1, 640, 640, 640)       # full: 1 GiB per float32 volume
    else:
        shape = (1, 96, 96, 96) if quick else (1, 160, 192, 160)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(shape, generator=g).to(dev)
    r = torch.rand(shape, generator=g).to(dev)
    mask = (torch.rand(shape[1:], generator=g) > 0.3).to(dev)
    n = x.numel()
    nbytes = n * (4 + 4 + 4) + mask.numel()
    kw = dict(mode="abs", brain_mask=mask, clamp=(0.0, 1.0), bins=256)

    def numpy_steps():
        xa, ra, ma = x.cpu().numpy(), r.cpu().numpy(), mask.cpu().numpy()
        e = np.clip(np.abs(xa - ra), 0, 1)
        e[:, ~ma] = 0
        scores = [e[..., k][:, ma[..., k]].mean() if ma[..., k].any() else 0.0 for k in range(e.shape[-1])]
        hist = np.histogram(e[:, ma], 256, (0, 1))
        return e, scores, hist

    times = {
        "kernel": timeit(lambda: error_map(x, r, backend="triton", **kw), dev) if kernel_ok else None,
        "reference": timeit(lambda: error_map(x, r, backend="reference", **kw), dev),
        "baseline": timeit(numpy_steps, dev, repeat=1 if dev.type == "cuda" else 3),
    }
    R.add_group("error_map", "x".join(map(str, shape)) + " f32 +mask", times, nbytes,
                "abs, brain mask, clamp, slice scores, 256-bin histogram; baseline: numpy step by step")


def bench_stitching(R: Rows, quick: bool, kernel_ok: bool):

    dev = R.device
    if dev.type == "cuda" or not quick:
        side, roi = (256, 96)
    else:
        side, roi = (128, 48)
    x = torch.randn(1, 1, side, side, side, generator=torch.Generator().manual_seed(2)).to(dev)
    predictor = lambda t: t * 2.0 + 1.0  # noqa: E731 - cheap network stand-in: the stitching is what is timed
    times = {}
    if kernel_ok:
        times["kernel"] = timeit(lambda: sliding_window_inference(x, roi, 8, predictor, overlap=0.5, mode="gaussian",
                                                                  backend="triton"), dev)
    times["reference"] = timeit(lambda: sliding_window_inference(x, roi, 8, predictor, overlap=0.5, mode="gaussian",
                                                                 backend="reference"), dev)
    try:
        from monai.inferers import sliding_window_inference as monai_swi

        def run_monai():
            with torch.no_grad():
                return monai_swi(x, roi, 8, predictor, overlap=0.5, mode="gaussian")

        times["baseline"] = timeit(run_monai, dev)
        same = torch.allclose(run_monai(), sliding_window_inference(x, roi, 8, predictor, overlap=0.5, mode="gaussian"),
                              rtol=1e-4, atol=1e-4)
        note = f"baseline: monai.inferers.sliding_window_inference; same output: {same}"
    except ImportError:
        note = "monai not installed: no MONAI baseline"
        print("  (monai missing: MONAI comparison skipped)")
    R.add_group("sliding_window", f"{side}^3, roi {roi}^3, overlap 0.5, gaussian", times, None, note)

    # the overlap-add alone, with its memory traffic
    starts = sliding_window_starts((side,) * 3, roi, 0.5, device=dev)
    k = min(len(starts), 8)
    patches = torch.randn(k, 1, roi, roi, roi, device=dev)
    w = importance_map((roi,) * 3, "gaussian", device=dev)
    out = torch.zeros(1, side, side, side, device=dev)
    count = torch.zeros(side, side, side, device=dev)
    nbytes = k * roi ** 3 * 4 * (1 + 2 + 2)  # patch read, out and count read-modify-write
    t2 = {}
    if kernel_ok:
        t2["kernel"] = timeit(lambda: overlap_add(patches, starts[:k], out, w, count, backend="triton"), dev)
    t2["reference"] = timeit(lambda: overlap_add(patches, starts[:k], out, w, count, backend="reference"), dev)
    R.add_group("overlap_add", f"{k} x {roi}^3 into {side}^3", t2, nbytes, "one sw batch, weights + count")


def bench_inpaint(R: Rows, quick: bool, kernel_ok: bool):

    dev = R.device
    if dev.type == "cuda":
        side, ngf, downs, nloop, bs = 256, 64, 8, (256 if quick else 3721), 512
    else:
        side, ngf, downs, nloop, bs = (64, 16, 6, 32, 64) if quick else (128, 32, 7, 64, 128)
    torch.manual_seed(3)
    net = pix2pix_unet(1, 1, downs, ngf).to(dev)
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    image = torch.rand(1, side, side, device=dev) * 2 - 1
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)

    def model(b):
        with amp:
            return net(b).float()

    starts = inpaint_windows((side, side), 16, 4, device=dev)
    nwin = len(starts)
    backend = "auto" if kernel_ok else "reference"

    def batched():
        return inpaint_heatmap(image, model, box=16, stride=4, batch_size=bs, backend=backend)

    def loop(limit):
        heat = torch.zeros(side, side, device=dev)
        count = torch.zeros_like(heat)
        with torch.no_grad():
            for x0, y0 in starts[:limit].tolist():
                c = image.clone()
                c[:, x0:x0 + 16, y0:y0 + 16] = 0.0
                rec = model(c[None])[0]
                s = (rec[:, x0:x0 + 16, y0:y0 + 16] - image[:, x0:x0 + 16, y0:y0 + 16]).abs().mean()
                heat[x0:x0 + 16, y0:y0 + 16] += s
                count[x0:x0 + 16, y0:y0 + 16] += 1
        return heat / count.clamp_min(1)

    t_batched = timeit(batched, dev, repeat=1 if dev.type == "cpu" else 3)
    nloop = min(nloop, nwin)
    t_loop = timeit(lambda: loop(nloop), dev, repeat=1) * nwin / nloop
    note = (f"pix2pix U-Net ngf={ngf} num_downs={downs} ({params:.1f} M params), {nwin} windows, batch {bs}"
            + (", bf16 autocast" if dev.type == "cuda" else "")
            + ("" if nloop == nwin else f"; loop time extrapolated from {nloop} windows"))
    R.add_group("inpaint_heatmap", f"{side}x{side} slice, box 16, stride 4",
                {("kernel" if kernel_ok else "reference"): t_batched, "baseline": t_loop}, None, note)


def run(device: str = "cpu", quick: bool = False, out: str | Path | None = None) -> dict:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA GPU")
    torch.set_grad_enabled(False)
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence")  # raised inside MONAI's inferer
    kernel_ok = dev.type == "cuda" and has_triton()
    copy_bytes = (256 if quick else 2048) * 2 ** 20 if dev.type == "cuda" else (64 if quick else 256) * 2 ** 20
    copy_gbps = copy_bandwidth(dev, copy_bytes)
    meta = {
        "device": dev.type,
        "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                        else platform.processor() or platform.machine()),
        "cpu_threads": torch.get_num_threads(),
        "versions": versions(),
        "cupy_gpu": has_cupy() if dev.type == "cuda" else False,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "copy_gb_per_s": copy_gbps,
        "kernel_backend": "triton" if kernel_ok else "none (CPU: torch reference only)",
    }
    print(f"uad_kernels bench on {meta['device_name']} ({dev.type}), copy bandwidth {copy_gbps:.1f} GB/s, "
          f"quick={quick}")
    print(format_rows([]))
    R = Rows(dev, copy_gbps)
    for fn in (bench_gather, bench_error_map, bench_stitching, bench_inpaint):
        fn(R, quick, kernel_ok)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    result = {"meta": meta, "rows": R.rows}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(result, indent=2))
        (out / "results.md").write_text(markdown(result))
        print(f"wrote {out / 'bench.json'} and {out / 'results.md'}")
    return result


def markdown(result: dict) -> str:
    m = result["meta"]
    v = ", ".join(f"{k} {val}" for k, val in m["versions"].items() if val)
    lines = [f"# uad_kernels benchmark: {m['device']} ({m['device_name']})", "",
             f"- date: {m['date']}", f"- versions: {v}", f"- quick: {m['quick']}, CPU threads: {m['cpu_threads']}",
             f"- copy bandwidth measured in the same run: {m['copy_gb_per_s']:.1f} GB/s",
             f"- kernel backend: {m['kernel_backend']}", "",
             "| op | size | impl | seconds | GB/s | % of copy | x vs reference | x vs baseline | note |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['op']} | {r['size']} | {r['impl']} | {r['seconds']:.4f} | {_fmt(r['gb_per_s'], '.1f')} | "
                     f"{_fmt(r['copy_frac'] and 100 * r['copy_frac'], '.0f')} | {_fmt(r['speedup_vs_ref'], '.2f')} | "
                     f"{_fmt(r['speedup_vs_base'], '.2f')} | {r['note']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/kernels/bench_kernels.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds, not minutes)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="directory for bench.json and results.md")
    a = p.parse_args(argv)
    run(a.device, a.quick, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
