"""The pod's shutdown contract on live processes: the Deployment's exact preStop command against a
real agent with an in-flight request, then SIGTERM to the app and to the sidecar, all inside the
manifest's terminationGracePeriodSeconds (the kubelet's SIGKILL deadline, a protocol bound)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import K8S, REPO, find_doc
from lwstack import http, start_agent, start_example, wait_until


@pytest.fixture()
def pod(tmp_path):
    bin_dir = Path(os.environ.get("LOOPWATCH_BIN_DIR", REPO / "target" / "debug"))
    dep = find_doc(K8S / "base" / "deployment.yaml", "Deployment")
    app = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in app["env"] if "value" in e and e["name"] != "OTEL_EXPORTER_OTLP_ENDPOINT"}
    env["OTEL_RESOURCE_ATTRIBUTES"] = "service.instance.id=drain-test-pod"
    agent, ports = start_agent(bin_dir, tmp_path, "agent-drain")
    svc, addr = start_example(bin_dir, tmp_path, "example-drain", ports["grpc"], env)
    try:
        yield dep, agent, ports["admin"], svc, addr
    finally:
        svc.stop()
        agent.stop()


def test_prestop_drain_then_sigterm_fits_the_grace_period(pod):
    dep, agent, admin, svc, addr = pod
    spec = dep["spec"]["template"]["spec"]
    grace = spec["terminationGracePeriodSeconds"]
    hook = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert shutil.which(hook[0]), f"{hook[0]} not installed"

    def ready():
        status, body = http("GET", f"http://{admin}/readyz", 2)
        return status == 200 and json.loads(body).get("services", 0) >= 1

    wait_until(ready, timeout=30, what=f"agent ready with the service reporting (logs: {agent.log_path})")

    # An in-flight request when the pod is deleted.
    done = {}

    def inflight():
        done["status"] = http("GET", f"http://{addr}/block?ms=1500", timeout=30)[0]
        done["at"] = time.monotonic()

    t = threading.Thread(target=inflight, daemon=True)
    t.start()
    time.sleep(0.2)

    start = time.monotonic()
    # The hook's exact argv; only the agent's address differs from the pod (a free port here).
    argv = [a.replace("127.0.0.1:9464", admin) for a in hook]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=grace)
    hook_done = time.monotonic()
    assert res.returncode == 0, (argv, res.stdout, res.stderr)
    answer = json.loads(res.stdout)
    print(f"drain answer: {answer}")
    assert answer["drained"] is True, answer
    assert answer["timeout_seconds"] == pytest.approx(20), answer

    status, body = http("GET", f"http://{admin}/readyz", 2)
    assert status == 503 and "draining" in body.decode(), body
    if any(s.get("active_requests") is not None for s in answer.get("services", [])):
        # The service reports active requests: the drain must have waited for the in-flight one.
        t.join(timeout=30)
        assert done.get("at", float("inf")) <= hook_done, answer

    t.join(timeout=30)
    assert done.get("status") == 200

    # Kubelet order: SIGTERM to the app, then (native sidecar) to the agent.
    svc.popen.send_signal(signal.SIGTERM)
    assert svc.popen.wait(timeout=grace) == 0, svc.tail()
    agent.popen.send_signal(signal.SIGTERM)
    assert agent.popen.wait(timeout=grace) == 0, agent.tail()
    total = time.monotonic() - start
    assert total < grace, f"shutdown took {total:.1f}s, past terminationGracePeriodSeconds={grace}"
