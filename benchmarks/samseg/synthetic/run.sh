#!/usr/bin/env bash
# samseg next to tissue_outlier and flair_threshold on the synthetic subjects (real MSLUB lesion masks) that
# SAMSEG has finished (issue 17), all through `uad evaluate` in one run; rerun as more subjects finish.
#   bash benchmarks/samseg/synthetic/run.sh          (from the repository root)
# SAMSEG's maps come from `uad pseudo-label samseg` (benchmarks/quality/distillation/run.sh, its step (c)),
# scored with --results; the two fast detectors run on the same cases here.
set -euo pipefail
cd "$(dirname "$0")/../../.."
UAD=${UAD:-.venv/bin/uad}
OUT=benchmarks/samseg/synthetic
SYN=${SYN:-/tmp/uad_synth_bench}
RESULTS=${RESULTS:-/tmp/uad_pl/samseg_template}
CASES=${CASES:-/tmp/uad_samseg_synth_cases}
SAMSEG_P="-p samples=20 -p burnin=20 -p max_iterations=20 -p deformation_iterations=10"  # `fast`

rm -rf "$CASES" && mkdir -p "$CASES/ground_truth"
for d in "$RESULTS"/sub-*/; do
    c=$(basename "$d")
    [ -f "$d/result.json" ] || continue
    for m in FLAIR T1 T2; do ln -sfn "$SYN/${c}_$m.nii.gz" "$CASES/"; done
    ln -sfn "$SYN/ground_truth/$c.nii.gz" "$CASES/ground_truth/"
done
ls "$CASES"/*_FLAIR.nii.gz >/dev/null
"$UAD" evaluate samseg "$CASES" --preprocessed --results "$RESULTS" $SAMSEG_P --out "$OUT/samseg"
for det in tissue_outlier flair_threshold; do
    "$UAD" evaluate "$det" "$CASES" --preprocessed --out "$OUT/$det"
done
