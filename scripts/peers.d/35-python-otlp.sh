#!/usr/bin/env bash
# A Python OTLP server (PyPI `grpcio` + `opentelemetry-proto`; HTTP from the standard library)
# that the agent's exporter reaches over TLS and mTLS: Rotel has no TLS receiver. Installed
# idempotently into <repo>/.cache/python-otlp (venv).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$REPO/.cache/python-otlp"
check() { "$VENV/bin/python" -c 'import grpc, opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc' 2>/dev/null; }
if ! check; then
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
  rm -rf "$VENV"
  python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; rm -rf "$VENV"; python3 -m venv "$VENV"; }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check grpcio opentelemetry-proto \
    || { echo "35-python-otlp: pip install grpcio opentelemetry-proto failed" >&2; exit 1; }
  check || { echo "35-python-otlp: grpc or opentelemetry-proto not importable" >&2; exit 1; }
fi
command -v openssl >/dev/null 2>&1 || apt_install openssl
echo "python-otlp: $VENV/bin/python"
