"""How well the fast mode's map (R) agrees with the exact map (G over every window), per slice:
Spearman rank correlation over brain pixels and overlap (Dice) of the top 5% brain pixels.

  python benchmarks/inpainting/agreement.py CASE_FLAIR.nii.gz [...] --slices 4 --stride 8 --out DIR

Uses the installed weights (inpainting, inpainting_fast), template-space input (preprocessed).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr


def main(argv=None):
    from uad_label.detectors import get_detector
    from uad_label.io import load_image
    from uad_label.preprocess import PreprocessOptions, preprocess
    from uad_label.transforms.slices import SliceMapper

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("flair", nargs="+")
    p.add_argument("--slices", type=int, default=4, help="slices per case, evenly spread over the brain")
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--box", type=int, default=16)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    exact, fast = get_detector("inpainting"), get_detector("inpainting_fast")
    g_state, g_card = exact.load_weights()
    r_state, r_card = fast.load_weights()
    cfg = exact._config(g_card)
    params = {"metric": "l1", "score_in_brain": False, "reduce": "mean", "engine": "auto"}
    g = exact._network(g_state, cfg, torch.device("cpu"))
    r = fast._network(r_state, fast._config(r_card), torch.device("cpu"))
    rows = []
    t0 = time.perf_counter()
    for path in a.flair:
        case = preprocess({"FLAIR": load_image(path)}, PreprocessOptions(preprocessed=True), reference="FLAIR")
        imgs, brains, keep = SliceMapper(case.shape, cfg, 2).to_slices(case.arrays["FLAIR"], case.brain)
        big = torch.nonzero(brains.flatten(1).float().mean(1) > 0.15).flatten()
        pick = big[torch.linspace(0, len(big) - 1, a.slices).round().long()]
        for i in pick.tolist():
            hg = exact._slice_map(g, cfg, params, imgs[i], brains[i], a.box, a.stride, 64)
            hr = fast._slice_map(r, cfg, {}, imgs[i], brains[i], a.box, a.stride, 64)
            b = brains[i]
            vg, vr = hg[b].numpy(), hr[b].numpy()
            k = max(1, int(0.05 * vg.size))
            tg = set(np.argsort(-vg)[:k].tolist())
            tr = set(np.argsort(-vr)[:k].tolist())
            rows.append({"case": Path(path).name, "slice": int(keep[i]), "spearman": float(spearmanr(vg, vr).statistic),
                         "top5_dice": 2 * len(tg & tr) / (2 * k)})
            print(rows[-1], flush=True)
    summary = {"n_slices": len(rows), "spearman_mean": float(np.mean([r["spearman"] for r in rows])),
               "top5_dice_mean": float(np.mean([r["top5_dice"] for r in rows])), "stride": a.stride, "box": a.box,
               "seconds": round(time.perf_counter() - t0, 1), "load_average": os.getloadavg(),
               "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__,
               "weights": {"inpainting": g_card.get("date"), "inpainting_fast": r_card.get("date")}}
    print(json.dumps(summary, indent=2))
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "agreement.json").write_text(json.dumps({"summary": summary, "slices": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
