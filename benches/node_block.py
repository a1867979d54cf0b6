#!/usr/bin/env python3
"""Node.js zero-code OpenTelemetry against loopwatch-agent: how soon /readyz?service= turns
503 after a block starts in an express handler, beside when Node's own metrics show it.

For each block length and run: wait until the service is ready and its export interval is
known, start GET /block?ms=N, poll the agent every 10 ms, and record
- ms from block start to the first /readyz 503 (and whether the block was still going on),
- ms from block start to the first /metrics nodejs_eventloop_delay_max_seconds >= 90% of
  the block (Node's own report of it).
Then, optionally, a soak: ordinary traffic for --soak-s seconds (half of it with both cores
loaded by a busy process), counting /readyz 503s (false positives).

usage: benches/node_block.py --agent target/debug/loopwatch-agent [--runs 10]
       [--blocks 1000,3000] [--soak-s 600]
Loopback only; every loop is bounded in count and time.
"""
import argparse, json, os, statistics, subprocess, sys, threading, time, urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def status(admin, service):
    _, body = get(f"{admin}/v1/status")
    for s in json.loads(body)["services"]:
        if s["service"] == service:
            return s
    return None


def node_max(admin, service):
    _, text = get(f"{admin}/metrics")
    best = None
    for line in text.splitlines():
        if line.startswith("nodejs_eventloop_delay_max_seconds{") and f'service_name="{service}"' in line:
            v = float(line.rsplit(" ", 1)[1])
            best = v if best is None else max(best, v)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", default=os.path.join(REPO, "target/debug/loopwatch-agent"))
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--blocks", default="1000,3000")
    ap.add_argument("--soak-s", type=int, default=0)
    a = ap.parse_args()
    peer = subprocess.run(["bash", os.path.join(REPO, "agent/tests/peers/install.sh"), "zerocode"],
                          check=True, capture_output=True, text=True).stdout.strip()
    agent = subprocess.Popen([a.agent, "--grpc-listen", "127.0.0.1:24317", "--http-listen",
                              "127.0.0.1:24318", "--admin-listen", "127.0.0.1:29464"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = "http://127.0.0.1:29464"
    env = dict(os.environ, OTEL_SERVICE_NAME="nodebench",
               OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:24318",
               OTEL_METRIC_EXPORT_INTERVAL="1000", OTEL_TRACES_EXPORTER="none",
               OTEL_LOGS_EXPORTER="none", OTEL_SEMCONV_STABILITY_OPT_IN="http")
    node = subprocess.Popen(["node", "--require", "@opentelemetry/auto-instrumentations-node/register",
                             "app.js"], cwd=peer, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(node.stdout.readline().split()[1])
        app = f"http://127.0.0.1:{port}"
        rows = {}
        for block in [int(b) for b in a.blocks.split(",")]:
            rows[block] = []
            for run in range(a.runs):
                deadline = time.time() + 60
                while time.time() < deadline:
                    s = status(admin, "nodebench")
                    if s and s["export_interval_seconds"] and get(f"{admin}/readyz?service=nodebench")[0] == 200:
                        break
                    time.sleep(0.1)
                time.sleep(2.0 + (run % 10) * 0.1)  # spread block starts over the export phase
                done = {}
                t0 = time.monotonic()
                th = threading.Thread(target=lambda: (get(f"{app}/block?ms={block}", 30),
                                                      done.setdefault("end", time.monotonic())))
                th.start()
                first_503 = first_node = None
                while time.monotonic() - t0 < block / 1000 + 10:
                    now = time.monotonic()
                    if first_503 is None and get(f"{admin}/readyz?service=nodebench")[0] == 503:
                        first_503 = now
                    if first_node is None:
                        m = node_max(admin, "nodebench")
                        if m is not None and m >= 0.9 * block / 1000:
                            first_node = now
                    if first_503 is not None and first_node is not None:
                        break
                    time.sleep(0.01)
                th.join()
                end = done["end"]
                ms = lambda t: None if t is None else round((t - t0) * 1000)
                row = {"ready_503_ms": ms(first_503), "during": first_503 is not None and first_503 < end,
                       "node_max_ms": ms(first_node), "block_end_ms": ms(end)}
                rows[block].append(row)
                print(json.dumps({"block_ms": block, "run": run, **row}), flush=True)
                time.sleep(5)
        for block, rs in rows.items():
            d = [r["ready_503_ms"] for r in rs if r["ready_503_ms"] is not None]
            n = [r["node_max_ms"] for r in rs if r["node_max_ms"] is not None]
            print(f"block {block} ms: 503 during the block {sum(r['during'] for r in rs)}/{len(rs)}; "
                  f"block start -> 503 median {statistics.median(d) if d else None} ms, max {max(d) if d else None} ms; "
                  f"Node's delay.max shows it: median {statistics.median(n) if n else None} ms, "
                  f"min {min(n) if n else None} ms (block ends at ~{block} ms)")
        if a.soak_s:
            soak(admin, app, a.soak_s)
    finally:
        node.kill(); agent.kill()


def soak(admin, app, seconds):
    stop = time.time() + seconds
    load = None
    polls = bad = reqs = 0
    reasons = []
    while time.time() < stop:
        if load is None and time.time() > stop - seconds / 2:
            # Both cores loaded by another process for the second half.
            load = [subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()+%d\nwhile time.time()<t: pass" % (seconds // 2 + 5)]) for _ in range(2)]
        get(f"{app}/", 5); reqs += 1
        code, body = get(f"{admin}/readyz?service=nodebench")
        polls += 1
        if code != 200:
            bad += 1
            reasons.append(body)
        time.sleep(0.05)
    for p in load or []:
        p.kill()
    print(f"soak {seconds} s (second half with both cores loaded): {reqs} requests, {polls} /readyz polls, "
          f"{bad} not 200")
    for r in reasons[:5]:
        print("  ", r)


if __name__ == "__main__":
    main()
