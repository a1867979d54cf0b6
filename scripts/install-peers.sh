#!/usr/bin/env bash
# Installs the real third-party peers the tests run against, idempotently: runs every
# scripts/peers.d/*.sh in order (one file per peer or group). Debian packages go through
# apt-get (needs root, as on CI); everything else goes into .cache/ in this checkout (ignored
# by git). Fails loudly when something cannot be installed: tests never skip a missing peer.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_updated=0
# apt_install PKG...: installs Debian packages (root only), running apt-get update once.
apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-peers: need root to install $*: sudo apt-get install -y --no-install-recommends $*" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  echo "install-peers: apt-get install $*"
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
export -f apt_install
export apt_updated

for script in scripts/peers.d/*.sh; do
  bash "$script" || { echo "install-peers: $script failed" >&2; exit 1; }
done
echo "install-peers: ok"
