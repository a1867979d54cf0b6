#!/usr/bin/env bash
# Installs the real third-party peers the tests run against, idempotently.
# Debian packages go through apt-get (needs root, as on CI); everything else goes into
# .cache/ in this checkout (ignored by git). Fails loudly when something cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)

if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-peers: missing ${need_apt[*]}; run as root or: sudo apt-get install -y --no-install-recommends ${need_apt[*]}" >&2
    exit 1
  fi
  echo "install-peers: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

for tool in prometheus promtool curl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "install-peers: $tool still missing" >&2; exit 1; }
done
echo "install-peers: ok ($(prometheus --version 2>&1 | head -n1))"
