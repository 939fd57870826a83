#!/usr/bin/env bash
# Reproduces docs/RESULTS.md: Fashion-MNIST, the default cnn-s base at 8 bits, three generators trained with
# EOPM, then host-simulated evaluation on the full 10,000-image test set over 10 evaluation chips, flip and
# stuck-at faults, at the ~1% and ~5% BER table voltages, and flip faults also at 0.854 V/Vmin (an interpolated
# point, BER 0.38%, where the unprotected model loses more than 15 points). Every step is skipped when its output exists, so an
# interrupted run resumes. Usage: bash scripts/results_fmnist.sh [OUT_DIR] (default runs/results).
# Wall time on the 2-core development machine: recorded in docs/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/results}
NF=${NF:-.venv/bin/nfedge}
EPOCHS=${EPOCHS:-4}            # EOPM epochs for ConvT and UNetT (937 steps of batch 64 each)
UIP_EPOCHS=${UIP_EPOCHS:-1}    # UIP is the baseline: one trainable tensor, it plateaus early
TRAIN_V=${TRAIN_V:-0.854}      # training voltage in V/Vmin (BER 0.38% from calibration/sram-14nm.toml)
mkdir -p "$OUT"

[ -f "$OUT/base/base.pt" ] || $NF train-base --model cnn-s --epochs 4 --seed 0 --out "$OUT/base"
[ -f "$OUT/img8/manifest.json" ] || $NF quantize --checkpoint "$OUT/base/base.pt" --bits 8 --out "$OUT/img8"

train() {  # $1 generator, $2 epochs; one thread each so two trainings share the 2 cores
  [ -f "$OUT/gen-$1/generator.pt" ] && return 0
  OMP_NUM_THREADS=1 $NF train --base "$OUT/base/base.pt" --image "$OUT/img8" --generator "$1" --voltage "$TRAIN_V" \
    --n-perturbed 5 --epochs "$2" --seed 0 --out "$OUT/gen-$1" 2> "$OUT/train-$1.log"
}
train UNetT "$EPOCHS" & p1=$!
train ConvT "$EPOCHS" & p2=$!
train UIP "$UIP_EPOCHS" & p3=$!
wait $p1 && wait $p2 && wait $p3

evaluate() {  # $1 output name, $2 fault model, $3 generators (space-separated), then the voltages (V/Vmin)
  local name=$1 fault=$2 gens=$3; shift 3
  [ -f "$OUT/$name.json" ] || $NF evaluate --base "$OUT/base/base.pt" --image "$OUT/img8" \
    $(printf -- "--generator $OUT/gen-%s/generator.pt " $gens) $(printf -- "--voltage %s " "$@") --chips 10 \
    --fault "$fault" --out "$OUT/$name.json"
}
# 0.854: where the bar is judged besides 1% (the unprotected model loses more than 15 points there)
evaluate evaluate-flip flip "ConvT UNetT UIP" 0.854 0.833 0.792
evaluate evaluate-stuck-at stuck-at "ConvT UNetT UIP" 0.833 0.792

# UNetT's loss was still falling after 4 epochs: 4 more from its weights (seed 1: fresh chips and order)
[ -f "$OUT/gen-UNetT-8ep/generator.pt" ] || OMP_NUM_THREADS=1 $NF train --base "$OUT/base/base.pt" --image "$OUT/img8" \
  --generator UNetT --voltage "$TRAIN_V" --n-perturbed 5 --epochs 4 --seed 1 --init-from "$OUT/gen-UNetT/generator.pt" \
  --out "$OUT/gen-UNetT-8ep" 2> "$OUT/train-UNetT-8ep.log"
evaluate evaluate-flip-UNetT-8ep flip UNetT-8ep 0.854 0.833 0.792
evaluate evaluate-stuck-at-UNetT-8ep stuck-at UNetT-8ep 0.833 0.792

for g in ConvT UNetT UIP; do
  for v in 0.854 0.833 0.792; do
    [ -f "$OUT/energy-$g-$v.json" ] || $NF energy --base cnn-s --generator "$g" --input 1x32x32 --voltage "$v" --json \
      > "$OUT/energy-$g-$v.json.tmp" && mv "$OUT/energy-$g-$v.json.tmp" "$OUT/energy-$g-$v.json"
  done
done
echo "results in $OUT"
