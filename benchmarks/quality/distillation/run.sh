#!/usr/bin/env bash
# Weak-to-strong evidence (issue 21): SAMSEG's masks become pseudo-labels, `segresnet` learns from them, and the
# student is evaluated on held-out cases next to its teacher and flair_threshold, all through the CLI.
#   bash benchmarks/quality/distillation/run.sh          (from the repository root; resumable)
# TRAIN: the synthetic subjects the student learns from (their SAMSEG pseudo-labels); every other case is held out.
set -euo pipefail
cd "$(dirname "$0")/../../.."
UAD=${UAD:-.venv/bin/uad}
PY=${PY:-.venv/bin/python}
WORK=${WORK:-/tmp/uad_pl}
SYN=${SYN:-/tmp/uad_synth_bench}
TRAIN=${TRAIN:-"sub-000 sub-001"}
LIMIT=${LIMIT:-}          # pseudo-label only the first N unlabelled cases (by name): the ones SAMSEG finished
TEACHER=${TEACHER:-1}     # 0: skip step (c), e.g. while another `uad pseudo-label` run fills the same folders
# real scans: the raw clinical studies (../shared/data/raw_clinical, full raw pipeline) as case folders in
# $WORK/raw; RAW_TRAIN: those the student learns from too (their SAMSEG pseudo-labels); the others are held out
RAW_TRAIN=${RAW_TRAIN:-}
RAWCASES=${RAWCASES:-/tmp/uad_raw_eval}   # the same studies with their lesion-change GT (build_raw_cases.py)
WEIGHTS=${WEIGHTS:-$WORK/weights}         # an existing student there is evaluated, not trained again
EVAL=${EVAL:-$WORK/eval}
OUT=${OUT:-benchmarks/quality/distillation}
STEPS=${STEPS:-}          # a fixed number of steps instead of 10 minutes (a shared machine's minutes vary)
source benchmarks/samseg/fast_params.sh  # SAMSEG_P: the `fast` settings

# (a) 10 synthetic subjects (template space) with real MSLUB lesion masks, as the other quality benchmarks build them
[ -f "$SYN/ground_truth/sub-009.nii.gz" ] || "$UAD" sample-data "$SYN" --n-healthy 0 --n-lesion 10 \
    --geometry template --lesion-masks ../shared/data/mslub/lesion_masks_mni
# (b) the unlabelled datastore: FLAIR, T1, T2 of patient 26 and of the synthetic subjects, no ground truth
mkdir -p "$WORK/template"
for f in "$SYN"/sub-00?_{FLAIR,T1,T2}.nii.gz; do ln -sfn "$f" "$WORK/template/"; done
for m in FLAIR T1 T2; do ln -sfn "$PWD/../shared/data/mslub/patient26/$m.nii.gz" "$WORK/template/patient26_$m.nii.gz"; done
[ -f "$RAWCASES/cases.json" ] || "$PY" benchmarks/tissue_outlier/build_raw_cases.py "$RAWCASES"
for d in "$RAWCASES"/patient*/; do  # the images only: the GT stays out of the unlabelled folder
    c=$(basename "$d"); mkdir -p "$WORK/raw/$c"
    for m in FLAIR T1 T2; do
        [ ! -e "$d/$m.nii.gz" ] || ln -sfn "$(readlink -f "$d/$m.nii.gz")" "$WORK/raw/$c/$m.nii.gz"
    done
done
# (c) the teacher: SAMSEG pseudo-labels (labels/samseg/ in the datastore and in raw/; its outputs in
# samseg_template/ and samseg_raw/)
[ "$TEACHER" = 0 ] || "$UAD" pseudo-label samseg "$WORK/template" --preprocessed --out "$WORK/samseg_template" \
    $SAMSEG_P ${LIMIT:+--limit "$LIMIT"}
[ "$TEACHER" = 0 ] || "$UAD" pseudo-label samseg "$WORK/raw" --out "$WORK/samseg_raw" $SAMSEG_P
# (d) the student, trained on TRAIN's pseudo-labels only
holdout=$(cd "$WORK/template" && ls *_FLAIR.nii.gz | sed 's/_FLAIR.nii.gz//' | grep -vxF -f <(tr ' ' '\n' <<<"$TRAIN") \
    | paste -sd, -)
