#!/usr/bin/env bash
# GPU against CPU on the same study: DALI preprocessing, ONNX Runtime and Triton (bench/gpu.py prints the ratios).
# Without an NVIDIA GPU (no nvidia-smi, or it lists none) it says so and exits 0; run it whenever a GPU machine is
# lent. Extra arguments go to bench/gpu.py (--slices, --repeat; --cpu-dry-run checks the plumbing without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
dry_run=0
for arg in "$@"; do [ "$arg" = "--cpu-dry-run" ] && dry_run=1; done
if [ "$dry_run" = 0 ]; then
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "bench/gpu.sh: no NVIDIA GPU on this machine (nvidia-smi not found): GPU comparisons skipped"
    exit 0
  fi
  gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
  if [ "${gpus:-0}" = 0 ]; then
    echo "bench/gpu.sh: no NVIDIA GPU on this machine (nvidia-smi lists none): GPU comparisons skipped"
    exit 0
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/GPU: /'
fi
exec "$PY" -m bench.gpu "$@"
