"""Static checks of the Kubernetes manifests: kubernetes-validate --strict on a pinned version,
kustomize layout, and the contracts between probes, drain and grace period."""

from __future__ import annotations

import copy
import math
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import CC, K8S, OLDEST_K8S, PINNED_K8S, find_doc, load_docs, required_env

# Core kinds validated by kubernetes-validate (it has no schema for CRDs such as ScaledObject and
# only warns on them, so those are validated by test_keda.py instead).
CORE_FILES = [
    K8S / "base" / "namespace.yaml",
    K8S / "base" / "deployment.yaml",
    K8S / "base" / "service.yaml",
    K8S / "base" / "pdb.yaml",
    K8S / "overlays" / "hpa" / "hpa.yaml",
    K8S / "prometheus-adapter" / "adapter-config.yaml",
    CC / "otelcol" / "deployment.yaml",
]
CRD_FILES = [
    K8S / "overlays" / "keda-prometheus" / "scaledobject.yaml",
    K8S / "overlays" / "keda-metrics-api" / "scaledobject.yaml",
]


def kubernetes_validate(files: list[Path], version: str) -> subprocess.CompletedProcess:
    exe = required_env("LOOPWATCH_KUBERNETES_VALIDATE")
    return subprocess.run(
        [exe, "--strict", "-k", version, *map(str, files)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("version", [PINNED_K8S, OLDEST_K8S])
@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(CC)))
def test_core_manifest_validates_strict(path, version):
    res = kubernetes_validate([path], version)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    # Every object of the file was checked against a schema (not skipped as unknown).
    assert "Couldn't find schema" not in out, out
    passed = re.findall(r"passed for resource", out)
    assert len(passed) == len(load_docs(path)), out


def test_strict_validation_rejects_unknown_field(tmp_path):
    """Negative control: the validator really is strict (a typo in a probe is an error)."""
    dep = find_doc(K8S / "base" / "deployment.yaml", "Deployment")
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(bad))
    res = kubernetes_validate([f], PINNED_K8S)
    assert res.returncode != 0
    assert "periodSecond" in res.stdout + res.stderr


def test_native_sidecar_field_needs_modern_kubernetes():
    """restartPolicy on an init container does not exist before 1.28: validating against 1.27 must
    fail on exactly that field, proving the sidecar is really declared the native way."""
    res = kubernetes_validate([K8S / "base" / "deployment.yaml"], "1.27.0")
    assert res.returncode != 0
    assert "restartPolicy" in res.stdout + res.stderr


def test_every_yaml_is_used_by_a_kustomization():
    """No file rots unreferenced: each manifest is a resource of some kustomization, and every
    resource a kustomization lists exists."""
    used: set[Path] = set()
    kustomizations = sorted(K8S.rglob("kustomization.yaml"))
    assert {p.parent.name for p in kustomizations} >= {"base", "hpa", "keda-prometheus", "keda-metrics-api"}
    for k in kustomizations:
        doc = yaml.safe_load(k.read_text())
        assert doc["kind"] == "Kustomization"
        for r in doc["resources"]:
            target = (k.parent / r).resolve()
            assert target.exists(), f"{k}: resource {r} does not exist"
            if target.is_dir():
                assert (target / "kustomization.yaml").exists(), f"{k}: {r} is not a kustomization"
            else:
                used.add(target)
    manifests = {
        p.resolve()
        for p in K8S.rglob("*.yaml")
        if p.name != "kustomization.yaml" and p.parent.name not in ("prometheus", "prometheus-adapter")
    }
    assert manifests - used == set(), f"manifests not referenced by any kustomization: {manifests - used}"


def test_overlays_use_exactly_one_autoscaler():
    for name, kind in [("hpa", "HorizontalPodAutoscaler"), ("keda-prometheus", "ScaledObject"),
                       ("keda-metrics-api", "ScaledObject")]:
        k = yaml.safe_load((K8S / "overlays" / name / "kustomization.yaml").read_text())
        kinds = []
        for r in k["resources"]:
            p = K8S / "overlays" / name / r
            if p.is_file():
                kinds += [d["kind"] for d in load_docs(p)]
        assert kinds.count(kind) == 1 and len(kinds) == 1, (name, kinds)


@pytest.fixture(scope="module")
def pod_spec():
    return find_doc(K8S / "base" / "deployment.yaml", "Deployment")["spec"]["template"]["spec"]


