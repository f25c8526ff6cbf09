"""Evidence for fusion and calibration: every member next to the fusion rules, in one run, on MSLUB
patient 26 and the 10 synthetic subjects with real MSLUB lesion masks (the tissue_outlier benchmark's set:
`uad sample-data DIR --n-healthy 0 --n-lesion 10 --geometry template --lesion-masks .../lesion_masks_mni`).

    nice -n 10 .venv/bin/python benchmarks/fusion/run_fusion.py [--synth /tmp/uad_synth_bench] [--folds 11]

1. Uncalibrated, by the published protocol (`uad evaluate`): flair_threshold, tissue_outlier, fusion (equal
   weights, mean rule): metrics.json + pr_curve.png under uncalibrated/<detector>/.
2. Calibration cross-validated over the 11 cases (uad_label.evaluation.calibrate, leave-one-case-out by
   default): each detector's threshold (fusion: and its weights / logistic coefficients) chosen on the other
   cases; the held-out case scored at that threshold (pooled Dice over all held-out cases) next to the fixed
   default, and its held-out maps scored by the published protocol (100-threshold filtered Dice, AUPRC, AUROC).
Writes results.json, results.md and pr_curves.png here. No card is written (a temporary UAD_WEIGHTS_DIR).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
from common import environment  # noqa: E402

MEMBERS = "flair_threshold,tissue_outlier"
CONFIGS = [  # (label, detector, params beyond the common ones)
    ("flair_threshold", "flair_threshold", {}),
    ("tissue_outlier", "tissue_outlier", {}),
    ("fusion mean", "fusion", {"members": MEMBERS, "rule": "mean"}),
    ("fusion product", "fusion", {"members": MEMBERS, "rule": "product"}),
    ("fusion logistic", "fusion", {"members": MEMBERS, "rule": "logistic"}),
]


def build_cases(synth: Path, p26: Path, out: Path) -> Path:
    """One folder holding the synthetic datastore's files (flat, ground_truth/) and patient 26's folder."""
    out.mkdir(parents=True, exist_ok=True)
    for f in synth.iterdir():
        if f.name.endswith(".nii.gz") or f.name == "ground_truth":
            link = out / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    if not (out / "patient26").exists():
        (out / "patient26").symlink_to(p26.resolve())
    return out


def held_out_maps(det, cases, p, cv):
    """The map of each case made with the choice of the fold that held it out."""
    from uad_label.detectors.fusion import combine

    by_id = {c.case_id: c for c in cases}
    for row in cv["folds"]:
        for cid in row["held_out"]:
            c = by_id[cid]
            if det.name == "fusion":
                names = p["members"].split(",")
                m = combine([c.maps[f"member_{n}"] for n in names], row["weights"], p["rule"],
                            row["intercept"] or 0.0) * c.brain
            else:
                m = c.maps["map"]
            yield c, c.uncropped(np.asarray(m, np.float32)), c.uncropped(c.gt), row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synth", default="/tmp/uad_synth_bench")
    ap.add_argument("--p26", default=str(ROOT.parent / "shared" / "data" / "mslub" / "patient26"))
    ap.add_argument("--cases", default="/tmp/uad_fusion_cases")
    ap.add_argument("--folds", type=int, default=11, help="cross-validation folds (11 = leave one case out)")
    ap.add_argument("--skip-uncalibrated", action="store_true")
    args = ap.parse_args()
    os.environ["UAD_WEIGHTS_DIR"] = tempfile.mkdtemp(prefix="uad-fusion-bench-")  # no card is read or written
    os.environ.setdefault("UAD_FUSION_CACHE", "24")

    from uad_label.evaluation.calibrate import cross_validate, prepare
    from uad_label.evaluation.evaluate import evaluate
    from uad_label.evaluation.metrics import PooledEvaluation

    cases_dir = build_cases(Path(args.synth), Path(args.p26), Path(args.cases))
    common = {"preprocessed": True}
    t_start = time.time()
    out: dict = {"benchmark": "fusion and calibration, members next to fusion rules", "environment": environment(),
                 "data": {"cases": str(cases_dir), "synthetic": args.synth, "patient26": args.p26},
                 "uncalibrated": {}, "cross_validated": {}}
    previous = HERE / "results.json"
    if args.skip_uncalibrated and previous.exists():  # keep the last run's `uad evaluate` numbers
        out["uncalibrated"] = json.loads(previous.read_text()).get("uncalibrated", {})
    if not args.skip_uncalibrated:
        for det_name, extra in (("flair_threshold", {}), ("tissue_outlier", {}), ("fusion", {"members": MEMBERS})):
            t = time.perf_counter()
            m = evaluate(det_name, cases_dir, HERE / "uncalibrated" / det_name, {**common, **extra}, progress=False)
            out["uncalibrated"][det_name] = {k: m[k] for k in ("dsc_upper", "auprc", "auroc", "best_threshold",
                                                                "dice_default_mean", "cases")}
            out["uncalibrated"][det_name]["seconds"] = round(time.perf_counter() - t, 1)
            out["uncalibrated"][det_name]["load_average_1min"] = os.getloadavg()[0]
            print(det_name, out["uncalibrated"][det_name], flush=True)
    prepared: dict = {}
    curves = {}
    for label, det_name, extra in CONFIGS:
        t = time.perf_counter()
        if det_name not in prepared:
            prepared[det_name] = prepare(det_name, cases_dir, {**common, **extra}, progress=False)
        det, p0, cases = prepared[det_name]
        p = det.validate({**p0, **extra})
        cv = cross_validate(det, cases, p, folds=args.folds)
        pooled_maps = list(held_out_maps(det, cases, p, cv))
        lo = min(float(m.min()) for _, m, _, _ in pooled_maps)
        hi = max(float(m.max()) for _, m, _, _ in pooled_maps)
        ev = PooledEvaluation(np.linspace(lo, hi, 100))
        subsets = {"patient26": [x for x in pooled_maps if x[0].case_id == "patient26"],
                   "synthetic": [x for x in pooled_maps if x[0].case_id != "patient26"]}
        by_subset = {}
        for name, part in subsets.items():
            if part:
                sub = PooledEvaluation(np.linspace(min(float(m.min()) for _, m, _, _ in part),
                                                   max(float(m.max()) for _, m, _, _ in part), 100))
                for _, m, g, _ in part:
                    sub.add(m, g)
                by_subset[name] = {k: sub.result()[k] for k in ("dsc_upper", "auprc", "auroc")}
        per_case = []
        for c, m, g, row in pooled_maps:
            ev.add(m, g)
            per_case.append({"case": c.case_id, "threshold": row["threshold"], "weights": row["weights"],
                             "dice_held_out": row["dice_held_out"] if len(row["held_out"]) == 1 else None,
                             "dice_default": row["dice_held_out_default"] if len(row["held_out"]) == 1 else None})
        res = ev.result()
        precision, recall = ev.pr_curve()
        curves[label] = (recall, precision, res["auprc"])
        out["cross_validated"][label] = {
            "detector": det_name, "params": {k: p[k] for k in extra},
            "dice_cv_calibrated": cv["dice_cv"]["calibrated"], "dice_cv_default": cv["dice_cv"]["default"],
            "held_out_protocol": {k: res[k] for k in ("dsc_upper", "auprc", "auroc")},
            "held_out_protocol_by_subset": by_subset,
            "final_choice": {"threshold": float(cv["final"][0].thresholds[cv["final"][1]]),
                             "weights": cv["final"][0].weights, "intercept": cv["final"][0].intercept,
                             "dice_all_cases": round(cv["final"][2], 4)},
            "folds": len(cv["folds"]), "per_case": per_case, "seconds": round(time.perf_counter() - t, 1),
            "load_average_1min": os.getloadavg()[0]}
        print(label, {k: v for k, v in out["cross_validated"][label].items() if k != "per_case"}, flush=True)
        (HERE / "results.json").write_text(json.dumps(out, indent=2, default=str))
    out["seconds"] = round(time.time() - t_start, 1)
    (HERE / "results.json").write_text(json.dumps(out, indent=2, default=str))
    plot(curves, HERE / "pr_curves.png", len(cases))
    (HERE / "results.md").write_text(markdown(out))
    print(markdown(out))
    return 0


def plot(curves, path, n_cases):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for label, (recall, precision, auprc) in curves.items():
        ax.plot(recall, precision, label=f"{label} (AUPRC {auprc:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"held-out maps, {n_cases} cases (leave-one-out calibration)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(out) -> str:
    env = out["environment"]
    lines = [f"# Fusion and calibration ({env['date']})", "",
             f"Machine: {env['cpus']} CPUs, load average {env['load_average_1min']:.1f} at start; Python "
             f"{env['python']}, numpy {env['numpy']}, scikit-learn {env.get('sklearn')}. Cases: MSLUB patient 26 and "
             "10 synthetic subjects (template space) with real MSLUB lesion masks; template-space input "
             "(--preprocessed). Produced by run_fusion.py.", ""]
    if out["uncalibrated"]:
        lines += ["## Uncalibrated (`uad evaluate`, published protocol, fixed defaults)", "",
                  "| detector | upper-bound Dice | AUPRC | AUROC | mean Dice at default | s | load |",
                  "|---|---|---|---|---|---|---|"]
        for name, m in out["uncalibrated"].items():
            lines.append(f"| {name} | {m['dsc_upper']:.3f} | {m['auprc']:.3f} | {m['auroc']:.3f} | "
                         f"{m['dice_default_mean']:.3f} | {m['seconds']} | {m['load_average_1min']:.1f} |")
        lines.append("")
    lines += ["## Calibration cross-validated over cases (held-out cases only)", "",
              "Pooled Dice of the held-out cases at the threshold chosen without them, next to the fixed default; "
              "then the held-out maps (fusion: made with the fold's weights) by the published protocol.", "",
              "| detector | Dice calibrated | Dice default | upper-bound Dice | AUPRC | AUROC | final threshold | "
              "final weights |", "|---|---|---|---|---|---|---|---|"]
    for label, m in out["cross_validated"].items():
        h, f = m["held_out_protocol"], m["final_choice"]
        w = "" if f["weights"] is None else ", ".join(f"{x:.3g}" for x in f["weights"]) + (
            f"; b {f['intercept']:.3g}" if m["params"].get("rule") == "logistic" else "")
        lines.append(f"| {label} | {m['dice_cv_calibrated']:.3f} | {m['dice_cv_default']:.3f} | {h['dsc_upper']:.3f} | "
                     f"{h['auprc']:.3f} | {h['auroc']:.3f} | {f['threshold']:.4g} | {w} |")
    lines += ["", "The same held-out maps by subset (published protocol: upper-bound Dice / AUPRC / AUROC):", "",
              "| detector | patient 26 | 10 synthetic subjects |", "|---|---|---|"]
    for label, m in out["cross_validated"].items():
        cells = [" / ".join(f"{m['held_out_protocol_by_subset'][k][x]:.3f}" for x in ("dsc_upper", "auprc", "auroc"))
                 if k in m.get("held_out_protocol_by_subset", {}) else "" for k in ("patient26", "synthetic")]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    p26 = {label: next((r for r in m["per_case"] if r["case"] == "patient26"), None)
           for label, m in out["cross_validated"].items()}
    if all(p26.values()) and all(r["dice_held_out"] is not None for r in p26.values()):
        lines += ["", "Patient 26 held out (chosen on the 10 synthetic cases): "
                  + "; ".join(f"{k} {r['dice_held_out']:.3f} (default {r['dice_default']:.3f})"
                              for k, r in p26.items())]
    lines += ["", "![PR curves](pr_curves.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
