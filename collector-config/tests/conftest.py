"""Shared fixtures for the collector-config tests. Run through ./run.sh, which installs the tools
and exports their locations; every tool is required (a missing tool fails, it is never skipped)."""

from __future__ import annotations

import os
import threading
import shutil
import time
from pathlib import Path

import pytest
import yaml

from lwstack import Replica, Stack, http, prometheus_config, start_agent, start_example, start_prometheus, wait_until

TESTS = Path(__file__).resolve().parent
CC = TESTS.parent  # collector-config/
REPO = CC.parent
K8S = CC / "k8s"

# Kubernetes version the core manifests are validated against (native sidecars are GA since 1.33).
PINNED_K8S = "1.33.0"
# Oldest version the README claims (native sidecars on by default since 1.29).
OLDEST_K8S = "1.29.0"


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def find_doc(path: Path, kind: str, name: str | None = None) -> dict:
    for d in load_docs(path):
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name):
            return d
    raise AssertionError(f"no {kind} {name or ''} in {path}")


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run the tests through collector-config/tests/run.sh")
    return value


@pytest.fixture(scope="session")
def deployment() -> dict:
    return find_doc(K8S / "base" / "deployment.yaml", "Deployment")


@pytest.fixture(scope="session")
def adapter_rules() -> list[dict]:
    cm = find_doc(K8S / "prometheus-adapter" / "adapter-config.yaml", "ConfigMap")
    return yaml.safe_load(cm["data"]["config.yaml"])["rules"]


@pytest.fixture(scope="session")
def dashboard() -> dict:
    import json

    return json.loads((CC / "grafana" / "loopwatch-dashboard.json").read_text())


def _container_env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _kubelet_expand(value: str, env: dict[str, str]) -> str:
    """$(VAR) expansion as the kubelet does it for env values."""
    for k, v in env.items():
        value = value.replace(f"$({k})", v)
    return value


@pytest.fixture(scope="session")
def stack(tmp_path_factory, deployment) -> Stack:
    """3 simulated pods of the Deployment (example-service + its own loopwatch-agent each) and a real
    Prometheus that scrapes the 3 agents with the shipped relabelling rules."""
    bin_dir = Path(os.environ.get("LOOPWATCH_BIN_DIR", REPO / "target" / "debug"))
    for b in ("loopwatch-agent", "example-service"):
        if not (bin_dir / b).is_file():
            raise RuntimeError(f"{bin_dir / b} not found (build the workspace or set LOOPWATCH_BIN_DIR)")
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        raise RuntimeError("prometheus/promtool not on PATH (run.sh installs them)")

    work = tmp_path_factory.mktemp("stack")
    log_dir = work / "logs"
    log_dir.mkdir()
    ns = deployment["metadata"]["namespace"]
    tmpl = deployment["spec"]["template"]
    app = tmpl["spec"]["containers"][0]
    app_env = _container_env(app)
    annotations = tmpl["metadata"]["annotations"]
    pods = [f"{deployment['metadata']['name']}-5d8f7c9b4-{s}" for s in ("a1b2c", "d3e4f", "g5h6k")]

    procs = []
    procs_stop_hooks = []
    replicas: list[Replica] = []
    try:
        for i, pod in enumerate(pods):
            agent, ports = start_agent(bin_dir, log_dir, f"agent-{i}")
            procs.append(agent)
            field_env = {"POD_NAME": pod, "POD_NAMESPACE": ns}
            env = {k: _kubelet_expand(v, field_env) for k, v in app_env.items() if k != "OTEL_EXPORTER_OTLP_ENDPOINT"}
            svc, addr = start_example(bin_dir, log_dir, f"example-{i}", ports["grpc"], env)
            procs.append(svc)
            replicas.append(Replica(pod, agent, ports["admin"], ports["grpc"], svc, addr))

        targets = []
        for r in replicas:
            host, port = r.agent_admin.rsplit(":", 1)
            targets.append({
                "__address__": r.agent_admin,
                # What kubernetes_sd (role: pod) sets for this pod:
                "__meta_kubernetes_namespace": ns,
                "__meta_kubernetes_pod_name": r.pod,
                "__meta_kubernetes_pod_ip": host,
                "__meta_kubernetes_pod_label_app_kubernetes_io_name": tmpl["metadata"]["labels"]["app.kubernetes.io/name"],
                "__meta_kubernetes_pod_annotation_prometheus_io_scrape": annotations["prometheus.io/scrape"],
                "__meta_kubernetes_pod_annotation_prometheus_io_path": annotations["prometheus.io/path"],
                # The only difference from a cluster: each test agent has its own port.
                "__meta_kubernetes_pod_annotation_prometheus_io_port": port,
            })
        prom = start_prometheus(work, log_dir, prometheus_config(K8S / "prometheus" / "scrape-config.yaml", targets))
        procs.append(prom.proc)

        # Some traffic so per-route metrics exist: bounded count per replica.
        for r in replicas:
            for _ in range(20):
                r.get("/")
            for _ in range(2):
                r.get("/fail")
        # Then a steady trickle for the whole session, so per-route rates over any window the
        # dashboard uses are real numbers (not 0/0): one request per replica every 250 ms,
        # bounded to 10 minutes / 2400 rounds, stopped at teardown.
        stop_traffic = threading.Event()

        def trickle():
            for i in range(2400):
                if stop_traffic.wait(0.25):
                    return
                for r in replicas:
                    try:
                        r.get("/fail" if i % 25 == 0 else "/", timeout=2)
                    except Exception:  # noqa: BLE001 - a blocked replica is part of some tests
                        pass

        traffic = threading.Thread(target=trickle, name="traffic", daemon=True)
        traffic.start()
        procs_stop_hooks.append(lambda: (stop_traffic.set(), traffic.join(timeout=5)))

        stack = Stack(ns, app_env["OTEL_SERVICE_NAME"], replicas, prom, log_dir, procs)

        def all_up():
            t = prom.targets_up()
            return len(t) == 3 and all(x["health"] == "up" for x in t)

        wait_until(all_up, timeout=60, what=f"3 agent targets up in Prometheus {stack.logs_hint()}")

        def pressure_for_all_pods():
            res = prom.query(f'count by (pod) (loopwatch_pressure{{namespace="{ns}"}})')
            return {x["metric"].get("pod") for x in res} == set(pods)

        wait_until(pressure_for_all_pods, timeout=90, interval=1,
                   what=f"loopwatch_pressure for all 3 pods in Prometheus {stack.logs_hint()}")
        yield stack
    finally:
        for hook in procs_stop_hooks:
            hook()
        # Services first (their final export goes to a live agent), then agents, then Prometheus.
        for p in sorted(procs, key=lambda p: (not p.name.startswith("example"), p.name.startswith("prometheus"))):
            p.stop()
