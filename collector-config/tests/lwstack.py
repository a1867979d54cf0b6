"""Process helpers for the live tests: loopwatch-agent, example-service and a real Prometheus,
all on 127.0.0.1 with free ports, every wait bounded."""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

AGENT_LINE = re.compile(
    r"loopwatch-agent listening grpc=(?P<grpc>\S+) http=(?P<http>\S+) admin=(?P<admin>\S+)"
)
EXAMPLE_LINE = re.compile(r"example-service listening on http://(?P<addr>\S+)")


def wait_until(fn, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Calls fn until it returns a truthy value or timeout seconds pass; returns that value.
    Raises AssertionError naming `what` (and the last exception) on timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported below
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, timeout: float = 5.0, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class Proc:
    """A child process whose stdout+stderr go to a log file and, line by line, to a queue."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self._lines: queue.Queue[str] = queue.Queue()
        self._log = open(self.log_path, "w", encoding="utf-8")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._log.write(line)
            self._log.flush()
            self._lines.put(line)

    def wait_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                line = self._lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.popen.poll() is not None and self._lines.empty():
                    break
                continue
            m = pattern.search(line)
            if m:
                return m
        raise AssertionError(
            f"{self.name}: no line matching {pattern.pattern!r} within {timeout}s "
            f"(exit code {self.popen.poll()}); log tail:\n{self.tail()}"
        )

    def tail(self, n: int = 30) -> str:
        try:
            return "".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        self._reader.join(timeout=2)
        self._log.close()


@dataclass
class Replica:
    """One simulated pod: an example-service and its own agent."""

    pod: str
    agent: Proc
    agent_admin: str  # host:port
    agent_grpc: str
    service: Proc
    service_addr: str  # host:port

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        return http("GET", f"http://{self.service_addr}{path}", timeout=timeout)


def start_agent(bin_dir: Path, log_dir: Path, name: str) -> tuple[Proc, dict[str, str]]:
    proc = Proc(
        name,
        [
            str(bin_dir / "loopwatch-agent"),
            "--grpc-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0",
        ],
        log_dir,
    )
    m = proc.wait_line(AGENT_LINE, timeout=30)
    return proc, m.groupdict()


def start_example(bin_dir: Path, log_dir: Path, name: str, grpc: str, env: dict[str, str]) -> tuple[Proc, str]:
    full_env = dict(env)
    full_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://{grpc}"
    proc = Proc(name, [str(bin_dir / "example-service"), "--listen", "127.0.0.1:0"], log_dir, env=full_env)
    m = proc.wait_line(EXAMPLE_LINE, timeout=30)
    return proc, m.group("addr")


@dataclass
class Prometheus:
    proc: Proc
    url: str
    config_path: Path

    def query(self, expr: str) -> list[dict]:
        """Instant query; returns the result vector. Raises on a PromQL error (a broken query)."""
        qs = urllib.parse.urlencode({"query": expr})
        status, body = http("GET", f"{self.url}/api/v1/query?{qs}", timeout=10)
        doc = json.loads(body)
        if status != 200 or doc.get("status") != "success":
            raise PromQLError(f"{expr!r}: HTTP {status}: {doc.get('error', body[:300])}")
        data = doc["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def series(self, match: str) -> list[dict]:
        qs = urllib.parse.urlencode({"match[]": match, "start": time.time() - 300})
        status, body = http("GET", f"{self.url}/api/v1/series?{qs}", timeout=10)
        doc = json.loads(body)
        if status != 200 or doc.get("status") != "success":
            raise PromQLError(f"series {match!r}: HTTP {status}: {doc.get('error')}")
        return doc["data"]

    def label_values(self, label: str, match: str | None) -> list[str]:
        qs = urllib.parse.urlencode({"match[]": match} if match else {})
        status, body = http("GET", f"{self.url}/api/v1/label/{label}/values?{qs}", timeout=10)
        doc = json.loads(body)
        if status != 200 or doc.get("status") != "success":
            raise PromQLError(f"label_values({match!r}, {label}): HTTP {status}: {doc.get('error')}")
        return doc["data"]

    def targets_up(self) -> list[dict]:
        status, body = http("GET", f"{self.url}/api/v1/targets?state=active", timeout=10)
        return json.loads(body)["data"]["activeTargets"] if status == 200 else []


class PromQLError(Exception):
    """Prometheus rejected a query."""


def prometheus_config(scrape_config_file: Path, targets: list[dict[str, str]]) -> dict:
    """The shipped scrape job with kubernetes_sd replaced by static targets that carry the same
    __meta_kubernetes_* labels kubernetes_sd would set; the shipped relabel_configs stay as they are.
    scrape_interval 1 s for the tests."""
    shipped = yaml.safe_load(scrape_config_file.read_text())
    job = dict(shipped["scrape_configs"][0])
    assert "kubernetes_sd_configs" in job, "scrape job no longer uses kubernetes_sd_configs"
    del job["kubernetes_sd_configs"]
    job["scrape_interval"] = "1s"
    job["scrape_timeout"] = "1s"
    job["static_configs"] = [
        {"targets": [t["__address__"]], "labels": {k: v for k, v in t.items() if k != "__address__"}}
        for t in targets
    ]
    return {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": [job]}


def start_prometheus(work_dir: Path, log_dir: Path, config: dict) -> Prometheus:
    cfg = work_dir / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    check = subprocess.run(["promtool", "check", "config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, f"promtool rejected the generated config:\n{check.stdout}\n{check.stderr}"
    last = None
    for attempt in range(3):
        port = free_port()
        proc = Proc(
            f"prometheus-{attempt}",
            [
                "prometheus",
                f"--config.file={cfg}",
                f"--storage.tsdb.path={work_dir / f'tsdb-{attempt}'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            log_dir,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: proc.popen.poll() is None and http("GET", f"{url}/-/ready", 2)[0] == 200,
                       timeout=30, what="prometheus /-/ready")
            return Prometheus(proc, url, cfg)
        except AssertionError as err:
            last = f"{err}\n{proc.tail()}"
            proc.stop()
    raise AssertionError(f"prometheus did not start: {last}")


@dataclass
class Stack:
    """3 replicas (example-service + own agent) and a Prometheus scraping the 3 agents."""

    namespace: str
    service_name: str
    replicas: list[Replica]
    prometheus: Prometheus
    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def logs_hint(self) -> str:
        return f"(process logs in {self.log_dir})"
