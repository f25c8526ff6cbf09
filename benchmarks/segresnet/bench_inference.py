"""Inference cost of the fast segmenter (segresnet) on a 182x218x182 case, and what test-time augmentation
(tta) costs and gives. Writes results/inference.json and results/inference.md next to this file.

    python benchmarks/segresnet/bench_inference.py [--weights DIR] [--repeats 3] [--threads 1]
        [--quality DATA --cases sub-008,sub-009]

Runtime: MSLUB patient 26 (template space, 182x218x182; FLAIR+T1+T2 and FLAIR alone) through
`Detector.detect` with `preprocessed`, for each tta value, the values interleaved in every repeat (the CPU is
shared: a load change hits all of them alike). CPU seconds (process time of the call) are the comparable
number on a loaded machine; wall seconds are reported beside them. `load`: reading the weights and building
the network (first request of a process); `first call`: that request in full (imports, first kernels).
Without trained weights (--weights, $UAD_WEIGHTS_DIR or the package) a randomly initialised network of the
cpu configuration is timed: the cost does not depend on the weights' values. The `full` configuration's
network (1 mm, 16 filters) is timed the same way, one pass.

Quality (--quality DATA with trained weights): on cases of DATA with ground truth (e.g. held-out synthetic
subjects), Dice at 0.5 and AUPRC with tta 0 and with each tta, and whether the uncertainty marks the errors
(mean uncertainty on wrong vs right brain voxels, share of the errors among the 1 % most uncertain voxels).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import environment  # noqa: E402

HERE = Path(__file__).resolve().parent
P26 = Path(__file__).resolve().parents[3] / "shared" / "data" / "mslub" / "patient26"
MODS = ("FLAIR", "T1", "T2")


def random_weights(config: str, folder: Path) -> Path:
    import torch

    from uad_label.networks.segresnet import build
    from uad_label.training.segresnet import CONFIGS
    from uad_label.weights import save_state

    cfg = CONFIGS[config]
    net_cfg = {"in_channels": 3, **cfg["network"]}
    torch.manual_seed(0)
    save_state("segresnet", build(net_cfg).state_dict(),
               {"network": net_cfg, "spacing_mm": cfg["spacing_mm"], "modalities": list(MODS),
                "config": f"{config} (random initialisation: runtime only)"}, folder)
    return folder


def fresh_detector(weights_dir: Path):
    from uad_label.detectors.segresnet import SegResNetSegmenter

    os.environ["UAD_WEIGHTS_DIR"] = str(weights_dir)
    return SegResNetSegmenter()


def timed(det, images, params) -> dict:
    c, w = time.process_time(), time.perf_counter()
    r = det.detect(images, params, progress=lambda f, m: None)
    return {"cpu_s": time.process_time() - c, "wall_s": time.perf_counter() - w,
            "detect_wall_s": r.info["latencies"]["detect"], "seconds_per_pass": r.info["seconds_per_pass"],
            "passes": r.info["passes"], "result": r}


def runtime(weights_dir: Path, ttas, repeats: int) -> dict:
    import torch

    images = {m: P26 / f"{m}.nii.gz" for m in MODS}
    det = fresh_detector(weights_dir)
    c, w = time.process_time(), time.perf_counter()
    det.cached_model("cpu", det._build)
    load = {"cpu_s": round(time.process_time() - c, 3), "wall_s": round(time.perf_counter() - w, 3)}
    first = timed(det, images, {"preprocessed": True, "tta": 0})
    rows = {t: [] for t in ttas}
    flair_only = []
    maps = {}
    for _ in range(repeats):
        for t in ttas:
            r = timed(det, images, {"preprocessed": True, "tta": t})
            maps[t] = r.pop("result")
            rows[t].append(r)
        r = timed(det, {"FLAIR": images["FLAIR"]}, {"preprocessed": True, "tta": 3})
        r.pop("result")
        flair_only.append(r)
    import SimpleITK as sitk

    again = det.detect(images, {"preprocessed": True, "tta": ttas[-1]}, progress=lambda f, m: None)
    deterministic = bool(np.array_equal(sitk.GetArrayViewFromImage(again.anomaly_map),
                                        sitk.GetArrayViewFromImage(maps[ttas[-1]].anomaly_map)))

    def med(rs, k):
        return round(statistics.median(r[k] for r in rs), 3)

    table = [{"tta": t, "passes": rows[t][0]["passes"], "cpu_s": med(rows[t], "cpu_s"),
              "wall_s": med(rows[t], "wall_s"), "detect_wall_s": med(rows[t], "detect_wall_s"),
              "seconds_per_pass": med(rows[t], "seconds_per_pass")} for t in ttas]
    return {"case": "MSLUB patient26, template space 182x218x182, FLAIR+T1+T2",
            "torch_threads": torch.get_num_threads(), "load": load,
            "first_call": {k: round(v, 3) for k, v in first.items() if k != "result"}, "per_tta": table,
            "flair_only_tta3": {"cpu_s": med(flair_only, "cpu_s"), "wall_s": med(flair_only, "wall_s")},
            "deterministic_repeat": deterministic, "repeats": repeats}


def quality(weights_dir: Path, data: Path, ids, ttas) -> list[dict]:
    import SimpleITK as sitk
    from sklearn.metrics import average_precision_score

    from uad_label.cases import find_cases

    det = fresh_detector(weights_dir)
    out = []
    for case in find_cases(data):
        if ids and case.case_id not in ids or case.gt is None:
            continue
        gt = sitk.GetArrayFromImage(sitk.ReadImage(str(case.gt))) > 0
        for t in ttas:
            r = det.detect(case.images, {"preprocessed": True, "tta": t}, progress=lambda f, m: None)
            p = sitk.GetArrayFromImage(r.anomaly_map)
            brain = sitk.GetArrayFromImage(r.brain) > 0
            ml = float(np.prod(r.anomaly_map.GetSpacing())) / 1000.0
            m = p >= 0.5
            dice = 2 * (m & gt).sum() / max(m.sum() + gt.sum(), 1)
            row = {"case": case.case_id, "tta": t, "dice_at_0.5": round(float(dice), 4),
                   "auprc": round(float(average_precision_score(gt[brain], p[brain])), 4) if gt.any() else None,
                   "lesion_ml": round(float(gt.sum()) * ml, 3), "predicted_ml": round(float(m.sum()) * ml, 3)}
            if "uncertainty" in r.extras:
                u = sitk.GetArrayFromImage(r.extras["uncertainty"])[brain]
                wrong = (m != gt)[brain]
                top = u >= np.quantile(u, 0.99)
                row.update({"mean_uncertainty_wrong": round(float(u[wrong].mean()), 4) if wrong.any() else None,
                            "mean_uncertainty_right": round(float(u[~wrong].mean()), 4),
                            "errors_in_top1pct_uncertain": round(float(wrong[top].sum() / max(wrong.sum(), 1)), 4),
                            "error_rate_top1pct_uncertain": round(float(wrong[top].mean()), 4),
                            "error_rate_all": round(float(wrong.mean()), 5)})
            out.append(row)
            print(json.dumps(row), flush=True)
    return out


def main() -> None:
    from uad_label.runtime import configure_threads
    from uad_label.weights import find_weights

    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, help="folder with segresnet.pt (default: the usual lookup)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch / SimpleITK threads (0: libraries' default)")
    ap.add_argument("--tta", type=int, nargs="+", default=[0, 1, 3, 7])
    ap.add_argument("--quality", type=Path, help="cases with ground truth for what tta gives")
    ap.add_argument("--cases", default="", help="comma-separated case ids of --quality (default: all)")
    args = ap.parse_args()
    configure_threads(args.threads)
    load_before = os.getloadavg()
    found = args.weights / "segresnet.pt" if args.weights else find_weights("segresnet")
    tmp = Path(tempfile.mkdtemp(prefix="segresnet_bench_"))
    weights_dir = found.parent if found and found.exists() else random_weights("cpu", tmp / "cpu")
    card = json.loads((weights_dir / "segresnet.json").read_text(encoding="utf-8"))
    res = {"weights": str(weights_dir), "weights_config": card.get("config"),
           "trained_cases": len(card.get("data", {}).get("cases", [])), "runtime": runtime(weights_dir, args.tta,
                                                                                          args.repeats)}
    print(json.dumps(res["runtime"]), flush=True)
    full = timed(fresh_detector(random_weights("full", tmp / "full")), {m: P26 / f"{m}.nii.gz" for m in MODS},
                 {"preprocessed": True, "tta": 0})
    res["full_config_one_pass"] = {k: round(v, 3) for k, v in full.items() if k != "result"}
    if args.quality:
        ids = {c for c in args.cases.split(",") if c}
        res["quality"] = {"data": str(args.quality), "cases": sorted(ids), "rows": quality(weights_dir, args.quality,
                                                                                           ids, args.tta)}
    env = {**environment(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "threads": args.threads, "argv": " ".join(sys.argv[1:])}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "inference.json").write_text(json.dumps({"environment": env, **res}, indent=2, default=str),
                                        encoding="utf-8")
    (out / "inference.md").write_text(report(env, res), encoding="utf-8")


def report(env, res, args=None) -> str:
    rt = res["runtime"]
    lines = [f"# segresnet inference\n\n{env['date']}; {env['processor']}, {env['cpus']} CPUs shared with other jobs "
             f"(load average {env['load_average_before'][0]:.1f} before, {env['load_average_after'][0]:.1f} after); "
             f"torch {env['torch']}, MONAI {env.get('monai')}, {rt['torch_threads']} torch thread(s). Weights: "
             f"config {res['weights_config']}, {res['trained_cases']} training cases ({res['weights']}). "
             f"`python benchmarks/segresnet/bench_inference.py {env['argv']}`.\n",
             f"{rt['case']}, `preprocessed=true`, medians of {rt['repeats']} interleaved repeats. CPU seconds are "
             "the comparable figure on this shared machine; wall seconds grow with the load.\n",
             "| tta | network passes | CPU s per case | wall s per case | detect wall s | wall s per pass |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rt["per_tta"]:
        lines.append(f"| {r['tta']} | {r['passes']} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} | {r['detect_wall_s']:.2f} "
                     f"| {r['seconds_per_pass']:.2f} |")
    fo, fp = rt["flair_only_tta3"], res["full_config_one_pass"]
    lines += ["", f"- FLAIR alone, tta 3: {fo['cpu_s']:.2f} CPU s, {fo['wall_s']:.2f} wall s.",
              f"- load (weights + network, once per process): {rt['load']['cpu_s']:.2f} CPU s, "
              f"{rt['load']['wall_s']:.2f} wall s; first request in full (tta 0): {rt['first_call']['cpu_s']:.2f} "
              f"CPU s, {rt['first_call']['wall_s']:.2f} wall s.",
              f"- same input twice, same map: {rt['deterministic_repeat']}.",
              f"- the `full` configuration's network (1 mm, 16 filters), one pass (tta 0): {fp['cpu_s']:.2f} CPU s, "
              f"{fp['wall_s']:.2f} wall s: a GPU model."]
    if "quality" in res:
        lines += ["", f"## What tta gives ({res['quality']['data']}, cases {', '.join(res['quality']['cases'])})\n",
                  "| case | tta | Dice@0.5 | AUPRC | predicted / true ml | mean unc. wrong / right voxels | "
                  "errors among top-1 % uncertain | error rate there / overall |",
                  "|---|---:|---:|---:|---|---|---:|---|"]
        for r in res["quality"]["rows"]:
            u = (f"{r['mean_uncertainty_wrong']} / {r['mean_uncertainty_right']}" if "mean_uncertainty_right" in r
                 else "-")
            e = f"{r['errors_in_top1pct_uncertain']}" if "errors_in_top1pct_uncertain" in r else "-"
            er = (f"{r['error_rate_top1pct_uncertain']} / {r['error_rate_all']}" if "error_rate_all" in r else "-")
            lines.append(f"| {r['case']} | {r['tta']} | {r['dice_at_0.5']} | {r['auprc']} | {r['predicted_ml']} / "
                         f"{r['lesion_ml']} | {u} | {e} | {er} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
