#!/usr/bin/env bash
# Debian Chromium: headless browser for the agent's status page test.
set -euo pipefail
command -v chromium >/dev/null 2>&1 || apt_install chromium
command -v chromium >/dev/null
echo "chromium: $(chromium --version 2>/dev/null | head -n1)"
