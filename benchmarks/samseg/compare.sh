#!/usr/bin/env bash
# samseg next to tissue_outlier and flair_threshold on the cases SAMSEG has finished (issue 17), all through
# `uad evaluate` in one run; rerun as more cases finish. SAMSEG's maps are the stored outputs of
# `uad pseudo-label samseg ... --out RESULTS` (the pseudo-labels of issue 21), scored with --results; the two
# fast detectors run on the same cases here.
#   bash benchmarks/samseg/compare.sh synthetic      the synthetic subjects with real MSLUB lesion masks (template
#                                                    space, --preprocessed)        -> benchmarks/samseg/synthetic/
#   bash benchmarks/samseg/compare.sh raw_clinical   the raw clinical studies, GT = their lesion-CHANGE mask on each
#                                                    FLAIR grid (full raw pipeline) -> benchmarks/samseg/raw_clinical/
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/samseg/fast_params.sh
MODE=${1:?"usage: compare.sh synthetic|raw_clinical"}
UAD=${UAD:-.venv/bin/uad}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/samseg/$MODE}
CASES=${CASES:-/tmp/uad_samseg_${MODE}_cases}

rm -rf "$CASES" && mkdir -p "$CASES"
case "$MODE" in
    synthetic)
        SYN=${SYN:-/tmp/uad_synth_bench}
        RESULTS=${RESULTS:-/tmp/uad_pl/samseg_template}
        PRE=--preprocessed
        mkdir -p "$CASES/ground_truth"
        for d in "$RESULTS"/sub-*/; do
            c=$(basename "$d")
            [ -f "$d/result.json" ] || continue
            for m in FLAIR T1 T2; do ln -sfn "$SYN/${c}_$m.nii.gz" "$CASES/"; done
            ln -sfn "$SYN/ground_truth/$c.nii.gz" "$CASES/ground_truth/"
        done ;;
    raw_clinical)
        RAWCASES=${RAWCASES:-/tmp/uad_raw_eval}
        RESULTS=${RESULTS:-/tmp/uad_pl/samseg_raw}
        PRE=
        [ -f "$RAWCASES/cases.json" ] || "$PY" benchmarks/tissue_outlier/build_raw_cases.py "$RAWCASES"
        for d in "$RESULTS"/*/; do
            c=$(basename "$d")
            [ -f "$d/result.json" ] && [ -d "$RAWCASES/$c" ] && ln -sfn "$RAWCASES/$c" "$CASES/$c"
        done ;;
    *) echo "compare.sh: expected synthetic or raw_clinical, received '$MODE'" >&2; exit 2 ;;
esac
[ -n "$(ls "$CASES" | grep -v ground_truth)" ] || { echo "compare.sh: SAMSEG has finished no case in $RESULTS" >&2; exit 1; }
"$UAD" evaluate samseg "$CASES" $PRE --results "$RESULTS" $SAMSEG_P --out "$OUT/samseg"
for det in tissue_outlier flair_threshold; do
    "$UAD" evaluate "$det" "$CASES" $PRE --out "$OUT/$det"
done
