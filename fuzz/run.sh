#!/usr/bin/env bash
# Bounded-time fuzzing of the agent with cargo-fuzz (libFuzzer):
#   fuzz/run.sh                 each target for FUZZ_SECONDS (default 60) seconds
#   fuzz/run.sh --with-tests    first the bad-input/fault/security e2e tests, then fuzzing
#   FUZZ_SECONDS=600 fuzz/run.sh otlp_http_body    one target, longer
# Targets: otlp_http_body (OTLP/HTTP protobuf/JSON/gzip body path, caps, ingest, exposition)
# and config (TOML, key=value, durations). The toolchain here is stable; cargo-fuzz needs
# nightly flags (-Zsanitizer), which RUSTC_BOOTSTRAP=1 unlocks. cargo-fuzz itself is
# installed into .cache/cargo-fuzz on first use. A crash leaves its input in
# fuzz/artifacts/<target>/ and is copied to fuzz/regressions/<target>/, which
# `cargo test -p loopwatch-e2e --test reliability_fuzz_regressions` replays forever after.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd .. && pwd)
secs=${FUZZ_SECONDS:-60}

if [ "${1:-}" = "--with-tests" ]; then
  shift
  echo "== e2e reliability tests (bad input, faults, security, fuzz regressions, upstream outage)"
  (cd "$root" && cargo build --workspace --bins && cargo test -p loopwatch-e2e \
     --test reliability_bad_input --test reliability_faults --test reliability_security \
     --test reliability_fuzz_regressions --test reliability_upstream)
fi

export PATH="$root/.cache/cargo-fuzz/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz into .cache/cargo-fuzz"
  cargo install cargo-fuzz --locked --root "$root/.cache/cargo-fuzz"
fi
export RUSTC_BOOTSTRAP=1

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(otlp_http_body config)
status=0
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${secs}s"
  mkdir -p "corpus/$t" "artifacts/$t" "regressions/$t"
  if ! cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -max_len=262144 -timeout=10 \
      -artifact_prefix="artifacts/$t/"; then
    echo "fuzz $t: FAILED; kept inputs:" >&2
    for f in artifacts/"$t"/*; do
      [ -f "$f" ] || continue
      cp "$f" "regressions/$t/"
      echo "  fuzz/regressions/$t/$(basename "$f")" >&2
    done
    status=1
  fi
done
exit $status
