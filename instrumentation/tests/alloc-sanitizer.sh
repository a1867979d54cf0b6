#!/usr/bin/env bash
# Soundness check of loopwatch's CountingAllocator (the crate's only unsafe code), issue 7.
#
# Builds tests/alloc-sanitizer/driver.rs, a std-only driver that includes src/heap/alloc.rs,
# installs it as the global allocator and stresses every GlobalAlloc method from 5 threads;
# then runs it
#   1. under AddressSanitizer (stable rustc + RUSTC_BOOTSTRAP=1 -Zsanitizer=address; the ASan
#      runtime ships with the stable x86_64-linux toolchain), leak detection on;
#   2. under valgrind memcheck (plain build), errors and definite leaks fail the run.
# Miri would be the first choice but needs a nightly toolchain, which is not installed here.
# Needs no cargo build and no network; takes ~10-20 s. Exit code non-zero on any finding.
# Usage: instrumentation/tests/alloc-sanitizer.sh   (SKIP_VALGRIND=1 / SKIP_ASAN=1 to skip one)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/alloc-sanitizer/driver.rs"
out="$(mktemp -d "${TMPDIR:-/tmp}/loopwatch-alloc-san.XXXXXX")"
trap 'rm -rf "$out"' EXIT
target="$(rustc -vV | sed -n 's/^host: //p')"

if [ "${SKIP_ASAN:-0}" != 1 ]; then
  echo "== CountingAllocator under AddressSanitizer ($target)"
  RUSTC_BOOTSTRAP=1 rustc --edition 2024 -g -O -Zsanitizer=address --target "$target" \
    -o "$out/asan" "$src"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1 "$out/asan"
fi

if [ "${SKIP_VALGRIND:-0}" != 1 ]; then
  if command -v valgrind >/dev/null; then
    echo "== CountingAllocator under valgrind memcheck"
    rustc --edition 2024 -g -o "$out/plain" "$src"
    valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
      "$out/plain"
  else
    echo "valgrind not installed: memcheck run skipped" >&2
  fi
fi
echo "alloc-sanitizer: ok"
