#!/usr/bin/env python3
"""Stall stacks (issue 15): over N injected stalls of each kind, against a real agent.

For each kind (on a current_thread runtime, /block with how=sleep: std::thread::sleep,
how=mutex: a std::sync::Mutex held by another thread, how=net: a blocking std::net read,
how=file: a blocking std::fs::File read; and /spin: a CPU spin on one of four workers),
injects N blocks of 1 s into example-service and polls the agent's
/v1/status every 5 ms for a new `last_stalls` report. Prints, per kind: the share of first
reports naming the handler, the time from the stall passing its 250 ms threshold to the
report at the agent (median, max), and the stalled thread's interruption (handler time).

Usage: benches/stall_stacks.py [--bin-dir target/debug] [--runs 20]
Every process started here is stopped by its own pid.
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THRESHOLD = 0.25


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, timeout=5):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait(what, cond, limit=30):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    sys.exit(f"stall_stacks: timed out waiting for {what}")


def status_of(admin, name):
    try:
        _, body = get(admin, "/v1/status")
    except OSError:
        return None
    for s in json.loads(body).get("services", []):
        if s.get("service") == name:
            return s
    return None


def run_kind(args, label, path, function, extra):
    grpc, http_port, admin = free_port(), free_port(), free_port()
    agent = subprocess.Popen(
        [os.path.join(args.bin_dir, "loopwatch-agent"), "--grpc-listen", f"127.0.0.1:{grpc}",
         "--http-listen", f"127.0.0.1:{http_port}", "--admin-listen", f"127.0.0.1:{admin}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    svc_port = free_port()
    name = f"bench-stacks-{label}"
    env = dict(os.environ, OTEL_SERVICE_NAME=name,
               OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{grpc}", RUST_LOG="error")
    svc = subprocess.Popen(
        [os.path.join(args.bin_dir, "example-service"), "--listen", f"127.0.0.1:{svc_port}",
         *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = {"kind": label, "named": 0, "runs": 0, "latency": [], "interruption": []}
    try:
        wait("service ready at the agent",
             lambda: (s := status_of(admin, name)) and s.get("state") == "ok")
        seen = set()
        for _ in range(args.runs):
            t0 = time.monotonic()
            th = threading.Thread(target=get, args=(svc_port, f"{path}ms=1000", 30))
            th.start()
            first = None
            while time.monotonic() - t0 < 10 and first is None:
                s = status_of(admin, name) or {}
                for r in s.get("last_stalls", []):
                    key = (r.get("time_unix_nano"), r.get("thread_id"), r.get("capture"))
                    if key not in seen and r.get("capture") == 1:
                        first = (time.monotonic() - t0, r)
                    seen.add(key)
                time.sleep(0.005)
            th.join()
            out["runs"] += 1
            if first is None:
                continue
            at, r = first
            out["latency"].append(at - THRESHOLD)
            if r.get("interruption_seconds") is not None:
                out["interruption"].append(r["interruption_seconds"])
            if any(f.get("function", "").startswith(function) for f in r.get("frames", [])):
                out["named"] += 1
            time.sleep(0.5)
    finally:
        for p in (svc, agent):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default=os.path.join(REPO, "target", "debug"))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--kinds", help="comma-separated subset of sleep,mutex,net,file,spin")
    args = ap.parse_args()
    kinds = [
        ("sleep", "/block?how=sleep&", "example_service::block", []),
        ("mutex", "/block?how=mutex&", "example_service::blocking::wait_on_mutex", []),
        ("net", "/block?how=net&", "example_service::blocking::read_socket", []),
        ("file", "/block?how=file&", "example_service::blocking::read_slow_file", []),
        ("spin", "/spin?", "example_service::spin", ["--workers", "4"]),
    ]
    if args.kinds:
        kinds = [k for k in kinds if k[0] in args.kinds.split(",")]
    print("| kind | reports naming the handler | threshold -> report at agent, median | max | interruption (handler), median | max |")
    print("|---|---|---|---|---|---|")
    for label, path, function, extra in kinds:
        o = run_kind(args, label, path, function, extra)
        lat, intr = o["latency"], o["interruption"]
        ms = lambda v: f"{v * 1e3:.0f} ms"
        us = lambda v: f"{v * 1e6:.1f} µs"
        print(f"| {label} (`{path.rstrip('?&')}`) | {o['named']}/{o['runs']} | "
              f"{ms(statistics.median(lat)) if lat else '-'} | {ms(max(lat)) if lat else '-'} | "
              f"{us(statistics.median(intr)) if intr else '-'} | {us(max(intr)) if intr else '-'} |")


if __name__ == "__main__":
    main()
