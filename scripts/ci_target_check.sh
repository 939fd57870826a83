#!/usr/bin/env bash
# CI comparison job: a toy model built for arm-cortex in both arithmetic modes, run under QEMU at two voltages on
# a few chips and samples. `nfedge faultrun` exits non-zero when host and target disagree:
#   weight-only (float32 layers): fewer than 99% identical predictions;
#   integer (int8/int32, docs/INTEGER.md): any output integer that differs from the host integer reference.
set -euo pipefail
cd "$(dirname "$0")/.."
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
N=".venv/bin/nfedge"
$N train-base --model cnn-xs --epochs 1 --train-limit 3000 --test-limit 500 --seed 0 --out "$W/base"
$N quantize --checkpoint "$W/base/base.pt" --bits 8 --out "$W/img"
$N train --base "$W/base/base.pt" --image "$W/img" --generator ConvT --max-steps 20 --n-perturbed 4 --batch-size 32 --out "$W/gen"
$N build --target arm-cortex --bits 8 --mode weight-only --base "$W/base/base.pt" --image "$W/img" --generator "$W/gen/generator.pt" --out "$W/bundle"
$N faultrun --bundle "$W/bundle" --voltage 0.875 --voltage 0.833 --chips 3 --samples 16 --min-agreement 0.99
$N build --target arm-cortex --bits 8 --mode integer --calib-images 256 --base "$W/base/base.pt" --image "$W/img" \
  --generator "$W/gen/generator.pt" --out "$W/bundle-int"
$N faultrun --bundle "$W/bundle-int" --voltage 0.875 --voltage 0.833 --chips 3 --samples 16 --min-agreement 1.0
