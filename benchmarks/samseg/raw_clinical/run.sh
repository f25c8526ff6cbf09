#!/usr/bin/env bash
# samseg next to tissue_outlier and flair_threshold on the raw clinical studies (with their lesion-CHANGE masks)
# that SAMSEG has finished (issue 17), all through `uad evaluate` in one run; rerun as more studies finish.
#   bash benchmarks/samseg/raw_clinical/run.sh          (from the repository root)
# SAMSEG's maps come from `uad pseudo-label samseg RAW --out RESULTS` over the raw studies as case folders (the
# pseudo-labels of issue 21); the evaluation cases (GT = the change mask on each FLAIR grid) from
# benchmarks/tissue_outlier/build_raw_cases.py.
set -euo pipefail
cd "$(dirname "$0")/../../.."
UAD=${UAD:-.venv/bin/uad}
PY=${PY:-.venv/bin/python}
OUT=benchmarks/samseg/raw_clinical
RAWCASES=${RAWCASES:-/tmp/uad_raw_eval}
RESULTS=${RESULTS:-/tmp/uad_pl/samseg_raw}
CASES=${CASES:-/tmp/uad_samseg_raw_cases}
SAMSEG_P="-p samples=20 -p burnin=20 -p max_iterations=20 -p deformation_iterations=10"  # `fast`

[ -f "$RAWCASES/cases.json" ] || "$PY" benchmarks/tissue_outlier/build_raw_cases.py "$RAWCASES"
rm -rf "$CASES" && mkdir -p "$CASES"
for d in "$RESULTS"/*/; do
    c=$(basename "$d")
    [ -f "$d/result.json" ] && [ -d "$RAWCASES/$c" ] && ln -sfn "$RAWCASES/$c" "$CASES/$c"
done
ls -d "$CASES"/*/ >/dev/null
"$UAD" evaluate samseg "$CASES" --results "$RESULTS" $SAMSEG_P --out "$OUT/samseg"
for det in tissue_outlier flair_threshold; do
    "$UAD" evaluate "$det" "$CASES" --out "$OUT/$det"
done
