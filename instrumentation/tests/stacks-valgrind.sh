#!/usr/bin/env bash
# Soundness check of stall stacks' signal module (src/signal.rs, the crate's other
# unsafe code), issue 15: runs the crate's `stacks::` unit tests under valgrind memcheck. They
# install the handler, interrupt spinning, deeply recursing and exited threads (a thousand
# captures in one of them), copy their stacks and unwind the copies. Errors (invalid reads of
# another thread's stack, uses of uninitialised copies) and definite leaks fail the run.
# AddressSanitizer would need every dependency rebuilt with the sanitizer; memcheck covers the
# same reads here. Takes ~1 min. Usage: instrumentation/tests/stacks-valgrind.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v valgrind >/dev/null; then
  echo "valgrind not installed: install it (apt-get install valgrind)" >&2
  exit 1
fi
exe="$(cargo test -p loopwatch --lib --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "loopwatch":
        print(m["executable"])
')"
[ -n "$exe" ] || { echo "could not find the loopwatch unit-test binary" >&2; exit 1; }
echo "== stall stacks (signal, copy, unwind) under valgrind memcheck"
valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
  "$exe" stacks:: signal:: --test-threads=1
echo "stacks-valgrind: ok"
