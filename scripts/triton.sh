#!/usr/bin/env bash
# Runs the real tritonserver bundled in the nvidia-pytriton wheel (.venv-triton, see scripts/triton-venv.sh) in the
# foreground on loopback, serving a rendered model repository (pacsflow model-repository render --target cpu-python).
#
# usage: scripts/triton.sh MODEL_REPOSITORY [extra tritonserver options]
# env:   TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT   (default 8000 / 8001 / 8002)
#        TRITON_MODEL_CONTROL_MODE  poll (default: picks up re-rendered versions) or explicit (load everything
#                                   at start, then only through the repository API: what the tests use)
#        TRITON_SERVER_DIR          where the backend tree is laid out (default build/triton/server)
#        TRITON_VENV                Triton's venv (default .venv-triton)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REPO="$(realpath "${1:?usage: scripts/triton.sh MODEL_REPOSITORY [tritonserver options]}")"
shift
VENV="${TRITON_VENV:-$ROOT/.venv-triton}"
SERVER="${TRITON_SERVER_DIR:-$ROOT/build/triton/server}"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then echo "no $PY; run: make triton-venv" >&2; exit 1; fi
read -r SITE PYLIB PYVER < <("$PY" -c 'import sys, sysconfig
print(sysconfig.get_paths()["purelib"], sysconfig.get_config_var("LIBDIR"), "%d.%d" % sys.version_info[:2])')
DIST="$SITE/pytriton/tritonserver"

# Server tree: Triton wants <backend-directory>/python/{libtriton_python.so, triton_python_backend_stub, utils};
# the wheel ships one stub per Python version, and the stub must match the interpreter whose packages it imports.
mkdir -p "$SERVER/backends/python"
ln -sfn "$DIST/backends/python/libtriton_python.so" "$SERVER/backends/python/libtriton_python.so"
ln -sfn "$DIST/backends/python/triton_python_backend_utils.py" "$SERVER/backends/python/triton_python_backend_utils.py"
ln -sfn "$DIST/python_backend_stubs/$PYVER/triton_python_backend_stub" "$SERVER/backends/python/triton_python_backend_stub"

# The stub links libpython3.X.so: without the interpreter's own lib dir first it loads Debian's and breaks.
export LD_LIBRARY_PATH="$PYLIB:$SITE/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The stub embeds that interpreter, which finds its prefix (and so the venv's site-packages) by looking up
# "python" on PATH, as pytriton arranges it.
export PATH="$VENV/bin:$PATH"

MODE="${TRITON_MODEL_CONTROL_MODE:-poll}"
case "$MODE" in
  poll) CONTROL=(--model-control-mode=poll --repository-poll-secs=5) ;;
  explicit) CONTROL=(--model-control-mode=explicit --load-model=*) ;;
  *) echo "TRITON_MODEL_CONTROL_MODE must be poll or explicit, not $MODE" >&2; exit 1 ;;
esac

exec "$DIST/bin/tritonserver" \
  --model-repository="$REPO" \
  --backend-directory="$SERVER/backends" \
  "${CONTROL[@]}" \
  --http-address=127.0.0.1 --http-port="${TRITON_HTTP_PORT:-8000}" \
  --grpc-address=127.0.0.1 --grpc-port="${TRITON_GRPC_PORT:-8001}" \
  --metrics-address=127.0.0.1 --metrics-port="${TRITON_METRICS_PORT:-8002}" \
  --disable-auto-complete-config \
  --exit-on-error=false --strict-readiness=false \
  --backend-config=python,shm-default-byte-size=33554432 \
  "$@"
