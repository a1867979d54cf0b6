#!/usr/bin/env bash
# Rotel (PyPI `rotel`): a real OTLP collector (gRPC + HTTP) the agent's upstream exporter is
# tested against. Installed idempotently into <repo>/.cache/rotel (venv); prints nothing else.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$REPO/.cache/rotel"
BIN="$VENV/lib/python3.11/site-packages/rotel/rotel-agent"
if ! ls "$VENV"/lib/python3*/site-packages/rotel/rotel-agent >/dev/null 2>&1; then
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
  python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; rm -rf "$VENV"; python3 -m venv "$VENV"; }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check rotel || { echo "30-rotel: pip install rotel failed" >&2; exit 1; }
fi
BIN="$(ls "$VENV"/lib/python3*/site-packages/rotel/rotel-agent | head -n1)"
test -x "$BIN" || { echo "30-rotel: $BIN missing" >&2; exit 1; }
echo "rotel: $BIN"
