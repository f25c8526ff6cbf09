"""Report of run.sh: the protocol metrics of the student (segresnet), its teacher (samseg) and flair_threshold on
the held-out cases, the student's agreement with its teacher (Dice of the masks), runtimes; results.md/json."""
from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import numpy as np
import SimpleITK as sitk

DETECTORS = ("segresnet", "samseg", "flair_threshold")
SETS = {"heldout_syn": "held-out synthetic subjects", "heldout_samseg": "held-out synthetic subjects SAMSEG finished",
        "p26": "MSLUB patient 26 (held out)",
        "heldout_raw": "held-out raw clinical studies (GT: lesion changes only)"}
TEACHER = {"heldout_raw": "samseg_raw"}  # where SAMSEG's outputs of a set lie (else samseg_template)


def _mask(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / s) if s else 1.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--eval", type=Path, default=None, help="the uad evaluate outputs (default WORK/eval)")
    ap.add_argument("--train", required=True)
    ap.add_argument("--raw-train", default="")
    a = ap.parse_args()
    ev = a.eval or a.work / "eval"
    rows, agreement = [], []
    for s in SETS:
        for det in DETECTORS:
            f = ev / f"{s}_{det}" / "metrics.json"
            if not f.is_file():
                continue
            m = json.loads(f.read_text())
            per = m["per_case"]
            if det == "samseg":  # --results: the run's own time per case (batch_seconds of its result.json)
                secs = [json.loads((a.work / TEACHER.get(s, "samseg_template") / r["case"] / "result.json").read_text())
                        ["batch_seconds"] for r in per]
            else:
                secs = [r["seconds"] for r in per]
            rows.append({"set": s, "detector": det, "cases": m["cases"], "dsc_upper": m["dsc_upper"],
                         "auprc": m["auprc"], "auroc": m["auroc"], "dice_default": m["dice_default_mean"],
                         "seconds_per_case": float(np.mean(secs)), "case_ids": [r["case"] for r in per]})
            if det == "segresnet":
                for r in per:
                    teacher = a.work / TEACHER.get(s, "samseg_template") / r["case"] / "mask.nii.gz"
                    student = ev / f"{s}_{det}" / "cases" / r["case"] / "mask.nii.gz"
                    if teacher.is_file() and student.is_file() and s != "heldout_samseg":
                        agreement.append({"case": r["case"], "dice_student_vs_teacher":
                                          _dice(_mask(student), _mask(teacher))})
    card = json.loads((a.out / "segresnet_card.json").read_text())
    res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
           "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores (shared), load "
                      f"{' '.join(f'{x:.1f}' for x in __import__('os').getloadavg())}",
           "train_cases": a.train.split() + a.raw_train.split(), "rows": rows, "agreement": agreement,
           "training": {k: card.get(k) for k in ("config", "data", "training", "settings") if k in card}}
    (a.out / "results.json").write_text(json.dumps(res, indent=2))
    lines = [f"# Distillation: SAMSEG pseudo-labels -> segresnet ({res['date']}, {res['machine']})", "",
             f"Student trained on the SAMSEG pseudo-labels of: {', '.join(res['train_cases'])}. Everything below is "
             "held out from training.", "",
             "| cases | detector | n | upper-bound Dice | AUPRC | AUROC | Dice at default | s / case |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {SETS[r['set']]} | `{r['detector']}` | {r['cases']} | {r['dsc_upper']:.3f} | "
                     f"{r['auprc']:.3f} | {r['auroc']:.3f} | {r['dice_default']:.3f} | {r['seconds_per_case']:.1f} |")
    lines += ["", "Agreement with the teacher (Dice of segresnet's mask at 0.5 vs SAMSEG's at 0.3), held-out cases:",
              "",
              "| case | Dice student vs teacher |", "|---|---|"]
    lines += [f"| {g['case']} | {g['dice_student_vs_teacher']:.3f} |" for g in agreement]
    (a.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
