#!/usr/bin/env bash
# Runs every loopwatch benchmark of issue 6 in order and prints the tables (Markdown).
#
#   benches/run-all.sh            # full run, ~20 minutes after the build on a 2-core machine
#   QUICK=1 benches/run-all.sh    # smoke run (~4 minutes): fewer repeats, shorter runs
#
# Raw results (JSON lines), per-benchmark tables and process logs go to
# target/bench-results/<UTC timestamp>/ ; the combined tables to .../RESULTS.md.
# Needs: cargo, python3, wrk, taskset, valgrind (callgrind table), node (for the Node baseline; skipped if missing) and
# Rotel (installed into .cache/rotel by scripts/peers.d/30-rotel.sh when missing).
# Builds with CARGO_TARGET_DIR (default: target-bench) so it does not disturb other builds.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target-bench}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$REPO/target/bench-results/$STAMP"
mkdir -p "$OUT"
BIN="$CARGO_TARGET_DIR/release"
H=(python3 "$REPO/benches/harness.py" --out "$OUT" --bin-dir "$BIN")

for tool in wrk taskset python3; do
  command -v "$tool" >/dev/null || { echo "run-all: $tool is required" >&2; exit 1; }
done

echo "== build (release)" >&2
# The uninstrumented baseline of benchmark 2: no CountingAllocator (and run with --no-loopwatch).
cargo build --release -p loopwatch-examples --no-default-features >&2
cp "$BIN/example-service" "$BIN/example-service-bare"
cargo build --release -p loopwatch-agent -p loopwatch-examples >&2
cargo build --release --manifest-path benches/Cargo.toml --bin probe_accuracy --bin otlp_load >&2
# The peer stack (issue 14) for benchmarks 2 and 2b, with the main workspace's release profile.
benches/build-peer.sh "$BIN"

{
  echo "# loopwatch benchmarks, run $STAMP"
  echo
  echo '```'
  lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket|CPU max MHz|Hypervisor|L3)' || true
  uname -srm
  grep MemTotal /proc/meminfo
  rustc --version
  echo "git $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- instrumentation agent examples || echo ' (+ local changes)')"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo '```'
} > "$OUT/machine.md"
cat "$OUT/machine.md"

if [[ "${QUICK:-0}" == 1 ]]; then
  E2E=(--pairs 2 --duration 5 --variants A,B,P); ACC=(--repeats 1); DET=(--repeats 2)
  IDLE=(--repeats 1 --duration 10 --neighbour); ING=(--repeats 1 --duration 5 --paced-duration 10)
  CRIT=(--warm-up-time 1 --measurement-time 2); AB=10
else
  E2E=(--pairs 5 --duration 10 --variants A,B,P); ACC=(--repeats 3); DET=(--repeats 5)
  IDLE=(--repeats 3 --duration 20 --neighbour); ING=(--repeats 3 --duration 10 --paced-duration 30)
  CRIT=(--warm-up-time 2 --measurement-time 5); AB=40
fi

echo "== 1. route layer cost (criterion)" >&2
cargo bench --manifest-path benches/Cargo.toml --bench route_layers -- "${CRIT[@]}" \
  2>&1 | tee "$OUT/route_layers.txt" >&2
python3 - "$OUT" "$CARGO_TARGET_DIR" <<'EOF' | tee "$OUT/route_layers.md"
import json, os, sys
out, target = sys.argv[1], sys.argv[2]
base = os.path.join(target, "criterion", "route_layer")
rows = {}
for case in sorted(os.listdir(base)) if os.path.isdir(base) else []:
    p = os.path.join(base, case, "new", "estimates.json")
    if os.path.exists(p):
        est = json.load(open(p))
        rows[case] = (est["median"]["point_estimate"], est["median"]["confidence_interval"])
bare = rows.get("bare", (float("nan"),))[0]
floor = rows.get("floor_passthrough", (float("nan"),))[0]
otel = rows.get("otel_tower_metrics", (float("nan"),))[0] - bare
print("### Route layer cost (criterion median, ns per request, GET /users/123 through Router::oneshot)\n")
print("| layer | median ns | 95% CI ns | added over bare ns | added over floor ns |")
print("|---|---|---|---|---|")
order = ["bare", "floor_passthrough", "loopwatch", "task_monitor", "otel_tower_metrics", "axum_prometheus"]
for case in order + [c for c in rows if c not in order]:
    if case not in rows: continue
    m, ci = rows[case]
    print(f"| {case} | {m:.0f} | {ci['lower_bound']:.0f}-{ci['upper_bound']:.0f} | {m - bare:+.0f} | {m - floor:+.0f} |")
if "loopwatch" in rows:
    lw = rows["loopwatch"][0]
    print(f"\nloopwatch - floor = {lw - floor:+.0f} ns (target <= +100); loopwatch added / otel added = {(lw - bare) / otel:.3f} (target <= 0.2)")
else:
    print("\nloopwatch's route layer is not in this run (see BENCHMARKS.md).")
EOF
echo "== 1b. route layer cost, interleaved A/B (fastest of $AB rounds per case)" >&2
{
  echo
  echo "### Route layer cost, interleaved A/B (fastest of $AB rounds of 20000 requests per case)"
  echo
  ROUTE_LAYER_AB="$AB" cargo bench --manifest-path benches/Cargo.toml --bench route_layers 2>/dev/null
} | tee -a "$OUT/route_layers.md"

echo "== 2. end-to-end overhead (wrk)" >&2
"${H[@]}" e2e "${E2E[@]}"
echo "== 2b. end-to-end instructions per request (callgrind)" >&2
if command -v valgrind >/dev/null; then
  CALLGRIND_BIN_DIR="$BIN" CALLGRIND_OUT="$OUT/callgrind" benches/callgrind.sh \
    | tee "$OUT/callgrind.md" >&2
else
  echo "valgrind missing: callgrind table not run" | tee "$OUT/callgrind.md" >&2
fi
echo "== 3. probe accuracy" >&2
"${H[@]}" accuracy "${ACC[@]}"
echo "== 4. detection latency" >&2
"${H[@]}" detect "${DET[@]}"
echo "== 5. idle cost" >&2
"${H[@]}" idle "${IDLE[@]}"
echo "== 6. agent ingest vs Rotel" >&2
"${H[@]}" ingest "${ING[@]}"

cat "$OUT/machine.md" "$OUT/route_layers.md" "$OUT/e2e_overhead.md" "$OUT/callgrind.md" "$OUT/probe_accuracy.md" \
  "$OUT/detection_latency.md" "$OUT/idle_cost.md" "$OUT/agent_ingest.md" \
  | sed -e '$a\' > "$OUT/RESULTS.md"
echo
echo "== all tables: $OUT/RESULTS.md"
