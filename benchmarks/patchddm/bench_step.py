"""PatchDDM network cost: seconds per network evaluation (= per DDIM step) and peak memory of the
whole-volume forward, and the time of an N-member, S-step DDIM ensemble.

GPU (the issue's targets at 256^3 on the H200: <= 0.5 s per step, <= 12 GB peak, 5 x 20 ensemble
<= 60 s; published: 1.02 s and 24.0 GB on an A100-40GB):
    python benchmarks/patchddm/bench_step.py --size 256 --device cuda --out benchmarks/patchddm/results/h200.json
CPU (small size, same code):
    python benchmarks/patchddm/bench_step.py --size 64 --device cpu --ensemble 1 --steps 2
Tiled inference (the detector's `tile` parameter), timed and compared with the whole volume:
    python benchmarks/patchddm/bench_step.py --size 256 --device cuda --tile 128 --out ...

Random weights (cost does not depend on them); bf16 autocast + channels-last on CUDA, inference
mode (no stored activations). Needs only torch (no MONAI: the GPU machine has none).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import torch

    from benchmarks.common import environment
    from uad_label.diffusion import DiffusionSchedule
    from uad_label.networks.patchddm import PUBLISHED, PatchDDMUNet
    from uad_label.networks.patchddm_inference import network_call

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256, help="cubic volume edge (multiple of 64)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5, help="timed single evaluations")
    ap.add_argument("--ensemble", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--members-per-batch", type=int, default=1)
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    ap.add_argument("--base-channels", type=int, default=None, help="override the published 29 (quick CPU runs)")
    ap.add_argument("--tile", type=int, default=0, help="also time tiled inference with N^3 tiles")
    ap.add_argument("--tile-overlap", type=float, default=0.5)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    cuda = a.device.startswith("cuda")
    amp = cuda and not a.fp32
    config = dict(PUBLISHED, **({"base_channels": a.base_channels} if a.base_channels else {}))
    torch.manual_seed(0)
    net = PatchDDMUNet(in_channels=7, **config).to(a.device).eval()
    with torch.no_grad():  # the zero-initialised output layers would make every prediction 0
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                torch.nn.init.normal_(p, std=0.02)
    if cuda:
        net = net.to(memory_format=torch.channels_last_3d)
    dtype = torch.bfloat16 if amp else torch.float32
    x = torch.randn(1, 7, a.size, a.size, a.size, device=a.device, dtype=dtype)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    t = torch.tensor([500], device=a.device)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def forward(inp, tt):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
            return net(inp, tt).float()

    def timed(call):
        """(seconds of each of a.repeats calls after one warm-up (cuDNN autotuning), last output);
        the peak-memory counters start after the warm-up."""
        call(x, t)
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        seconds, out = [], None
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            out = call(x, t)
            sync()
            seconds.append(time.perf_counter() - t0)
        return seconds, out

    with torch.inference_mode():
        times, _ = timed(forward)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        reserved = torch.cuda.max_memory_reserved() / 2**30 if cuda else None
        tiled = None
        if a.tile:
            whole_eps = forward(x, t)
            ttimes, eps = timed(network_call(net, (a.tile,) * 3, a.tile_overlap, cuda))
            tiled = {"tile": a.tile, "overlap": a.tile_overlap, "seconds_per_step": sorted(ttimes)[len(ttimes) // 2],
                     "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                     "relative_mean_abs_difference_to_whole": float((eps - whole_eps).abs().mean()
                                                                    / whole_eps.abs().mean())}
            del whole_eps, eps
        sched = DiffusionSchedule()
        t0 = time.perf_counter()
        for start in range(0, a.ensemble, a.members_per_batch):
            b = min(a.members_per_batch, a.ensemble - start)
            sched.sample(forward, x[:, :6].expand(b, -1, -1, -1, -1), a.steps)
        sync()
        ens = time.perf_counter() - t0
    res = {"benchmark": "patchddm network evaluation", "size": [a.size] * 3, "device": a.device,
           "precision": "bf16 autocast, channels-last" if amp else "fp32", "network": config,
           "parameters_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 3),
           "seconds_per_step": sorted(times)[len(times) // 2], "seconds_per_step_all": times,
           "peak_allocated_gib": peak, "peak_reserved_gib": reserved,
           "ensemble": a.ensemble, "steps": a.steps, "members_per_batch": a.members_per_batch,
           "ensemble_seconds": ens, "tiled": tiled, "environment": environment()}
    print(json.dumps(res, indent=2))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
