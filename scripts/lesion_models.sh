#!/usr/bin/env bash
# The full three-head recipe for both bundled models, then every evaluation their cards report:
#   bash scripts/lesion_models.sh [DEVICE] [OUT]        DEVICE: cpu (default) or cuda; OUT: runs/lesions
# On a CUDA machine the two runs go one after the other on the GPU with batched data loading; on the CPU they
# run side by side, one thread each. Warm starts are the single-head IDRiD checkpoints (git show
# 958ccc7:checkpoints/<name>/), IDRiD's test split is used once, at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-cpu}
OUT=${2:-runs/lesions}
DATA=${DRDEMO_SHARED_DATA:-../shared/data}
G="$DATA/idrid/B. Disease Grading"
S="$DATA/idrid/A. Segmentation"
OVERLAP="$DATA/idrid/segmentation_grading_overlap.csv"
INIT=${INIT:-$OUT/init}
mkdir -p "$OUT" "$INIT"
for name in medmamba_t inception_v3; do
  [ -f "$INIT/$name/model.safetensors" ] || { mkdir -p "$INIT/$name"; for f in config.json model.safetensors; do
    git show "958ccc7:checkpoints/$name/$f" > "$INIT/$name/$f"; done; }
done
train() {  # model, extra flags
  python -m drdemo.train --model "$1" --data "$G" --out "$OUT/$1" --preset lesions --val-fraction 0.2 \
    --epochs 10 --init-from "$INIT/$1" --save-every-minutes 4 --device "$DEVICE" \
    $( [ -f "$OUT/$1/training/state.pt" ] && echo --resume ) "${@:2}"
}
if [ "$DEVICE" = cpu ]; then
  train medmamba_t --workers 0 --threads 1 & train inception_v3 --workers 0 --threads 1 & wait
else
  train medmamba_t --workers 4; train inception_v3 --workers 4
fi
for name in medmamba_t inception_v3; do
  ck="$OUT/$name"
  python -m drdemo.evaluate.heads --checkpoint "$ck" --data "$G" --part val --choose-thresholds
  case $name in medmamba_t) layers="backbone.layers.2.blocks.3 backbone.layers.3";;
                inception_v3) layers="backbone.Mixed_6e backbone.Mixed_7c";; esac
  python -m drdemo.evaluate --checkpoint "$ck" --data "$S" --cam --cam-overlap "$OVERLAP" --cam-photos copies \
    --cam-limit 20 --road-limit 0 --cam-layers $layers --out "$OUT/eval/$name/camselect" --choose-cam-default \
    --device "$DEVICE"
  python -m drdemo.evaluate --checkpoint "$ck" --data "$S" --cam --cam-overlap "$OVERLAP" --cam-photos others \
    --road-limit 0 --out "$OUT/eval/$name/cam" --record --device "$DEVICE"
  python -m drdemo.evaluate.heads --checkpoint "$ck" --data "$G" --part test \
    --other-cameras "$DATA/drive" "$DATA/chase_db1"
done
