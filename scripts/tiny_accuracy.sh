#!/usr/bin/env bash
# Issue #23 item 5: the MLPerf Tiny models (nfedge.models.tiny) trained on Fashion-MNIST (1x32x32: the padded
# 28x28 images, one channel), then clean accuracy on the full test set in weight-only mode (the paper's float
# layers on the 8-bit codes) and in integer mode (PTQ: calibrated on 512 seeded training images), side by side.
# Usage: bash scripts/tiny_accuracy.sh [OUT_DIR] [EPOCHS] [MODEL...]
#        (default runs/tiny, 3 epochs, all three models; seed 0 throughout)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/tiny}
EPOCHS=${2:-3}
shift $(( $# > 2 ? 2 : $# ))
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(resnet8 ds-cnn mobilenet-v1-0.25)
N=.venv/bin/nfedge
for m in "${MODELS[@]}"; do
  [ -f "$OUT/$m/base.pt" ] || $N train-base --model "$m" --epochs "$EPOCHS" --seed 0 --out "$OUT/$m"
  [ -f "$OUT/$m-img/manifest.json" ] || $N quantize --checkpoint "$OUT/$m/base.pt" --bits 8 --out "$OUT/$m-img"
  for mode in weight-only integer; do
    $N evaluate --base "$OUT/$m/base.pt" --image "$OUT/$m-img" --ber 0 --chips 1 --mode "$mode" \
      --json --out "$OUT/$m-$mode.json" > /dev/null
  done
  .venv/bin/python - "$OUT" "$m" <<'PY'
import json, sys
out, m = sys.argv[1:]
ca = {mode: json.load(open(f"{out}/{m}-{mode}.json"))["clean"]["CA"] for mode in ("weight-only", "integer")}
print(f"{m}: clean accuracy weight-only {ca['weight-only']:.2f}%, integer {ca['integer']:.2f}%, "
      f"gap {ca['weight-only'] - ca['integer']:+.2f} points")
PY
done
