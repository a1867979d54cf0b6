#!/usr/bin/env bash
# Installs the real OpenTelemetry JS peers, idempotently, into <repo>/.cache/agent/ (git-ignored)
# and prints the folder: the SDK used by agent/tests/node_*.rs (no argument) or, with
# `zerocode`, an express service with @opentelemetry/auto-instrumentations-node. Fails
# loudly; nothing is skipped.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
die() { echo "agent/tests/peers/install.sh: ERROR: $*" >&2; exit 1; }
command -v node >/dev/null 2>&1 || die "node not found (need Node.js >= 18)"
command -v npm >/dev/null 2>&1 || die "npm not found"
case "${1:-sdk}" in
  sdk) SRC="$HERE"; NPM_DIR="$REPO/.cache/agent/npm"; PROBE="@opentelemetry/sdk-metrics"; FILES=("$HERE"/*.mjs) ;;
  zerocode) SRC="$HERE/zerocode"; NPM_DIR="$REPO/.cache/agent/npm-zerocode"; PROBE="@opentelemetry/auto-instrumentations-node"; FILES=("$HERE"/zerocode/*.js) ;;
  *) die "unknown peer ${1} (expected sdk or zerocode)" ;;
esac
PKG="$SRC/package.json"
STAMP="$NPM_DIR/.package.sha256"
WANT="$(sha256sum "$PKG" | cut -d' ' -f1)"
if [ ! -d "$NPM_DIR/node_modules/$PROBE" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "installing $PROBE into $NPM_DIR ..." >&2
  rm -rf "$NPM_DIR"
  mkdir -p "$NPM_DIR"
  cp "$PKG" "$NPM_DIR/package.json"
  (cd "$NPM_DIR" && npm install --no-audit --no-fund --silent) || die "npm install failed"
  echo "$WANT" > "$STAMP"
fi
cp "${FILES[@]}" "$NPM_DIR/"
echo "$NPM_DIR"
