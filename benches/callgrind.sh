#!/usr/bin/env bash
# Instructions per request, end to end, counted by callgrind over all threads of the release
# `example-service` and of the peer stack's `peer_service`: variants bare / CountingAllocator
# only / loopwatch without the route layer / with an empty layer in its place (floor) / full /
# peer / peer-bare, load shapes one
# back-to-back keep-alive client and 64 connections, marginal between two request counts, a
# running `loopwatch-agent` as every variant's OTLP endpoint (benches/callgrind.py). ~8 minutes
# after the build on a 2-core machine.
#
#   benches/callgrind.sh                      # builds, then runs; table on stdout
#   CALLGRIND_COUNTS=1000,3000 benches/callgrind.sh
#   CALLGRIND_VARIANTS=bare,full,peer,peer-bare benches/callgrind.sh
#   CALLGRIND_BIN_DIR=DIR benches/callgrind.sh  # skip the build: DIR has example-service{,-bare},
#                                               # loopwatch-agent and peer_service
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is required" >&2; exit 1; }
OUT="${CALLGRIND_OUT:-$REPO/target/bench-results/callgrind-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
if [[ -z "${CALLGRIND_BIN_DIR:-}" ]]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target-bench}"
  BIN="$CARGO_TARGET_DIR/release"
  cargo build --release -p loopwatch-examples --no-default-features >&2
  cp "$BIN/example-service" "$OUT/example-service-bare"
  cargo build --release -p loopwatch-agent -p loopwatch-examples >&2
  cp "$BIN/example-service" "$BIN/loopwatch-agent" "$OUT/"
  benches/build-peer.sh "$OUT"
  CALLGRIND_BIN_DIR="$OUT"
fi
python3 "$REPO/benches/callgrind.py" --bin-dir "$CALLGRIND_BIN_DIR" --out "$OUT" \
  --counts "${CALLGRIND_COUNTS:-2000,6000}" --repeats "${CALLGRIND_REPEATS:-1}" \
  ${CALLGRIND_VARIANTS:+--variants "$CALLGRIND_VARIANTS"} | tee "$OUT/callgrind.md"
