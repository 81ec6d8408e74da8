#!/usr/bin/env bash
# Builds Triton's own virtual environment (.venv-triton): the nvidia-pytriton wheel (which bundles a real
# tritonserver 2.51 binary and its python backend) plus ONNX Runtime for the CPU python-backend model.
# pytriton pins numpy<2, which is why this is not the router's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TRITON_VENV:-.venv-triton}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.installed-stamp"
# Bump REQS when the pins change so that existing venvs are rebuilt.
REQS="nvidia-pytriton==0.7.0 onnxruntime>=1.18,<1.23 numpy<2"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$REQS" ]; then exit 0; fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# shellcheck disable=SC2086  # REQS is a list of requirement specifiers
"$VENV/bin/pip" install -q $REQS
echo "$REQS" > "$STAMP"
