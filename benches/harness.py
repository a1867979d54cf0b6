#!/usr/bin/env python3
"""Process-level benchmarks for loopwatch (issue 6): items 2-6.

Subcommands (each writes raw JSON lines and a Markdown table into --out, and prints the table):
  e2e       end-to-end overhead: example-service with and without loopwatch under wrk, A B A B
  accuracy  probe accuracy: benches' probe_accuracy binary + Node monitorEventLoopDelay
  detect    detection latency: stall start -> agent /readyz 503, stall end -> 200
  idle      idle CPU and RSS of example-service with and without loopwatch
  ingest    agent vs Rotel OTLP ingest: datapoints per CPU-second, RSS, 10 services at 1/s
Every server listens on 127.0.0.1; every process started here is stopped by its own pid.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- helpers

def bin_path(args, name):
    p = os.path.join(args.bin_dir, name)
    if not os.path.exists(p):
        sys.exit(f"harness: missing binary {p} (run benches/run-all.sh, which builds it)")
    return p


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not open after {timeout}s")


def pinned(cmd, cpu):
    return (["taskset", "-c", str(cpu)] + cmd) if cpu is not None else cmd


class Proc:
    """A started process, stopped by its own pid (SIGTERM, then SIGKILL)."""

    def __init__(self, cmd, out_dir, name, env=None, cpu=None):
        e = dict(os.environ)
        e.update(env or {})
        self.log = open(os.path.join(out_dir, f"{name}.log"), "ab")
        self.p = subprocess.Popen(pinned(cmd, cpu), stdout=self.log, stderr=self.log, env=e,
                                  stdin=subprocess.DEVNULL)
        self.pid = self.p.pid

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=5)
        self.log.close()


def cpu_seconds(pid):
    """utime + stime of a process (all threads), seconds."""
    return sum(user_sys_seconds(pid))


def user_sys_seconds(pid):
    """(utime, stime) of a process (all threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def thread_cpu(pid):
    """{thread name: cpu seconds} summed by name."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def sched_threads(pid):
    """{thread name: (cpu seconds, times scheduled)} summed by name, from the per-thread
    /proc/PID/task/TID/schedstat (ns-precise run time; utime/stime are tick-sampled)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run_ns, _wait, slices = (int(v) for v in f.read().split()[:3])
        except (OSError, ValueError):
            continue
        c, n = out.get(name, (0.0, 0))
        out[name] = (c + run_ns / 1e9, n + slices)
    return out


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_mib(pid):
    return status_kb(pid, "VmRSS") / 1024.0


class RssSampler(threading.Thread):
    """Samples a process's RSS every `period` s and keeps the maximum (MiB)."""

    def __init__(self, pid, period=0.1):
        super().__init__(daemon=True)
        self.pid, self.period, self.max, self.stop_ev = pid, period, 0.0, threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            try:
                self.max = max(self.max, rss_mib(self.pid))
            except OSError:
                return
            self.stop_ev.wait(self.period)

    def finish(self):
        self.stop_ev.set()
        self.join(timeout=2)
        return self.max


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


class Out:
    def __init__(self, args, name):
        os.makedirs(args.out, exist_ok=True)
        self.raw = open(os.path.join(args.out, f"{name}.jsonl"), "a")
        self.md_path = os.path.join(args.out, f"{name}.md")
        self.dir = args.out

    def row(self, obj):
        self.raw.write(json.dumps(obj) + "\n")
        self.raw.flush()
        print(json.dumps(obj), file=sys.stderr, flush=True)

    def table(self, text):
        with open(self.md_path, "w") as f:
            f.write(text + "\n")
        print(text, flush=True)


def md_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


def start_agent(args, out_dir, name, cpu=None, binary=None):
    ports = {k: free_port() for k in ("grpc", "http", "admin")}
    cmd = [binary or bin_path(args, "loopwatch-agent"),
           "--grpc-listen", f"127.0.0.1:{ports['grpc']}",
           "--http-listen", f"127.0.0.1:{ports['http']}",
           "--admin-listen", f"127.0.0.1:{ports['admin']}"]
    p = Proc(cmd, out_dir, name, env={"RUST_LOG": "warn"}, cpu=cpu)
    wait_port(ports["http"], p.p)
    wait_port(ports["admin"], p.p)
    return p, ports


def rotel_bin():
    found = None
    base = os.path.join(REPO, ".cache", "rotel", "lib")
    if os.path.isdir(base):
        for py in sorted(os.listdir(base)):
            cand = os.path.join(base, py, "site-packages", "rotel", "rotel-agent")
            if os.path.exists(cand):
                found = cand
    if found is None:
        script = os.path.join(REPO, "scripts", "peers.d", "30-rotel.sh")
        if os.path.exists(script):
            subprocess.run(["bash", script], check=True, stdout=subprocess.DEVNULL)
        else:
            venv = os.path.join(REPO, ".cache", "rotel")
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
            subprocess.run([os.path.join(venv, "bin", "pip"), "install", "--quiet", "rotel"],
                           check=True)
        return rotel_bin_noinstall()
    return found


def rotel_bin_noinstall():
    base = os.path.join(REPO, ".cache", "rotel", "lib")
    for py in sorted(os.listdir(base)):
        cand = os.path.join(base, py, "site-packages", "rotel", "rotel-agent")
        if os.path.exists(cand):
            return cand
    raise RuntimeError("rotel-agent not installed")


def start_rotel(out_dir, name, cpu=None):
    ports = {k: free_port() for k in ("grpc", "http")}
    cmd = [rotel_bin(), "start",
           "--otlp-grpc-endpoint", f"127.0.0.1:{ports['grpc']}",
           "--otlp-http-endpoint", f"127.0.0.1:{ports['http']}",
           "--exporter", "blackhole",
           "--pid-file", os.path.join(out_dir, f"{name}.pid"),
           "--log-file", os.path.join(out_dir, f"{name}.rotel.log")]
    p = Proc(cmd, out_dir, name, cpu=cpu)
    wait_port(ports["http"], p.p)
    return p, ports


def start_service(args, out_dir, name, loopwatch, agent_grpc=None, cpu=None, workers=0,
                  bare=False, extra=()):
    """example-service; `bare` uses the build without the CountingAllocator when present;
    `extra`: more command-line flags."""
    port = free_port()
    exe = bin_path(args, "example-service")
    if bare and os.path.exists(exe + "-bare"):
        exe += "-bare"
    cmd = [exe, "--listen", f"127.0.0.1:{port}", "--workers", str(workers)]
    env = {"RUST_LOG": "warn", "OTEL_SERVICE_NAME": f"bench-{name}"}
    if loopwatch:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{agent_grpc}"
    else:
        cmd.append("--no-loopwatch")
    cmd.extend(extra)
    p = Proc(cmd, out_dir, name, env=env, cpu=cpu)
    wait_port(port, p.p)
    return p, port


def http_get(port, path, timeout=5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


# ---------------------------------------------------------------- item 2: e2e overhead

def parse_wrk(text):
    def dur(v, unit):
        return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    lat = {}
    for q in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if m:
            lat[q] = dur(m.group(1), m.group(2))
    errs = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    total = re.search(r"^\s*(\d+) requests in", text, re.M)
    return {"rps": rps, "requests": int(total.group(1)) if total else 0, "p50_ms": lat.get("50"), "p99_ms": lat.get("99"),
            "non2xx": int(errs.group(1)) if errs else 0}


# e2e variants: (description, loopwatch on, bare build, extra flags); P and Q run peer_service
E2E_VARIANTS = {
    "A": ("uninstrumented", False, True, []),
    "B": ("full loopwatch", True, False, []),
    "C": ("loopwatch without the route layer", True, False, ["--no-route-layer"]),
    "D": ("CountingAllocator only (--no-loopwatch)", False, False, []),
    "F": ("loopwatch with an empty layer in the route layer's place", True, False,
          ["--floor-layer"]),
    "P": ("peer stack (otel-tower metrics + tokio-metrics via the OTel SDK)", False, False, []),
    "Q": ("peer_service --bare (peer stack off)", False, False, ["--bare"]),
}
PEER_VARIANTS = ("P", "Q")


def start_peer(args, out_dir, name, agent_grpc, cpu=None, extra=()):
    """peer_service (benches/src/bin/peer_service.rs) exporting to the agent's gRPC port."""
    port = free_port()
    cmd = [bin_path(args, "peer_service"), "--port", str(port),
           "--otlp-endpoint", f"http://127.0.0.1:{agent_grpc}", *extra]
    p = Proc(cmd, out_dir, name, env={"RUST_LOG": "warn", "OTEL_SERVICE_NAME": f"bench-{name}"},
             cpu=cpu)
    wait_port(port, p.p)
    return p, port


def cmd_e2e(args):
    out = Out(args, "e2e_overhead")
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in E2E_VARIANTS]
    if bad or names[:2] != ["A", "B"]:
        sys.exit(f"harness e2e: --variants must start with A,B and use {sorted(E2E_VARIANTS)}")
    agent, aports = start_agent(args, args.out, "e2e-agent", cpu=1)
    results = {v: [] for v in names}
    try:
        for i in range(args.pairs):
            # A B, B A, A B, ...: a slot bias (warm caches, neighbours) cancels out over pairs.
            for variant in (names if i % 2 == 0 else names[::-1]):
                _, lw, bare, extra = E2E_VARIANTS[variant]
                if variant in PEER_VARIANTS:
                    svc, port = start_peer(args, args.out, f"e2e-{variant}{i}", aports["grpc"],
                                           cpu=0, extra=extra)
                else:
                    svc, port = start_service(args, args.out, f"e2e-{variant}{i}", lw,
                                              aports["grpc"], cpu=0, bare=bare, extra=extra)
                try:
                    url = f"http://127.0.0.1:{port}/"
                    wrk = ["wrk", f"-t{args.threads}", f"-c{args.conns}", "--latency"]
                    subprocess.run(pinned(wrk + ["-d2s", url], 1), capture_output=True,
                                   timeout=30)
                    us0 = user_sys_seconds(svc.pid)
                    r = subprocess.run(pinned(wrk + [f"-d{args.duration}s", url], 1),
                                       capture_output=True, text=True,
                                       timeout=args.duration + 30)
                    us1 = user_sys_seconds(svc.pid)
                    row = parse_wrk(r.stdout)
                    # Service CPU per request over the measured run: unlike req/s, it does not
                    # move with the share of CPU 0 that other processes take. User and kernel
                    # apart: callgrind counts only the user part.
                    n = row["requests"] or float("nan")
                    row.update({"bench": "e2e", "variant": variant, "loopwatch": lw,
                                "pair": i, "service_cpu_s": sum(us1),
                                "cpu_us_per_req": (sum(us1) - sum(us0)) * 1e6 / n,
                                "user_us_per_req": (us1[0] - us0[0]) * 1e6 / n,
                                "sys_us_per_req": (us1[1] - us0[1]) * 1e6 / n})
                    results[variant].append(row)
                    out.row(row)
                finally:
                    svc.stop()
    finally:
        agent.stop()
    a = results["A"]
    ra = med([x["rps"] for x in a])
    rows = []
    for v in names:
        xs = results[v]
        rv = med([x["rps"] for x in xs])
        rows.append([f"{v}: {E2E_VARIANTS[v][0]}", f"{rv:.0f}",
                     f"{rv / ra:.4f}" if ra else "nan",
                     f"{med([x['cpu_us_per_req'] for x in xs]):.3f}",
                     f"{med([x['user_us_per_req'] for x in xs]):.3f}",
                     f"{med([x['sys_us_per_req'] for x in xs]):.3f}",
                     f"{med([x['p50_ms'] for x in xs]):.3f}",
                     f"{med([x['p99_ms'] for x in xs]):.3f}", len(xs)])
    b = results["B"]
    rb = med([x["rps"] for x in b])
    ratio = rb / ra if ra else float("nan")
    dp50 = med([x['p50_ms'] for x in b]) - med([x['p50_ms'] for x in a])
    dp99 = med([x['p99_ms'] for x in b]) - med([x['p99_ms'] for x in a])
    pair_ratios = [y["rps"] / x["rps"] for x, y in zip(a, b) if x["rps"]]
    has_bare = os.path.exists(bin_path(args, "example-service") + "-bare")
    desc = (f"A = `example-service{'-bare' if has_bare else ''} --no-loopwatch`"
            + (" (built without the CountingAllocator)" if has_bare
               else " (CountingAllocator still installed)")
            + "; B = `example-service` with loopwatch (probe, sampler, route layer, counting "
            "allocator, OTLP export to the agent)"
            + ("; C = B with `--no-route-layer`" if "C" in names else "")
            + ("; F = B with `--floor-layer` (an empty tower layer where the route layer goes: "
               "the floor any layer costs)" if "F" in names else "")
            + ("; D = `example-service --no-loopwatch` (the CountingAllocator only)"
               if "D" in names else "")
            + ("; P = `peer_service`: opentelemetry-instrumentation-tower metrics and a "
               "tokio-metrics `RuntimeMonitor` through the OTel SDK (PeriodicReader, OTLP gRPC "
               "to the agent, 1 s)" if "P" in names else "")
            + ("; Q = `peer_service --bare`" if "Q" in names else "") + ".")
    peer_line = ""
    if "P" in names:
        # Added cost as service time per request (the service is pinned and saturated):
        # 1/rps - 1/rps_A, per pair for the spread, and of the medians.
        p = results["P"]
        rp = med([x["rps"] for x in p])
        per_pair = [(1 / y["rps"] - 1 / x["rps"]) / (1 / z["rps"] - 1 / x["rps"])
                    for x, y, z in zip(a, b, p)
                    if x["rps"] and y["rps"] and z["rps"] and z["rps"] != x["rps"]]
        added = ((1 / rb - 1 / ra) / (1 / rp - 1 / ra)
                 if ra and rb and rp and rp != ra else float("nan"))
        cpu = {v: med([x["cpu_us_per_req"] for x in results[v]]) for v in ("A", "B", "P")}
        user = {v: med([x["user_us_per_req"] for x in results[v]]) for v in ("A", "B", "P")}
        cpu_pair = [(y["cpu_us_per_req"] - x["cpu_us_per_req"])
                    / (z["cpu_us_per_req"] - x["cpu_us_per_req"])
                    for x, y, z in zip(a, b, p) if z["cpu_us_per_req"] != x["cpu_us_per_req"]]
        peer_line = (f"\n\nthroughput ratio P/A = **{rp / ra:.4f}**; added service time per "
                     f"request (1/rps): loopwatch {(1 / rb - 1 / ra) * 1e9:+.0f} ns, peer "
                     f"{(1 / rp - 1 / ra) * 1e9:+.0f} ns; loopwatch added / peer added = "
                     f"**{added:.3f}** (target <= 0.333; per round: "
                     + ", ".join(f"{r:.3f}" for r in per_pair) + ")"
                     + f"\n\nservice CPU per request: loopwatch added "
                     f"{(cpu['B'] - cpu['A']) * 1e3:+.0f} ns, peer added "
                     f"{(cpu['P'] - cpu['A']) * 1e3:+.0f} ns; loopwatch added / peer added = "
                     f"**{(cpu['B'] - cpu['A']) / (cpu['P'] - cpu['A']):.3f}** (per round: "
                     + ", ".join(f"{r:.3f}" for r in cpu_pair) + ")"
                     + f"; user CPU only: loopwatch added {(user['B'] - user['A']) * 1e3:+.0f} "
                     f"ns, peer added {(user['P'] - user['A']) * 1e3:+.0f} ns, ratio "
                     f"**{(user['B'] - user['A']) / (user['P'] - user['A']):.3f}**")
    order = " ".join(["".join(names), "".join(names[::-1]), "..."])
    text = (f"### End-to-end overhead (wrk -t{args.threads} -c{args.conns} -d{args.duration}s, "
            f"service pinned to CPU 0, wrk + agent to CPU 1, {args.pairs} rounds in order "
            f"{order}, fresh process per run, 2 s warm-up, medians)\n\n"
            + desc + "\n\n"
            + md_table(["variant", "req/s", "ratio to A", "service CPU µs/request",
                        "user µs/request", "kernel µs/request", "p50 ms", "p99 ms", "runs"],
                       rows)
            + f"\n\nthroughput ratio B/A = **{ratio:.4f}** (target >= 0.985; per pair: "
            + ", ".join(f"{r:.3f}" for r in pair_ratios)
            + f"); p50 delta {dp50 * 1000:+.1f} us; p99 delta {dp99 * 1000:+.1f} us"
            + peer_line)
    out.table(text)


# ---------------------------------------------------------------- item 3: accuracy

def cmd_accuracy(args):
    out = Out(args, "probe_accuracy")
    blocks = args.blocks
    # Two passes: the runtime kept awake by the sleep-overshoot reference, and a quiet runtime
    # (nothing else in it: every block starts from quiet, with no request to nudge the probe).
    rows_lw = []
    for ref in ("on", "off"):
        r = subprocess.run([bin_path(args, "probe_accuracy"), "--repeats", str(args.repeats),
                            "--blocks", blocks, "--workers", str(args.workers),
                            "--sleep-reference", ref],
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
        rows_lw += [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    for x in rows_lw:
        out.row(x)
    node_rows = []
    if shutil.which("node"):
        nr = subprocess.run(["node", os.path.join(REPO, "benches", "node", "eventloop-delay.js"),
                             "10", str(args.repeats)], capture_output=True, text=True,
                            timeout=600)
        for line in nr.stdout.splitlines():
            if line.startswith("{"):
                x = json.loads(line)
                x["bench"] = "node_monitorEventLoopDelay"
                node_rows.append(x)
                out.row(x)
    interval = 10.0
    table_rows = []
    worst_over = 0.0
    worst_under_excess = 0.0
    worst_poll = 0.0
    for flavor, awake in [(f, a) for a in (True, False)
                          for f in ("current_thread", "multi_thread")]:
        for b in [int(v) for v in blocks.split(",")]:
            xs = [x for x in rows_lw if x["flavor"] == flavor and x["requested_ms"] == b
                  and x.get("sleep_reference", True) == awake]
            if not xs:
                continue
            for x in xs:
                reading = max(x["lw_delay_max_ms"], x["lw_stall_peak_ms"], x["lw_last_stall_ms"])
                # (a) against the blocking poll (first block poll start -> first block end: the
                # span in which the block can delay a task), (b) against the time every worker
                # was blocked (within it). On current_thread the two differ by the poll's own
                # overhead around the sleep; on multi_thread by the rendezvous spin.
                worst_over = max(worst_over, reading - x.get("blocking_poll_ms", x["injected_ms"]))
                worst_under_excess = max(worst_under_excess,
                                         (x["injected_ms"] - interval) - reading)
                tol = max(0.5, 0.02 * x["injected_ms"])
                worst_poll = max(worst_poll, x["task_monitor_poll_abs_err_ms"] / tol)
            nd = [n for n in node_rows if n["injected_ms"] == b]
            table_rows.append([
                flavor + ("" if awake else ", quiet"), b, f"{med([x['injected_ms'] for x in xs]):.2f}",
                f"{med([x.get('blocking_poll_ms', x['injected_ms']) for x in xs]):.2f}",
                f"{med([x['lw_delay_max_ms'] for x in xs]):.2f}",
                f"{med([x['lw_stall_peak_ms'] for x in xs]):.2f}",
                f"{med([x['lw_last_stall_ms'] for x in xs]):.2f}",
                f"{med([x['injected_ms'] - max(x['lw_delay_max_ms'], x['lw_stall_peak_ms'], x['lw_last_stall_ms']) for x in xs]):+.2f}",
                f"{med([x['task_monitor_poll_ms'] for x in xs]):.2f}",
                f"{med([x['sleep_overshoot_ms'] for x in xs]):.2f}" if awake else "-",
                f"{med([n['max_ms'] for n in nd]):.2f}" if nd else "-",
            ])
    text = ("### Probe accuracy (median of repeats; ms; loopwatch at default 10 ms probe, "
            "250 ms stall threshold, runtime built with loopwatch's UnparkHook; \"quiet\": "
            "nothing else runs in the runtime, so every block starts from a quiet runtime)\n\n"
            + md_table(["runtime", "requested", "injected: all workers blocked",
                        "blocking poll (first start -> first end)", "lw delay.max",
                        "lw stall gauge peak", "lw last_stall", "injected - lw reading",
                        "TaskMonitor poll", "sleep-overshoot max", "Node max (10 ms res)"],
                       table_rows)
            + f"\n\n(a) worst lw over-read, reading - blocking poll: {worst_over:+.3f} ms "
            + "(target <= +0.5 ms)  "
            + "\n(b) worst lw under-read beyond one probe interval, all workers blocked - "
            + f"interval - reading: {worst_under_excess:+.3f} ms "
            + "(target <= 0)  "
            + f"\n(c) worst TaskMonitor poll error / max(0.5 ms, 2%): {worst_poll:.3f} "
            + "(target <= 1)")
    out.table(text)


# ---------------------------------------------------------------- item 4: detection latency

class ReadyzPoller(threading.Thread):
    """Polls /readyz every `period` s on a keep-alive connection, recording status changes."""

    def __init__(self, port, period=0.002):
        super().__init__(daemon=True)
        self.port, self.period = port, period
        self.events = []  # (monotonic time, status)
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()

    def run(self):
        conn = None
        last = None
        while not self.stop_ev.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/readyz")
                r = conn.getresponse()
                r.read()
                st = r.status
            except (OSError, http.client.HTTPException):
                conn = None
                st = None
            now = time.monotonic()
            if st != last and st is not None:
                with self.lock:
                    self.events.append((now, st))
                last = st
            time.sleep(self.period)

    def first_after(self, t, status):
        with self.lock:
            for (ts, st) in self.events:
                if ts >= t and st == status:
                    return ts
        return None

    def current(self):
        with self.lock:
            return self.events[-1][1] if self.events else None


def cmd_detect(args):
    out = Out(args, "detection_latency")
    agent, aports = start_agent(args, args.out, "detect-agent")
    svc, port = start_service(args, args.out, "detect-svc", True, aports["grpc"])
    poller = ReadyzPoller(aports["admin"])
    poller.start()
    rows = []
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end and poller.current() != 200:
            time.sleep(0.05)
        time.sleep(2.0)
        for i in range(args.repeats):
            end = time.monotonic() + 20
            while time.monotonic() < end and poller.current() != 200:
                time.sleep(0.05)
            time.sleep(1.0)
            t_start = time.monotonic()
            st, _ = http_get(port, f"/block?ms={args.block_ms}", timeout=args.block_ms / 1e3 + 10)
            t_end = time.monotonic()
            end = time.monotonic() + 20
            while time.monotonic() < end and poller.first_after(t_end, 200) is None:
                time.sleep(0.01)
            t503 = poller.first_after(t_start, 503)
            t200 = poller.first_after(t_end, 200)
            row = {"bench": "detect", "repeat": i, "block_ms": args.block_ms,
                   "block_status": st,
                   "to_503_ms": (t503 - t_start) * 1e3 if t503 else None,
                   "503_during_stall": bool(t503 and t503 < t_end),
                   "to_200_after_end_ms": (t200 - t_end) * 1e3 if t200 else None,
                   "block_wall_ms": (t_end - t_start) * 1e3}
            rows.append(row)
            out.row(row)
    finally:
        poller.stop_ev.set()
        svc.stop()
        agent.stop()
    t503 = [r["to_503_ms"] for r in rows if r["to_503_ms"] is not None]
    t200 = [r["to_200_after_end_ms"] for r in rows if r["to_200_after_end_ms"] is not None]
    text = (f"### Detection latency (agent defaults: lag_enter 250 ms, hold 3 s; loopwatch "
            f"defaults; /block?ms={args.block_ms}; /readyz polled every 2 ms; "
            f"{len(rows)} stalls)\n\n"
            + md_table(["measure", "median ms", "min ms", "max ms", "target"], [
                ["stall start -> /readyz 503", f"{med(t503):.0f}",
                 f"{min(t503, default=float('nan')):.0f}",
                 f"{max(t503, default=float('nan')):.0f}", "<= 300, while stalled"],
                ["stall end -> /readyz 200", f"{med(t200):.0f}",
                 f"{min(t200, default=float('nan')):.0f}",
                 f"{max(t200, default=float('nan')):.0f}", "(hold 3 s by design)"],
            ])
            + f"\n\n503 seen while the stall was still going on: "
            + f"{sum(1 for r in rows if r['503_during_stall'])}/{len(rows)}")
    out.table(text)


# ---------------------------------------------------------------- item 5: idle cost

def start_node_idle(out_dir, name, resolution_ms, cpu=None):
    """benches/node/idle.js: an idle Node HTTP server, with monitorEventLoopDelay enabled at
    `resolution_ms` (0: none). Returns the Proc once it listens."""
    p = Proc(["node", os.path.join(REPO, "benches", "node", "idle.js"), str(resolution_ms)],
             out_dir, name, cpu=cpu)
    log = os.path.join(out_dir, f"{name}.log")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with open(log) as f:
            if "ready" in f.read():
                return p
        if p.p.poll() is not None:
            break
        time.sleep(0.05)
    p.stop()
    raise RuntimeError(f"node idle.js did not start (see {log})")


def measure_idle(pid, args):
    """CPU (schedstat, per thread and summed; utime+stime) and RSS of an idle process over
    args.duration after args.warmup."""
    time.sleep(args.warmup)
    c0, th0 = cpu_seconds(pid), sched_threads(pid)
    t0 = time.monotonic()
    time.sleep(args.duration)
    c1, th1 = cpu_seconds(pid), sched_threads(pid)
    wall = time.monotonic() - t0
    threads = {}
    for k, (c, n) in th1.items():
        c_0, n_0 = th0.get(k, (0.0, 0))
        threads[k] = {"cpu_pct": round((c - c_0) / wall * 100, 4),
                      "runs_per_s": round((n - n_0) / wall, 1)}
    return {"cpu_pct_of_core": sum(t["cpu_pct"] for t in threads.values()),
            "stat_cpu_pct_of_core": (c1 - c0) / wall * 100, "rss_mib": rss_mib(pid),
            "threads_pct": threads, "wall_s": wall}


def idle_with_busy_neighbour(args, aports, out):
    """The same idle measurement with the other CPU kept busy (a spinning process on CPU 1,
    the measured process on CPU 0): whether a wake-up's cost on this VM depends on the whole
    guest being idle or only on the measured process's own vCPU. Returns {variant: cpu %}."""
    spin = subprocess.Popen(pinned([sys.executable, "-c", "while True: pass"], 1))
    got = {}
    try:
        for variant in ("with", "node + monitorEventLoopDelay 10 ms"):
            if variant.startswith("node"):
                if not shutil.which("node"):
                    continue
                p = start_node_idle(args.out, "idle-neighbour-node", 10, cpu=0)
            else:
                p, _ = start_service(args, args.out, "idle-neighbour-with", True,
                                     aports["grpc"], workers=args.workers, cpu=0)
            try:
                row = {"bench": "idle_neighbour", "variant": variant,
                       **measure_idle(p.pid, args)}
                out.row(row)
                got[variant] = row["cpu_pct_of_core"]
            finally:
                p.stop()
    finally:
        spin.kill()
        spin.wait()
    return got


def cmd_idle(args):
    out = Out(args, "idle_cost")
    agent, aports = start_agent(args, args.out, "idle-agent")
    # "with, no hook": loopwatch on a runtime built without its UnparkHook (the probe thread
    # then looks at the quiet runtime every 25 ms instead of sleeping until a worker wakes).
    # The Node rows measure, in the same run, the baseline the target was set against
    # (monitorEventLoopDelay at 10 ms: 0.74% of a core when the target was set).
    variants = {"without": [], "with, no hook": ["--no-unpark-hook"], "with": []}
    node = shutil.which("node") is not None
    if node:
        variants.update({"node, no monitor": 0, "node + monitorEventLoopDelay 10 ms": 10})
    res = {v: [] for v in variants}
    try:
        for i in range(args.repeats):
            for variant, extra in variants.items():
                lw = variant in ("with", "with, no hook")
                tag = variant.replace(", ", "-").replace(" ", "-")
                if variant.startswith("node"):
                    svc = start_node_idle(args.out, f"idle-node{extra}-{i}", extra)
                else:
                    svc, _ = start_service(args, args.out, f"idle-{tag}{i}", lw,
                                           aports["grpc"], workers=args.workers, bare=not lw,
                                           extra=extra)
                try:
                    row = {"bench": "idle", "variant": variant, "repeat": i,
                           "workers": args.workers, **measure_idle(svc.pid, args)}
                    res[variant].append(row)
                    out.row(row)
                finally:
                    svc.stop()
        neighbour = idle_with_busy_neighbour(args, aports, out) if args.neighbour else {}
    finally:
        agent.stop()
    rows = []
    for v in variants:
        xs = res[v]
        names = sorted({k for x in xs for k in x["threads_pct"]})
        per = "; ".join(
            f"{k} {med([x['threads_pct'].get(k, {}).get('cpu_pct', 0) for x in xs]):.3f}% "
            f"({med([x['threads_pct'].get(k, {}).get('runs_per_s', 0) for x in xs]):.0f}/s)"
            for k in names)
        label = v if v.startswith("node") else f"{v} loopwatch"
        rows.append([label, f"{med([x['cpu_pct_of_core'] for x in xs]):.3f}",
                     f"{med([x['stat_cpu_pct_of_core'] for x in xs]):.3f}",
                     f"{med([x['rss_mib'] for x in xs]):.1f}", len(xs), per])
    cpu = {v: med([x['cpu_pct_of_core'] for x in res[v]]) for v in variants}
    delta = cpu["with"] - cpu["without"]
    delta_nohook = cpu["with, no hook"] - cpu["without"]
    rt = "current_thread" if args.workers == 0 else f"multi_thread({args.workers})"
    if node:
        node_cost = cpu["node + monitorEventLoopDelay 10 ms"] - cpu["node, no monitor"]
        scale = (f"; Node's monitorEventLoopDelay at 10 ms adds **{node_cost:.3f}%** in this "
                 f"run (0.74% when the target was set), so loopwatch costs "
                 f"**{delta / node_cost:.2f}×** Node's monitor (the target is 0.3 / 0.74 = "
                 f"0.41× of it on the machine of the target)" if node_cost > 0 else "")
    else:
        scale = "; node not found: the Node baseline was not measured"
    text = (f"### Idle cost (example-service, {rt} runtime, idle {args.duration:.0f} s after "
            f"{args.warmup:.0f} s warm-up, exporting to a running agent; CPU = sum of the "
            f"threads' /proc/PID/task/TID/schedstat run time; utime+stime ({1000 // TICK} ms "
            f"ticks) for comparison)\n\n"
            + md_table(["variant", "CPU % of a core (schedstat)", "CPU % (utime+stime)",
                        "RSS MiB", "runs", "per thread: CPU % (runs/s)"], rows)
            + f"\n\nloopwatch adds **{delta:.3f}% of a core** (target < 0.3%); without the "
            f"unpark hook {delta_nohook:.3f}%" + scale)
    if neighbour:
        text += ("\n\nThe same idle processes with the other CPU kept busy (a spinning process "
                 "on CPU 1, the measured one on CPU 0; one run each): "
                 + "; ".join(f"{v} **{c:.3f}%**" for v, c in neighbour.items()))
    out.table(text)


# ---------------------------------------------------------------- item 6: ingest

def agent_variants(args):
    """[(receiver name, agent binary)]: `--agent-bin NAME=PATH` (repeatable) for A/B builds
    alternated in one run; the default is the agent of --bin-dir, named `agent`."""
    if not args.agent_bin:
        return [("agent", None)]
    out = []
    for spec in args.agent_bin:
        name, _, path = spec.partition("=")
        if not path or not os.path.exists(path):
            sys.exit(f"harness: --agent-bin {spec!r}: expected NAME=PATH to an existing binary")
        out.append((name, path))
    return out


def start_receiver(args, kind, name, cpu=None):
    """Starts `kind` (an agent variant name or `rotel`); returns (Proc, ports)."""
    if kind == "rotel":
        return start_rotel(args.out, name, cpu=cpu)
    return start_agent(args, args.out, name, cpu=cpu, binary=dict(agent_variants(args))[kind])


def one_ingest(args, kind, cpu_recv, cpu_load, tag):
    name = f"ingest-{kind}-{tag}"
    p, ports = start_receiver(args, kind, name, cpu=cpu_recv)
    try:
        time.sleep(2.0)
        idle_rss = rss_mib(p.pid)
        sampler = RssSampler(p.pid)
        sampler.start()
        c0 = cpu_seconds(p.pid)
        load = [bin_path(args, "otlp_load"), "--url",
                f"http://127.0.0.1:{ports['http']}/v1/metrics",
                "--conns", str(args.conns), "--duration", str(args.duration)]
        r = subprocess.run(pinned(load, cpu_load), capture_output=True, text=True,
                           timeout=args.duration + 60)
        c1 = cpu_seconds(p.pid)
        time.sleep(1.0)
        after_rss = rss_mib(p.pid)
        peak = max(sampler.finish(), status_kb(p.pid, "VmHWM") / 1024.0)
        lr = json.loads(r.stdout.strip().splitlines()[-1])
        cpu = c1 - c0
        return {"bench": "ingest", "receiver": kind, "pinned": cpu_recv is not None,
                "idle_rss_mib": idle_rss, "peak_rss_mib": peak, "rss_after_mib": after_rss,
                "cpu_s": cpu, "dp_per_cpu_s": lr["datapoints"] / cpu if cpu > 0 else None,
                "dp_per_s": lr["datapoints"] / lr["elapsed_s"], **lr}
    finally:
        p.stop()


def one_paced(args, kind, tag):
    name = f"paced-{kind}-{tag}"
    p, ports = start_receiver(args, kind, name)
    try:
        time.sleep(2.0)
        idle_rss = rss_mib(p.pid)
        c0 = sum(c for c, _ in sched_threads(p.pid).values())
        t0 = time.monotonic()
        load = [bin_path(args, "otlp_load"), "--url",
                f"http://127.0.0.1:{ports['http']}/v1/metrics",
                "--services", "10", "--rate", "1", "--duration", str(args.paced_duration)]
        r = subprocess.run(load, capture_output=True, text=True,
                           timeout=args.paced_duration + 60)
        wall = time.monotonic() - t0
        c1 = sum(c for c, _ in sched_threads(p.pid).values())
        lr = json.loads(r.stdout.strip().splitlines()[-1])
        return {"bench": "paced", "receiver": kind, "idle_rss_mib": idle_rss,
                "rss_mib": rss_mib(p.pid), "cpu_pct_of_core": (c1 - c0) / wall * 100, **lr}
    finally:
        p.stop()


def cmd_ingest(args):
    out = Out(args, "agent_ingest")
    kinds = [name for name, _ in agent_variants(args)] + ["rotel"]
    rows = []
    for mode in ("pinned", "unpinned"):
        for i in range(args.repeats):
            for kind in kinds:
                cr, cl = (0, 1) if mode == "pinned" else (None, None)
                row = one_ingest(args, kind, cr, cl, f"{mode}{i}")
                row["mode"] = mode
                rows.append(row)
                out.row(row)
    paced = []
    for i in range(args.paced_repeats):
        for kind in kinds:
            row = one_paced(args, kind, str(i))
            paced.append(row)
            out.row(row)
    trows = []
    for mode in ("pinned", "unpinned"):
        for kind in kinds:
            xs = [x for x in rows if x["mode"] == mode and x["receiver"] == kind]
            trows.append([mode, kind, f"{med([x['dp_per_cpu_s'] for x in xs]) / 1e6:.3f}",
                          f"{med([x['dp_per_s'] for x in xs]) / 1e3:.0f}",
                          f"{med([x['idle_rss_mib'] for x in xs]):.1f}",
                          f"{max([x['peak_rss_mib'] for x in xs], default=float('nan')):.1f}",
                          f"{med([x['rss_after_mib'] for x in xs]):.1f}",
                          sum(x["errors"] for x in xs), len(xs)])
    prows = []
    for kind in kinds:
        xs = [x for x in paced if x["receiver"] == kind]
        prows.append([kind, f"{med([x['cpu_pct_of_core'] for x in xs]):.3f}",
                      f"{med([x['idle_rss_mib'] for x in xs]):.1f}",
                      f"{med([x['rss_mib'] for x in xs]):.1f}", sum(x["errors"] for x in xs)])
    size = rows[0]["payload_bytes"] if rows else "?"
    dps = rows[0]["datapoints_per_request"] if rows else "?"
    text = (f"### Agent ingest vs Rotel (OTLP/HTTP protobuf, {size} B payload, {dps} datapoints, "
            f"{args.conns} keep-alive connections, {args.duration:.0f} s per run, fresh "
            f"processes alternated, {args.repeats} repeats; pinned = receiver on CPU 0, "
            f"load on CPU 1)\n\n"
            + md_table(["mode", "receiver", "M datapoints / CPU-s", "k datapoints / s",
                        "idle RSS MiB", "peak RSS MiB (max)", "RSS after MiB", "errors", "runs"],
                       trows)
            + f"\n\n10 services pushing once a second for {args.paced_duration:.0f} s "
            + f"(unpinned, {args.paced_repeats} repeat(s); CPU = sum of the receiver's threads' "
            + "schedstat run time):\n\n"
            + md_table(["receiver", "CPU % of a core", "idle RSS MiB", "RSS MiB after",
                        "errors"], prows))
    ratios = []
    for mode in ("pinned", "unpinned"):
        rotel = med([x["dp_per_cpu_s"] for x in rows
                     if x["mode"] == mode and x["receiver"] == "rotel"])
        for kind in kinds[:-1]:
            a = med([x["dp_per_cpu_s"] for x in rows
                     if x["mode"] == mode and x["receiver"] == kind])
            ratios.append(f"{mode} {kind}/rotel = {a / rotel:.3f}")
    text += "\n\ndatapoints per CPU-second, receiver / Rotel (medians): " + "; ".join(ratios)
    out.table(text)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "target", "bench-results", "manual"))
    ap.add_argument("--bin-dir", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "release"))
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("e2e")
    e.add_argument("--pairs", type=int, default=5)
    e.add_argument("--duration", type=int, default=10)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--conns", type=int, default=64)
    e.add_argument("--variants", default="A,B",
                   help="A,B plus optional C (no route layer), F (an empty layer in its "
                        "place) and D (allocator only), to attribute B's cost, P (the peer stack, peer_service) and Q (peer_service "
                        "--bare)")
    a = sub.add_parser("accuracy")
    a.add_argument("--repeats", type=int, default=3)
    a.add_argument("--blocks", default="1,5,20,100,500,2000")
    a.add_argument("--workers", type=int, default=2)
    d = sub.add_parser("detect")
    d.add_argument("--repeats", type=int, default=5)
    d.add_argument("--block-ms", type=int, default=1000)
    i = sub.add_parser("idle")
    i.add_argument("--repeats", type=int, default=2)
    i.add_argument("--duration", type=float, default=30.0)
    i.add_argument("--warmup", type=float, default=3.0)
    i.add_argument("--workers", type=int, default=0)
    i.add_argument("--neighbour", action="store_true",
                   help="also measure loopwatch and Node's monitor once with the other CPU busy")
    g = sub.add_parser("ingest")
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--duration", type=float, default=10.0)
    g.add_argument("--conns", type=int, default=4)
    g.add_argument("--paced-repeats", type=int, default=1)
    g.add_argument("--paced-duration", type=float, default=30.0)
    g.add_argument("--agent-bin", action="append", default=[], metavar="NAME=PATH",
                   help="agent build to measure (repeatable: A/B builds alternated in one "
                        "run); default: loopwatch-agent from --bin-dir")
    args = ap.parse_args()
    {"e2e": cmd_e2e, "accuracy": cmd_accuracy, "detect": cmd_detect, "idle": cmd_idle,
     "ingest": cmd_ingest}[args.cmd](args)


if __name__ == "__main__":
    main()
