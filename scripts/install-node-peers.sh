#!/usr/bin/env bash
# Installs the Node.js DICOM peers the tests use into the cache (never into the repo): dcmjs-dimse, an independent
# DIMSE stack, plays the modality that sends MPPS N-CREATE/N-SET (tests/peers/modality.js).
# Idempotent: a stamp holding the pinned package list skips the install when nothing changed.
set -euo pipefail
CACHE="${PACSFLOW_CACHE:-$HOME/.cache/pacsflow}"
DIR="$CACHE/node"
# Bump PACKAGES when a pin changes so that existing caches are reinstalled.
PACKAGES="dcmjs-dimse@0.3.3"
STAMP="$DIR/.installed-stamp"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PACKAGES" ] && [ -d "$DIR/node_modules/dcmjs-dimse" ]; then exit 0; fi
command -v npm >/dev/null || { echo "npm is not installed (Debian: apt-get install nodejs npm)" >&2; exit 1; }
mkdir -p "$DIR"
[ -f "$DIR/package.json" ] || echo '{"name": "pacsflow-node-peers", "private": true}' > "$DIR/package.json"
# shellcheck disable=SC2086  # PACKAGES is a list of package specifiers
npm install --prefix "$DIR" --no-audit --no-fund --save-exact --loglevel=error $PACKAGES
echo "$PACKAGES" > "$STAMP"
