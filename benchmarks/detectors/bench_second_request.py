"""Per-request latency of the learned detectors: the first request (weights read, network built) and
the following ones (served from the detector's model cache), in one process as the server runs them.

    .venv/bin/python benchmarks/detectors/bench_second_request.py --label after [--repeat 3]

A small template-space volume (64x72x56 phantom, --preprocessed protocol) keeps inference short, so the
per-request overhead (network construction, weight loading) is visible. Appends to results.json and
rewrites results.md next to this file.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(ROOT / "tests"))
from common import environment  # noqa: E402
from phantoms import brain_phantom  # noqa: E402

DETECTORS = ("inpainting_fast", "inpainting", "ppr", "baur_ae", "ae3d", "patchddm")
FAST = {"inpainting": {"stride": 16}, "inpainting_fast": {"stride": 16}, "patchddm": {"ensemble": 1, "steps": 2},
        "ppr": {"mode": "coarse"}}


def network_fetch(det):
    """The call a request makes to get its network: cached in the detector base (after) or, for the inpainting
    detectors before the shared cache, a rebuild from the state dict on every request."""
    if hasattr(det, "cached_model") and hasattr(det, "_network"):
        return lambda: det.cached_model("cpu", lambda st, cd, dev: det._network(st, det._config(cd), dev))
    if hasattr(det, "_network"):
        def rebuild():
            state, card = det.load_weights()
            return det._network(state, det._config(card), "cpu")
        return rebuild
    return (lambda: det.model("cpu")) if hasattr(det, "model") else (lambda: det._model("cpu"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True, help="name of this run (e.g. before / after)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--detectors", default=",".join(DETECTORS))
    args = ap.parse_args()
    import torch

    from uad_label.detectors import get_detector

    torch.set_num_threads(2)
    img, _ = brain_phantom(shape=(64, 72, 56))
    rows = []
    for name in args.detectors.split(","):
        det = get_detector(name)
        params = {"preprocessed": True, "device": "cpu", "check_contrast": False, **FAST.get(name, {})}
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            det.detect({m: img for m in (*det.modalities,)}, params, progress=lambda f, m: None)
            times.append(time.perf_counter() - t)
        fetch = network_fetch(det)
        fetch_times = []
        for _ in range(5):
            t = time.perf_counter()
            fetch()
            fetch_times.append(time.perf_counter() - t)
        rows.append({"detector": name, "first_s": round(times[0], 3), "next_s": [round(x, 3) for x in times[1:]],
                     "next_median_s": round(sorted(times[1:])[len(times[1:]) // 2], 3),
                     "network_step_ms": round(1000 * sorted(fetch_times)[2], 3)})
        print(rows[-1], flush=True)
    out = HERE / "results.json"
    runs = json.loads(out.read_text(encoding="utf-8")) if out.exists() else []
    runs.append({"label": args.label, "environment": environment(), "volume": [64, 72, 56], "params": FAST,
                 "rows": rows})
    out.write_text(json.dumps(runs, indent=2), encoding="utf-8")
    lines = ["# Detector request latency: first vs following requests", "",
             "`benchmarks/detectors/bench_second_request.py`; 64x72x56 phantom, template space, CPU, 2 threads.", ""]
    for run in runs:
        env = run["environment"]
        lines += [f"## {run['label']} ({env['date']}, {env['processor']}, load {env['load_average_1min']:.1f}, "
                  f"torch {env['torch']})", "",
                  "| detector | first request (s) | following requests, median (s) | "
                  "network step of a request (ms) |",
                  "|---|---|---|---|"]
        lines += [f"| {r['detector']} | {r['first_s']} | {r['next_median_s']} | {r.get('network_step_ms', '-')} |"
                  for r in run["rows"]]
        lines.append("")
    (HERE / "results.md").write_text("\n".join(lines), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
