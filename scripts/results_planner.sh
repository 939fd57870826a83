#!/usr/bin/env bash
# The planner section of docs/RESULTS.md (issues #12, #25): `nfedge plan` on the main job's trained models (cnn-s and the
# ConvT, UNetT, UIP generators of an `nfedge run` folder), certified 95/95 (59 search + 59 fresh chips), flip and
# stuck-at faults, floors CA - 1, CA - 2 and CA - 5, every option of nfedge.analysis.options, fixed voltages 0.875 and
# 0.833 V/Vmin (scripts/results_planner.py; --retrained CKPT... adds retrained bases from scripts/robust_bases.py).
# Plans already written are kept, so an interrupted run resumes.
#   Usage: bash scripts/results_planner.sh [RUN_DIR] [OUT_DIR] [options of scripts/results_planner.py]
#   (defaults runs/default and runs/results-planner; e.g. --test-limit 2000 for a reduced run)
# A RUN_DIR that holds no run yet gets the main job first (`nfedge run`, about 20 minutes on 2 cores).
# Wall time on 2 cores (measured, docs/RESULTS.md planner section): 93 min with --test-limit 2000 --plot-step 0 and
# two retrained bases (AMD EPYC).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/default}
OUT=${2:-runs/results-planner}
shift $(( $# < 2 ? $# : 2 ))
NF=${NF:-.venv/bin/nfedge}
[ -f "$RUN/run.json" ] || $NF run --out "$RUN"
mkdir -p "$OUT"
start=$(date +%s)
.venv/bin/python scripts/results_planner.py --run "$RUN" --out "$OUT" "$@"
echo "results_planner: $(( $(date +%s) - start )) s; section in $OUT/planner.md"
