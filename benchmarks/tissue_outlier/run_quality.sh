#!/usr/bin/env bash
# Quality evidence of tissue_outlier next to flair_threshold, all through `uad evaluate` (metrics.json
# and pr_curve.png per run under benchmarks/tissue_outlier/quality/). Settings were chosen on the
# synthetic cases only (sweep_synthetic.py); patient 26 is evaluated once with them.
#   bash benchmarks/tissue_outlier/run_quality.sh            (from the repository root)
# Another detector is evaluated on the same cases with: DETECTORS="samseg" bash ... (or any list).
set -euo pipefail
cd "$(dirname "$0")/../.."
UAD=${UAD:-.venv/bin/uad}
PY=${PY:-.venv/bin/python}
OUT=benchmarks/tissue_outlier/quality
DETECTORS=${DETECTORS:-"flair_threshold tissue_outlier"}
SYN=${SYN:-/tmp/uad_synth_bench}
P26=${P26:-/tmp/uad_p26_cases}
RAWCASES=${RAWCASES:-/tmp/uad_raw_eval}
mkdir -p "$OUT"

# (a) 10 synthetic subjects (template space) with real MSLUB lesion masks, as earlier benchmarks built them
[ -f "$SYN/ground_truth/sub-009.nii.gz" ] || "$UAD" sample-data "$SYN" --n-healthy 0 --n-lesion 10 \
    --geometry template --lesion-masks ../shared/data/mslub/lesion_masks_mni
# (b) MSLUB patient 26: FLAIR, T1, T2 (and T1POST, unused) in FSL's MNI grid, expert mask
mkdir -p "$P26" && ln -sfn "$PWD/../shared/data/mslub/patient26" "$P26/patient26"
# (c) raw clinical studies with a (lesion-change) mask brought onto each FLAIR grid
[ -f "$RAWCASES/cases.json" ] || "$PY" benchmarks/tissue_outlier/build_raw_cases.py "$RAWCASES"

for det in $DETECTORS; do
    "$UAD" evaluate "$det" "$SYN" --preprocessed --out "$OUT/synth_$det"
    "$UAD" evaluate "$det" "$P26" --preprocessed --out "$OUT/p26_$det"
    "$UAD" evaluate "$det" "$RAWCASES" --out "$OUT/raw_$det"
done
if [[ " $DETECTORS " == *" tissue_outlier "* ]]; then
    # FLAIR alone (the same model with less input; declared before patient 26 was evaluated)
    "$UAD" evaluate tissue_outlier "$SYN" --preprocessed -p channels=FLAIR --out "$OUT/synth_tissue_outlier_flair"
    "$UAD" evaluate tissue_outlier "$P26" --preprocessed -p channels=FLAIR --out "$OUT/p26_tissue_outlier_flair"
fi
cp "$RAWCASES/cases.json" "$OUT/raw_cases.json"
