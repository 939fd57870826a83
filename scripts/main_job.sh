#!/usr/bin/env bash
# The main job on the built-in default (Fashion-MNIST, cnn-s, 8 bits). Grows with the pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/nfedge run --out runs/default "$@"
