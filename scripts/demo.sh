#!/usr/bin/env bash
# The end-to-end demo on embedded defaults: loopwatch-agent (OTLP on 127.0.0.1:4317/4318,
# admin on :9464) and example-service (127.0.0.1:3000, exporting to the agent), then a
# scripted 1.5 s runtime block while /readyz is watched. Pass --keep to leave both running.
set -euo pipefail
cd "$(dirname "$0")/.."

keep=0
[ "${1:-}" = "--keep" ] && keep=1
block_ms="${DEMO_BLOCK_MS:-1500}"
admin="http://127.0.0.1:9464"
svc="http://127.0.0.1:3000"
logs=target/demo
mkdir -p "$logs"

echo "== building (cargo build --workspace --bins)"
cargo build --quiet --workspace --bins

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
wait_url() { # url, what
  for _ in $(seq 1 300); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "demo: $2 did not come up; see $logs/" >&2; exit 1
}

echo "== starting loopwatch-agent (embedded defaults; log: $logs/agent.log)"
target/debug/loopwatch-agent >"$logs/agent.out" 2>"$logs/agent.log" &
pids+=($!)
wait_url "$admin/livez" "loopwatch-agent"
head -n1 "$logs/agent.out"

echo "== starting example-service (log: $logs/service.log)"
OTEL_SERVICE_NAME=example-service target/debug/example-service >"$logs/service.out" 2>"$logs/service.log" &
pids+=($!)
wait_url "$svc/" "example-service"
head -n1 "$logs/service.out"

echo "== waiting for the agent to hear from the service"
for _ in $(seq 1 100); do
  curl -fsS "$admin/v1/status" 2>/dev/null | grep -q '"example-service"' && break
  sleep 0.1
done
echo "GET /readyz -> $(curl -s -o /dev/null -w '%{http_code}' "$admin/readyz")"

echo "== blocking the service's runtime for ${block_ms} ms (GET /block?ms=${block_ms})"
start=$(now_ms)
curl -fsS "$svc/block?ms=${block_ms}" >/dev/null &
block_pid=$!
last=""
block_end=""
while true; do
  code=$(curl -s -o "$logs/readyz.json" -w '%{http_code}' "$admin/readyz" || echo 000)
  t=$(( $(now_ms) - start ))
  if [ -z "$block_end" ] && ! kill -0 "$block_pid" 2>/dev/null; then
    block_end=$t
    echo "  +${t} ms  block ended"
  fi
  if [ "$code" != "$last" ]; then
    echo "  +${t} ms  /readyz -> $code $(head -c 300 "$logs/readyz.json")"
    last=$code
  fi
  if [ -n "$block_end" ] && [ "$code" = 200 ]; then break; fi
  if [ "$t" -gt 30000 ]; then echo "demo: readiness did not recover within 30 s" >&2; break; fi
  sleep 0.02
done

echo "== what the agent exports on /metrics (excerpt)"
curl -fsS "$admin/metrics" | grep -E '^(tokio_eventloop_(stall_duration|stalls|delay_p99|delay_max|utilization)|loopwatch_(service|pressure))' | head -n 20 || true

echo "== what happened, as the agent kept it (GET /v1/history?service=example-service, episodes)"
curl -fsS "$admin/v1/history?service=example-service" | python3 -c '
import json, sys
for i in json.load(sys.stdin)["instances"]:
    for e in i["episodes"]:
        why = "; ".join(e["reasons"])
        print("  %-10s %7.3f s  %s" % (e["kind"], e["duration_seconds"], why))
' || true

cat <<MSG

== look at
  $admin/             the status page: charts, incidents, routes
  $admin/v1/status     per-service health (JSON)
  $admin/v1/history?service=example-service  the last 15 minutes (JSON)
  $admin/readyz        readiness (503 while the service's event loop is stalled)
  $admin/metrics       Prometheus exposition
  $svc/block?ms=500    block the service again
MSG
if [ "$keep" = 1 ]; then
  echo "(--keep: agent and service keep running; Ctrl-C to stop)"
  wait
fi
