#!/usr/bin/env bash
# Runs every collector-config check. Installs its tools idempotently into <repo>/.cache/collector-config/
# (a Python venv with kubernetes-validate + pytest, an npm folder with kubernetes-models), then runs pytest.
# Fails loudly when a tool is missing or cannot be installed: nothing is ever skipped.
#
# Environment:
#   LOOPWATCH_BIN_DIR   where loopwatch-agent and example-service are (default <repo>/target/debug)
#   PYTEST_ARGS         extra pytest arguments (e.g. "-k manifests")
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="$REPO/.cache/collector-config"
VENV="$CACHE/venv"
NPM_DIR="$CACHE/npm"
export PYTHONDONTWRITEBYTECODE=1
export LOOPWATCH_BIN_DIR="${LOOPWATCH_BIN_DIR:-$REPO/target/debug}"

die() { echo "collector-config/tests/run.sh: ERROR: $*" >&2; exit 1; }

mkdir -p "$CACHE"

# --- Prometheus (Debian package; the test starts its own instance on 127.0.0.1) ---
if ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing prometheus (apt)..."
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
      || die "apt-get install prometheus failed"
  else
    die "prometheus not found and cannot be installed (need root + apt-get)"
  fi
fi
command -v prometheus >/dev/null 2>&1 || die "prometheus still not on PATH"

# --- Python venv: kubernetes-validate, pytest, PyYAML ---
command -v python3 >/dev/null 2>&1 || die "python3 not found"
REQ="$HERE/requirements.txt"
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "installing python tools into $VENV ..."
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ" || die "pip install failed"
  echo "$WANT" > "$STAMP"
fi
[ -x "$VENV/bin/kubernetes-validate" ] || die "kubernetes-validate missing from $VENV"
[ -x "$VENV/bin/pytest" ] || die "pytest missing from $VENV"

# --- npm folder: kubernetes-models, @kubernetes-models/keda, yaml ---
command -v node >/dev/null 2>&1 || die "node not found"
command -v npm >/dev/null 2>&1 || die "npm not found"
PKG="$HERE/package.json"
NSTAMP="$NPM_DIR/.package.sha256"
NWANT="$(sha256sum "$PKG" | cut -d' ' -f1)"
if [ ! -d "$NPM_DIR/node_modules/@kubernetes-models/keda" ] || [ "$(cat "$NSTAMP" 2>/dev/null)" != "$NWANT" ]; then
  echo "installing node packages into $NPM_DIR ..."
  rm -rf "$NPM_DIR"
  mkdir -p "$NPM_DIR"
  cp "$PKG" "$NPM_DIR/package.json"
  (cd "$NPM_DIR" && npm install --no-audit --no-fund --loglevel=error) || die "npm install failed"
  echo "$NWANT" > "$NSTAMP"
fi
for m in kubernetes-models @kubernetes-models/keda yaml; do
  [ -d "$NPM_DIR/node_modules/$m" ] || die "node module $m missing from $NPM_DIR"
done
export LOOPWATCH_NODE_MODULES="$NPM_DIR/node_modules"
export LOOPWATCH_KUBERNETES_VALIDATE="$VENV/bin/kubernetes-validate"

# --- binaries (built by the workspace, not by this script) ---
for b in loopwatch-agent example-service; do
  [ -x "$LOOPWATCH_BIN_DIR/$b" ] || die "$LOOPWATCH_BIN_DIR/$b not found: build the workspace first (cargo build -p loopwatch-agent -p loopwatch-examples) or set LOOPWATCH_BIN_DIR"
done

cd "$HERE"
# shellcheck disable=SC2086
exec "$VENV/bin/python" -m pytest -p no:cacheprovider ${PYTEST_ARGS:-} "$HERE"
