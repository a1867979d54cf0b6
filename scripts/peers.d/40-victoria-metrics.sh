#!/usr/bin/env bash
# VictoriaMetrics (Debian trixie .deb, unpacked into <repo>/.cache/victoria-metrics, not
# installed): an OTLP/HTTP receiver with storage, so exported values can be queried back.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="$REPO/.cache/victoria-metrics"
BIN="$DIR/root/usr/bin/victoria-metrics"
if [ ! -x "$BIN" ]; then
  mkdir -p "$DIR/lists/partial" "$DIR/archives/partial" "$DIR/debs"
  # The trixie suite from the same Debian mirror this machine's apt is configured with.
  mirror="$(grep -hoE '^URIs:[[:space:]]*[^[:space:]]+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null \
              | head -n1 | awk '{print $2}')"
  [ -n "$mirror" ] || mirror="$(grep -hoE '^deb[[:space:]]+[^[:space:]]+/debian/?[[:space:]]' /etc/apt/sources.list 2>/dev/null \
              | head -n1 | awk '{print $2}')"
  [ -n "$mirror" ] || { echo "40-victoria-metrics: no Debian mirror found in the apt sources" >&2; exit 1; }
  echo "deb $mirror trixie main" > "$DIR/sources.list"
  opts=(-o "Dir::Etc::SourceList=$DIR/sources.list" -o "Dir::Etc::SourceParts=-"
        -o "Dir::State::Lists=$DIR/lists" -o "Dir::Cache::Archives=$DIR/archives"
        -o "APT::Get::List-Cleanup=0")
  apt-get "${opts[@]}" update -qq || { echo "40-victoria-metrics: apt-get update (trixie) failed" >&2; exit 1; }
  (cd "$DIR/debs" && apt-get "${opts[@]}" download victoria-metrics) \
    || { echo "40-victoria-metrics: download failed" >&2; exit 1; }
  dpkg -x "$DIR"/debs/victoria-metrics_*.deb "$DIR/root"
fi
test -x "$BIN" || { echo "40-victoria-metrics: $BIN missing" >&2; exit 1; }
echo "victoria-metrics: $BIN"
