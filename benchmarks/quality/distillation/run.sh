#!/usr/bin/env bash
# Weak-to-strong evidence (issue 21): SAMSEG's masks become pseudo-labels, `segresnet` learns from them, and the
# student is evaluated on held-out cases next to its teacher and flair_threshold, all through the CLI.
#   bash benchmarks/quality/distillation/run.sh          (from the repository root; resumable)
# TRAIN: the synthetic subjects the student learns from (their SAMSEG pseudo-labels); every other case is held out.
set -euo pipefail
cd "$(dirname "$0")/../../.."
UAD=${UAD:-.venv/bin/uad}
PY=${PY:-.venv/bin/python}
OUT=benchmarks/quality/distillation
WORK=${WORK:-/tmp/uad_pl}
SYN=${SYN:-/tmp/uad_synth_bench}
TRAIN=${TRAIN:-"sub-000 sub-001"}
LIMIT=${LIMIT:-}          # pseudo-label only the first N unlabelled cases (by name): the ones SAMSEG finished
TEACHER=${TEACHER:-1}     # 0: skip step (c), e.g. while another `uad pseudo-label` run fills the same folders
source benchmarks/samseg/fast_params.sh  # SAMSEG_P: the `fast` settings

# (a) 10 synthetic subjects (template space) with real MSLUB lesion masks, as the other quality benchmarks build them
[ -f "$SYN/ground_truth/sub-009.nii.gz" ] || "$UAD" sample-data "$SYN" --n-healthy 0 --n-lesion 10 \
    --geometry template --lesion-masks ../shared/data/mslub/lesion_masks_mni
# (b) the unlabelled datastore: FLAIR, T1, T2 of patient 26 and of the synthetic subjects, no ground truth
mkdir -p "$WORK/template"
for f in "$SYN"/sub-00?_{FLAIR,T1,T2}.nii.gz; do ln -sfn "$f" "$WORK/template/"; done
for m in FLAIR T1 T2; do ln -sfn "$PWD/../shared/data/mslub/patient26/$m.nii.gz" "$WORK/template/patient26_$m.nii.gz"; done
# (c) the teacher: SAMSEG pseudo-labels (labels/samseg/ in the datastore; its outputs in samseg_template/)
[ "$TEACHER" = 0 ] || "$UAD" pseudo-label samseg "$WORK/template" --preprocessed --out "$WORK/samseg_template" \
    $SAMSEG_P ${LIMIT:+--limit "$LIMIT"}
# (d) the student, trained on TRAIN's pseudo-labels only
holdout=$(cd "$WORK/template" && ls *_FLAIR.nii.gz | sed 's/_FLAIR.nii.gz//' | grep -vxF -f <(tr ' ' '\n' <<<"$TRAIN") \
    | paste -sd, -)
[ -f "$WORK/weights/segresnet.pt" ] || "$UAD" train segresnet --data "$WORK/template" --config cpu \
    --out "$WORK/weights" --set preprocessed=true --set max_minutes=10 --set "holdout=$holdout"
mkdir -p "$OUT"
cp "$WORK/weights/segresnet.json" "$OUT/segresnet_card.json"
cp "$WORK/weights/segresnet_loss.png" "$OUT/segresnet_loss.png" 2>/dev/null || true
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
export UAD_WEIGHTS_DIR="$WORK/weights"
for set in heldout_syn p26 heldout_samseg; do
    [ -n "$(ls "$WORK/$set" | grep -v ground_truth)" ] || continue
    for det in segresnet flair_threshold; do
        "$UAD" evaluate "$det" "$WORK/$set" --preprocessed --save-maps --out "$WORK/eval/${set}_$det"
    done
    "$UAD" evaluate samseg "$WORK/$set" --preprocessed --results "$WORK/samseg_template" $SAMSEG_P \
        --out "$WORK/eval/${set}_samseg" 2>/dev/null || echo "samseg: no stored result for every case of $set"
done
"$PY" "$OUT/report.py" --work "$WORK" --out "$OUT" --train "$TRAIN"
