#!/usr/bin/env bash
# Installs the real OpenTelemetry JS SDK used by agent/tests/node_sdk_peer.rs, idempotently,
# into <repo>/.cache/agent/npm (git-ignored). Fails loudly; nothing is skipped.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
NPM_DIR="$REPO/.cache/agent/npm"
die() { echo "agent/tests/peers/install.sh: ERROR: $*" >&2; exit 1; }
command -v node >/dev/null 2>&1 || die "node not found (need Node.js >= 18)"
command -v npm >/dev/null 2>&1 || die "npm not found"
PKG="$HERE/package.json"
STAMP="$NPM_DIR/.package.sha256"
WANT="$(sha256sum "$PKG" | cut -d' ' -f1)"
if [ ! -d "$NPM_DIR/node_modules/@opentelemetry/sdk-metrics" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "installing OpenTelemetry JS into $NPM_DIR ..." >&2
  rm -rf "$NPM_DIR"
  mkdir -p "$NPM_DIR"
  cp "$PKG" "$NPM_DIR/package.json"
  (cd "$NPM_DIR" && npm install --no-audit --no-fund --silent) || die "npm install failed"
  echo "$WANT" > "$STAMP"
fi
cp "$HERE"/*.mjs "$NPM_DIR/"
echo "$NPM_DIR"
