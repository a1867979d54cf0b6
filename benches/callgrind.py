#!/usr/bin/env python3
"""Instructions per request, end to end, counted by callgrind over all threads of the service.

Runs `example-service` under `valgrind --tool=callgrind` (all threads, one combined count),
sends exactly N `GET /` requests over keep-alive connections, stops the service with SIGTERM
and reads the total instruction count. The figure per request is the marginal between two
request counts, `(Ir(N2) - Ir(N1)) / (N2 - N1)`, so start-up and shutdown cancel.

Load shapes: `serial` (one connection, back to back: the next request is sent when the response
is read) and `c64` (64 connections, each back to back, N requests in total).

  benches/callgrind.py --bin-dir target/release --variants bare,alloc,no-route,full,peer \\
      --shapes serial,c64 --counts 2000,6000 --out DIR

Variants (binaries from benches/callgrind.sh):
  bare      example-service-bare (no CountingAllocator) with --no-loopwatch
  alloc     example-service (CountingAllocator) with --no-loopwatch
  no-route  example-service, loopwatch without the route layer (--no-route-layer)
  floor     example-service, loopwatch with an empty tower layer in the route layer's place
            (--floor-layer): full - floor is the route layer's own cost, floor - no-route what
            axum charges for attaching any layer
  full      example-service, full loopwatch
  peer      peer_service: opentelemetry-instrumentation-tower metrics + a tokio-metrics
            RuntimeMonitor through the OTel SDK (PeriodicReader, OTLP gRPC, 1 s)
  peer-bare peer_service --bare (the peer stack off: should cost what `bare` costs)
Every variant runs the default `info` fmt subscriber (RUST_LOG unset), and loopwatch's stall
stacks off (LOOPWATCH_STALL_STACKS=false: see one_run). Run nothing else meanwhile: the
background threads' work follows wall time, and a load that slows valgrind down adds to it.

A `loopwatch-agent` from --bin-dir (not under valgrind) is the OTLP endpoint of every variant,
so `full` and `peer` both count their exports to a live receiver (--no-agent: none listens and
exports to 127.0.0.1:4317 fail fast, as tables before issue 14 were measured). With both in one
run the table ends with loopwatch's added instructions over the peer's, per shape.
"""

import argparse
import json
import os
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

# variant: (binary, flags); example-service binaries also get the listen and drain flags.
VARIANTS = {
    "bare": ("example-service-bare", ["--no-loopwatch"]),
    "alloc": ("example-service", ["--no-loopwatch"]),
    "no-route": ("example-service", ["--no-route-layer"]),
    "floor": ("example-service", ["--floor-layer"]),
    "full": ("example-service", []),
    "peer": ("peer_service", []),
    "peer-bare": ("peer_service", ["--bare"]),
}
PEER_BIN = "peer_service"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"port {port} not open after {timeout} s")


class Conn:
    """One keep-alive connection with one request in flight at a time."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buf = b""

    def send(self):
        self.sock.setblocking(True)
        self.sock.sendall(REQUEST)
        self.sock.setblocking(False)

    def take_response(self):
        """Reads what is available; True once one whole response is buffered (and consumed)."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return False
        if not data:
            raise RuntimeError("server closed the connection")
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = self.buf[:end].decode("latin-1")
        if not head.startswith("HTTP/1.1 200"):
            raise RuntimeError(f"unexpected response: {head.splitlines()[0]}")
        m = re.search(r"(?im)^content-length:\s*(\d+)", head)
        length = int(m.group(1)) if m else 0
        if len(self.buf) < end + 4 + length:
            return False
        self.buf = self.buf[end + 4 + length:]
        if self.buf:
            raise RuntimeError("more than one response for one request")
        return True


def load(port, total, conns, timeout):
    """Sends exactly `total` requests over `conns` connections, each back to back."""
    sel = selectors.DefaultSelector()
    pool = [Conn(port) for _ in range(conns)]
    sent = done = 0
    for c in pool:
        if sent < total:
            c.send()
            sent += 1
            sel.register(c.sock, selectors.EVENT_READ, c)
    deadline = time.monotonic() + timeout
    while done < total:
        if time.monotonic() > deadline:
            raise RuntimeError(f"load timed out after {done} of {total} responses")
        for key, _ in sel.select(timeout=1.0):
            c = key.data
            if c.take_response():
                done += 1
                if sent < total:
                    c.send()
                    sent += 1
    for c in pool:
        c.sock.close()