def test_agent_is_a_native_sidecar(pod_spec):
    agents = [c for c in pod_spec["initContainers"] if c["name"] == "loopwatch-agent"]
    assert len(agents) == 1
    agent = agents[0]
    assert agent["restartPolicy"] == "Always"
    args = agent["args"]
    flags = dict(zip(args[::2], args[1::2]))
    # OTLP receivers only on loopback (same pod), admin reachable by kubelet/Prometheus/KEDA.
    assert flags["--grpc-listen"].startswith("127.0.0.1:")
    assert flags["--http-listen"].startswith("127.0.0.1:")
    assert flags["--admin-listen"] == "0.0.0.0:9464"
    assert agent["startupProbe"]["httpGet"]["path"] == "/livez"


def test_app_points_at_agent(pod_spec):
    app = pod_spec["containers"][0]
    agent = pod_spec["initContainers"][0]
    env = {e["name"]: e.get("value") for e in app["env"]}
    grpc_port = dict(zip(agent["args"][::2], agent["args"][1::2]))["--grpc-listen"].split(":")[1]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://127.0.0.1:{grpc_port}"
    assert env["OTEL_SERVICE_NAME"]
    assert "service.instance.id=$(POD_NAME)" in env["OTEL_RESOURCE_ATTRIBUTES"]
    # Until the app listens, the agent's /readyz (200 with no service yet) must not make the pod
    # ready: a startup probe on the app's own port gates readiness and liveness.
    assert app["startupProbe"]["tcpSocket"]["port"] in {p["name"] for p in app["ports"]}
    assert app["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9464}
    assert app["livenessProbe"]["httpGet"] == {
        "path": "/livez?service=" + env["OTEL_SERVICE_NAME"],
        "port": 9464,
    }


def test_liveness_is_conservative(pod_spec):
    app = pod_spec["containers"][0]
    agent = pod_spec["initContainers"][0]

    def window(p):
        return p["periodSeconds"] * p["failureThreshold"]

    # The app is restarted only after a long failure window, longer than readiness needs to react
    # and longer than the agent's own liveness window (a broken agent restarts first).
    assert window(app["livenessProbe"]) >= 60
    assert window(app["livenessProbe"]) > window(app["readinessProbe"])
    assert window(app["livenessProbe"]) > window(agent["livenessProbe"])
    assert app["livenessProbe"]["timeoutSeconds"] >= app["readinessProbe"]["timeoutSeconds"]


def test_prestop_drain_and_grace_period(pod_spec):
    app = pod_spec["containers"][0]
    cmd = app["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[:5] == ["curl", "-fsS", "-X", "POST", cmd[4]]
    m = re.fullmatch(r"http://127\.0\.0\.1:9464/drain\?timeout=(\d+)s", cmd[4])
    assert m, cmd
    drain = int(m.group(1))
    grace = pod_spec["terminationGracePeriodSeconds"]
    # drain + app graceful shutdown (10 s) + agent final flush: the kubelet must not SIGKILL mid-drain.
    assert grace >= drain + 15, (drain, grace)
    assert grace <= drain + 60, "grace period far beyond the drain deadline slows every rollout"


def test_resources_set(pod_spec):
    for c in pod_spec["initContainers"] + pod_spec["containers"]:
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (c["name"], kind)


def test_scrape_annotations_target_agent(pod_spec):
    dep = find_doc(K8S / "base" / "deployment.yaml", "Deployment")
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/path"] == "/metrics"
    agent = pod_spec["initContainers"][0]
    assert int(ann["prometheus.io/port"]) == agent["ports"][0]["containerPort"] == 9464


def test_pdb_matches_deployment():
    dep = find_doc(K8S / "base" / "deployment.yaml", "Deployment")
    pdb = find_doc(K8S / "base" / "pdb.yaml", "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == dep["spec"]["selector"]
    hpa = find_doc(K8S / "overlays" / "hpa" / "hpa.yaml", "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]
    assert "replicas" not in dep["spec"], "the autoscaler owns the replica count"


def test_hpa_uses_adapter_metric(adapter_rules):
    hpa = find_doc(K8S / "overlays" / "hpa" / "hpa.yaml", "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert name in {r["name"]["as"] for r in adapter_rules}
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "1"}
    b = hpa["spec"]["behavior"]
    assert b["scaleUp"]["stabilizationWindowSeconds"] < b["scaleDown"]["stabilizationWindowSeconds"]


def test_adapter_rules_are_well_formed(adapter_rules):
    for r in adapter_rules:
        assert set(r) == {"seriesQuery", "resources", "name", "metricsQuery"}, r
        assert r["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        assert re.search(r["name"]["matches"], r["name"]["as"])
        for tpl in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert tpl in r["metricsQuery"], (tpl, r["metricsQuery"])
