"""Settings of tissue_outlier chosen on the 10 synthetic subjects with real MSLUB lesion masks only
(patient 26 is reported once, with the chosen setting, by run_quality.sh).

    uad sample-data /tmp/uad_synth_bench --n-healthy 0 --n-lesion 10 --geometry template \
        --lesion-masks ../shared/data/mslub/lesion_masks_mni
    python benchmarks/tissue_outlier/sweep_synthetic.py /tmp/uad_synth_bench

Every setting goes through uad_label.evaluation.evaluate (what `uad evaluate` runs), with
flair_threshold in the same run. Writes sweep_synthetic.json / .md next to this file."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import environment  # noqa: E402

from uad_label.evaluation.evaluate import evaluate  # noqa: E402

HERE = Path(__file__).resolve().parent
# (name, detector, params): one change at a time from the default
SETTINGS = [
    ("flair_threshold (reference)", "flair_threshold", {}),
    ("default: posterior, FLAIR+T1+T2, atlas, beta 0.3, outlier prior 0.01, sign FLAIR, fit stride 2",
     "tissue_outlier", {}),
    ("fit on every voxel (fit_stride 1)", "tissue_outlier", {"fit_stride": 1}),
    ("fit on every 3rd voxel per axis (fit_stride 3; added later for speed)", "tissue_outlier", {"fit_stride": 3}),
    ("FLAIR only", "tissue_outlier", {"channels": "FLAIR"}),
    ("score = Mahalanobis distance", "tissue_outlier", {"score": "mahalanobis"}),
    ("FLAIR only, Mahalanobis", "tissue_outlier", {"channels": "FLAIR", "score": "mahalanobis"}),
    ("sign: hyperintense on FLAIR and T2", "tissue_outlier", {"sign": "flair_t2"}),
    ("no sign rule", "tissue_outlier", {"sign": "none"}),
    ("no MRF (beta 0)", "tissue_outlier", {"beta": 0.0}),
    ("MRF beta 1.0", "tissue_outlier", {"beta": 1.0}),
    ("no atlas (flat priors)", "tissue_outlier", {"atlas": False}),
    ("outlier prior 0.001", "tissue_outlier", {"outlier_prior": 0.001}),
    ("outlier prior 0.05", "tissue_outlier", {"outlier_prior": 0.05}),
]


def main(data: str, only: list[str] | None = None) -> None:
    out_json = HERE / "sweep_synthetic.json"
    rows = json.loads(out_json.read_text(encoding="utf-8"))["rows"] if out_json.exists() else []
    done = {r["setting"] for r in rows}
    for name, det, params in SETTINGS:
        if name in done or (only and name not in only):
            continue
        t = time.perf_counter()
        m = evaluate(det, data, None, {"preprocessed": True, **params}, progress=False)
        rows.append({"setting": name, "detector": det, "params": params, "dsc_upper": round(m["dsc_upper"], 4),
                     "auprc": round(m["auprc"], 4), "auroc": round(m["auroc"], 4),
                     "dice_default_mean": round(m["dice_default_mean"], 4),
                     "best_threshold": round(m["best_threshold"], 4),
                     "seconds_per_case": round((time.perf_counter() - t) / m["cases"], 2)})
        print(json.dumps(rows[-1]), flush=True)
        out_json.write_text(json.dumps({"environment": environment(), "data": str(data), "rows": rows}, indent=2),
                            encoding="utf-8")
    lines = ["| setting | upper-bound Dice | AUPRC | AUROC | Dice at default threshold (mean) | s / case |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['dsc_upper']:.3f} | {r['auprc']:.3f} | {r['auroc']:.3f} | "
                     f"{r['dice_default_mean']:.3f} | {r['seconds_per_case']:.1f} |")
    env = environment()
    (HERE / "sweep_synthetic.md").write_text(
        f"# tissue_outlier settings on 10 synthetic subjects with real MSLUB lesion masks\n\n"
        f"{env['date']}, {env['processor']}, {env['cpus']} CPUs (shared), numpy {env['numpy']}; "
        f"`python benchmarks/tissue_outlier/sweep_synthetic.py {data}`. {len(rows) - 1} tissue_outlier "
        f"settings tried; patient 26 was not looked at.\n\n" + "\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or None)