def total_ir(path):
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def start_agent(args):
    """loopwatch-agent on free loopback ports; returns (process, gRPC endpoint URL)."""
    ports = [free_port() for _ in range(3)]
    cmd = [os.path.join(args.bin_dir, "loopwatch-agent"),
           "--grpc-listen", f"127.0.0.1:{ports[0]}", "--http-listen", f"127.0.0.1:{ports[1]}",
           "--admin-listen", f"127.0.0.1:{ports[2]}"]
    log = open(os.path.join(args.out, "agent.log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, RUST_LOG="warn"))
    log.close()
    wait_port(ports[0], proc, 30)
    return proc, f"http://127.0.0.1:{ports[0]}"


def one_run(args, variant, shape, count, tag):
    binary, flags = VARIANTS[variant]
    port = free_port()
    out = os.path.join(args.out, f"callgrind.{variant}.{shape}.{count}.{tag}.out")
    log = open(os.path.join(args.out, f"{variant}.{shape}.{count}.{tag}.log"), "w")
    cmd = ["valgrind", "--tool=callgrind", "--fair-sched=yes", f"--callgrind-out-file={out}",
           os.path.join(args.bin_dir, binary)]
    if binary == PEER_BIN:
        cmd += ["--port", str(port)]
        if args.endpoint:
            cmd += ["--otlp-endpoint", args.endpoint]
    else:
        cmd += ["--listen", f"127.0.0.1:{port}", "--drain-delay-ms", "0",
                "--drain-deadline-ms", "2000"]
    cmd += flags
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
    # Stall stacks off: under valgrind's ~50x slowdown the probe sees stalls that a native run
    # does not, and naming a stack the first time costs ~27M instructions once per process,
    # which lands in one count of a pair and not the other. What stall stacks cost per request
    # is nothing (they act on a stall only); the stall detection and its export stay on.
    env["LOOPWATCH_STALL_STACKS"] = "false"
    if args.endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = args.endpoint
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_port(port, proc, args.start_timeout)
        # Let start-up work (first exports, calibration) finish before the load.
        time.sleep(args.settle)
        load(port, count, 1 if shape == "serial" else 64, args.load_timeout)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    return total_ir(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", default="bare,alloc,no-route,floor,full,peer,peer-bare")
    ap.add_argument("--shapes", default="serial,c64")
    ap.add_argument("--counts", default="2000,6000")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--start-timeout", type=float, default=120.0)
    ap.add_argument("--load-timeout", type=float, default=600.0)
    ap.add_argument("--no-agent", action="store_true",
                    help="no OTLP receiver: exports fail fast (the pre-issue-14 setup)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    lo, hi = (int(x) for x in args.counts.split(","))
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        sys.exit(f"callgrind.py: unknown variants {unknown}; known: {sorted(VARIANTS)}")
    agent, args.endpoint = (None, None) if args.no_agent else start_agent(args)
    rows = []
    try:
        for shape in args.shapes.split(","):
            for variant in args.variants.split(","):
                per = []
                for r in range(args.repeats):
                    if agent is not None and agent.poll() is not None:
                        raise RuntimeError(f"agent exited with {agent.returncode}")
                    a = one_run(args, variant, shape, lo, r)
                    b = one_run(args, variant, shape, hi, r)
                    per.append((b - a) / (hi - lo))
                    print(json.dumps({"variant": variant, "shape": shape, "repeat": r,
                                      "ir_lo": a, "ir_hi": b, "per_request": per[-1],
                                      "agent": agent is not None}),
                          file=sys.stderr, flush=True)
                rows.append((shape, variant, per))
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
    # The median, not the minimum: a repeat can be off by far more than the per-request work
    # when a once-per-process event lands in only one of its two runs (under valgrind's
    # slowdown loopwatch may see a stall and symbolize a stack once), and the minimum would
    # pick exactly such a marginal when it is the low run's.
    bare = {shape: statistics.median(p) for shape, v, p in rows if v == "bare"}
    print(f"### Instructions per request (callgrind, all threads, marginal {lo}->{hi} requests, "
          f"median of {args.repeats})\n")
    print("| load shape | variant | instructions/request | added over bare |")
    print("|---|---|---|---|")
    for shape, variant, per in rows:
        val = statistics.median(per)
        spread = f" ({', '.join(f'{p:.0f}' for p in per)})" if len(per) > 1 else ""
        added = f"{val - bare[shape]:+.0f}" if shape in bare and variant != "bare" else "—"
        print(f"| {shape} | {variant} | {val:.0f}{spread} | {added} |")
    best = {(shape, v): statistics.median(p) for shape, v, p in rows}
    ratios = [(shape, best[(shape, "full")] - bare[shape], best[(shape, "peer")] - bare[shape])
              for shape in bare if (shape, "full") in best and (shape, "peer") in best]
    if ratios:
        print(f"\nloopwatch added / peer added ({'agent' if agent else 'no agent'} as the "
              "OTLP endpoint; target <= 0.333): "
              + "; ".join(f"{shape} {lw:+.0f} / {peer:+.0f} = {lw / peer:.3f}"
                          for shape, lw, peer in ratios))
    own = [(shape, best[(shape, "full")] - best[(shape, "floor")]) for shape in bare
           if (shape, "full") in best and (shape, "floor") in best]
    if own:
        print("\nthe route layer's own cost, full - floor (an empty layer attached the same way): "
              + "; ".join(f"{shape} {v:+.0f}" for shape, v in own))


if __name__ == "__main__":
    main()
