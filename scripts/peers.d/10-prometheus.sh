#!/usr/bin/env bash
# Prometheus and promtool (Debian package): scrapes the agent in e2e tests, lints /metrics.
set -euo pipefail
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  apt_install prometheus
fi
command -v prometheus >/dev/null && command -v promtool >/dev/null
echo "prometheus: $(prometheus --version 2>&1 | head -n1)"
