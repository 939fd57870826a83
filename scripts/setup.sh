#!/usr/bin/env bash
# Set up a fresh machine for nfedge, idempotently (a second run takes seconds):
#   1. Debian packages: the Fashion-MNIST dataset, QEMU and the ARM cross toolchains;
#   2. a virtual environment in .venv with nfedge installed editable, plus its test tools and Ray (the optional
#      extra for --executor ray, whose tests CI runs).
# Needs root (or sudo) only when a Debian package is missing. Network: Debian archives and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

# mount: mount/umount for the full-disk tests (tests/test_os_faults.py); Debian ships them in their own package
# (built from util-linux, but util-linux does not depend on it).
APT_PACKAGES=(dataset-fashion-mnist cmake qemu-system-arm qemu-user-static gcc-arm-none-eabi g++ util-linux mount
              libnewlib-arm-none-eabi g++-aarch64-linux-gnu)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Reinstall only when the dependency list changed (stamp = hash of pyproject.toml).
stamp=.venv/.nfedge-setup-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c "import nfedge, tvm, torch, ray" 2>/dev/null; then
  echo "[setup] installing Python packages into .venv"
  # torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  # ray: the optional extra for --executor ray; CI runs its tests (tests/test_executor.py), so the venv has it
  .venv/bin/python -m pip install -q -e ".[test,ray]"
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import nfedge, torch, tvm; print("nfedge", nfedge.__version__, "torch", torch.__version__, "tvm", tvm.__version__)')"
