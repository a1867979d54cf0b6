#!/usr/bin/env bash
# The OpenTelemetry JS SDK (npm) used by the agent's Node.js peer tests.
set -euo pipefail
command -v node >/dev/null 2>&1 || apt_install nodejs npm
agent/tests/peers/install.sh >/dev/null
agent/tests/peers/install.sh zerocode >/dev/null
echo "node otel sdk: .cache/agent/npm"
