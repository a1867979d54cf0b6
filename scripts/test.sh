#!/usr/bin/env bash
# The test command: installs the peers, builds the binaries the end-to-end tests start,
# then runs every test: the workspace (with and without --cfg tokio_unstable) and the
# collector/Kubernetes validation suite.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-peers.sh

echo "== cargo build (binaries used by the end-to-end tests)"
cargo build --workspace --bins

echo "== cargo test (stable tokio)"
cargo test --workspace

echo "== cargo test -p loopwatch, and the example built, with --cfg tokio_unstable"
RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR=target/unstable cargo test -p loopwatch
RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR=target/unstable cargo build -p loopwatch-examples

echo "== CountingAllocator under AddressSanitizer and valgrind (~20 s)"
instrumentation/tests/alloc-sanitizer.sh

echo "== stall stacks' signal module under valgrind (~1 min)"
instrumentation/tests/stacks-valgrind.sh

echo "== collector-config validation (manifests, dashboard, live PromQL, HPA decision)"
collector-config/tests/run.sh
