#!/usr/bin/env bash
# Builds the peer stack's `peer_service` (benches workspace) into DIR, release, with the main
# workspace's release profile (fat LTO, one codegen unit) so that it compares with the release
# `example-service` on code generation; in a target dir of its own, since those flags differ
# from the benches profile that the other bench binaries are built with.
#
#   benches/build-peer.sh DIR
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:?usage: build-peer.sh DIR}"
export CARGO_TARGET_DIR="${PEER_TARGET_DIR:-${CARGO_TARGET_DIR:-$REPO/target-bench}/peer}"
CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
  cargo build --release --manifest-path "$REPO/benches/Cargo.toml" --bin peer_service >&2
mkdir -p "$DIR"
cp "$CARGO_TARGET_DIR/release/peer_service" "$DIR/"
