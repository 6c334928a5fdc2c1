#!/usr/bin/env bash
# The reported test figures: detect with the shipped model on the 14 MoNuSeg test images (1000x1000 at 40x,
# no µm/px in the files, so --mpp 0.25 is given) and evaluate against their XML annotations.
#   [MODEL=FILE] [READ_MPP=0.5] scripts/evaluate_monuseg_test.sh [OUT]
# The test images are used for nothing else: no training, tuning or checkpoint selection.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${WSINUCLEI_SHARED:-../shared}
TEST="$SHARED/data/monuseg/test"
OUT=${1:-out/monuseg_test}
MODEL_ARGS=()
[ -n "${MODEL:-}" ] && MODEL_ARGS=(--model "$MODEL")
# READ_MPP=0.5: read the 40x images at 20x (the model must serve 0.5 µm/px): accuracy at a 20x slide's resolution
[ -n "${READ_MPP:-}" ] && MODEL_ARGS+=(--read-mpp "$READ_MPP")
.venv/bin/wsinuclei detect "$TEST"/*.tif --out "$OUT/pred" --mpp 0.25 --no-tissue-mask --quiet "${MODEL_ARGS[@]}"
.venv/bin/wsinuclei evaluate --pred "$OUT/pred" --truth "$TEST" --out "$OUT/report" --mpp 0.25