raw_holdout=$(ls "$WORK/raw" | grep -v '^labels$' | grep -vxF -f <(tr ' ' '\n' <<<"$RAW_TRAIN") | paste -sd, -)
budget="--set max_minutes=10"
[ -z "$STEPS" ] || budget="--set steps=$STEPS --set max_minutes=120"
# template space is told per case (the template grid), so raw and template-space folders train together
[ -f "$WEIGHTS/segresnet.pt" ] || "$UAD" train segresnet --data "$WORK/template" ${RAW_TRAIN:+--data "$WORK/raw"} \
    --config cpu --out "$WEIGHTS" $budget --set "holdout=$holdout${RAW_TRAIN:+,$raw_holdout}"
mkdir -p "$OUT"
cp "$WEIGHTS/segresnet.json" "$OUT/segresnet_card.json"
cp "$WEIGHTS/segresnet_loss.png" "$OUT/segresnet_loss.png" 2>/dev/null || true
# (e) held-out evaluation folders with ground truth: synthetic subjects not in TRAIN, and patient 26
rm -rf "$WORK/heldout_syn" && mkdir -p "$WORK/heldout_syn/ground_truth"
for c in $(tr ',' ' ' <<<"$holdout"); do
    [ "$c" = patient26 ] && continue
    for m in FLAIR T1 T2; do ln -sfn "$SYN/${c}_$m.nii.gz" "$WORK/heldout_syn/"; done
    ln -sfn "$SYN/ground_truth/$c.nii.gz" "$WORK/heldout_syn/ground_truth/"
done
mkdir -p "$WORK/p26" && ln -sfn "$PWD/../shared/data/mslub/patient26" "$WORK/p26/patient26"
# SAMSEG's held-out cases: those it finished (its maps from (c), scored with --results)
rm -rf "$WORK/heldout_samseg" && mkdir -p "$WORK/heldout_samseg/ground_truth"
for d in "$WORK"/samseg_template/sub-*/; do
    c=$(basename "$d"); grep -qxF "$c" <(tr ',' '\n' <<<"$holdout") || continue
    [ -f "$d/result.json" ] || continue
    for m in FLAIR T1 T2; do ln -sfn "$SYN/${c}_$m.nii.gz" "$WORK/heldout_samseg/"; done
    ln -sfn "$SYN/ground_truth/$c.nii.gz" "$WORK/heldout_samseg/ground_truth/"
done
# held-out raw studies SAMSEG finished, with their lesion-change GT (full raw pipeline: no --preprocessed)
rm -rf "$WORK/heldout_raw" && mkdir -p "$WORK/heldout_raw"
for c in $(tr ',' ' ' <<<"$raw_holdout"); do
    [ -f "$WORK/samseg_raw/$c/result.json" ] && ln -sfn "$RAWCASES/$c" "$WORK/heldout_raw/$c"
done
export UAD_WEIGHTS_DIR="$WEIGHTS"
for set in heldout_syn p26 heldout_samseg heldout_raw; do
    [ -n "$(ls "$WORK/$set" | grep -v ground_truth)" ] || continue
    pre=--preprocessed; results="$WORK/samseg_template"
    [ "$set" != heldout_raw ] || { pre=; results="$WORK/samseg_raw"; }
    for det in segresnet flair_threshold; do
        "$UAD" evaluate "$det" "$WORK/$set" $pre --save-maps --out "$EVAL/${set}_$det"
    done
    "$UAD" evaluate samseg "$WORK/$set" $pre --results "$results" $SAMSEG_P \
        --out "$EVAL/${set}_samseg" 2>/dev/null || echo "samseg: no stored result for every case of $set"
done
"$PY" benchmarks/quality/distillation/report.py --work "$WORK" --eval "$EVAL" --out "$OUT" --train "$TRAIN" \
    --raw-train "$RAW_TRAIN"
