"""KEDA ScaledObjects validated with npm kubernetes-models + @kubernetes-models/keda (schema
validation plus an unknown-field check), and the trigger contracts checked."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from conftest import K8S, TESTS, find_doc, required_env

SCALED_OBJECTS = {
    "prometheus": K8S / "overlays" / "keda-prometheus" / "scaledobject.yaml",
    "metrics-api": K8S / "overlays" / "keda-metrics-api" / "scaledobject.yaml",
}


def node_validate(*files) -> tuple[int, list[dict]]:
    env_modules = required_env("LOOPWATCH_NODE_MODULES")
    res = subprocess.run(
        ["node", str(TESTS / "validate_models.mjs"), *map(str, files)],
        capture_output=True, text=True, timeout=120,
        env={"LOOPWATCH_NODE_MODULES": env_modules, "PATH": __import__("os").environ["PATH"]},
    )
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert lines or res.returncode == 0, res.stderr
    return res.returncode, lines


@pytest.mark.parametrize("variant", sorted(SCALED_OBJECTS))
def test_scaledobject_validates(variant):
    rc, lines = node_validate(SCALED_OBJECTS[variant])
    assert rc == 0, lines
    assert [(x["kind"], x["ok"]) for x in lines] == [("keda.sh/v1alpha1/ScaledObject", True)]


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda d: d["spec"].pop("scaleTargetRef"), "scaleTargetRef"),
        (lambda d: d["spec"]["triggers"][0].pop("type"), "type"),
        (lambda d: d["spec"].__setitem__("minReplicaCount", "two"), "minReplicaCount"),
        (lambda d: d["spec"].__setitem__("pollingIntervall", 15), "pollingIntervall"),
        (lambda d: d["spec"]["triggers"][0].__setitem__("metricTyp", "Value"), "metricTyp"),
    ],
    ids=["missing-target", "trigger-without-type", "bad-type", "unknown-spec-field", "unknown-trigger-field"],
)
def test_validator_rejects_broken_scaledobject(tmp_path, mutate, needle):
    """Negative controls: the node validator really fails on broken objects."""
    doc = yaml.safe_load(SCALED_OBJECTS["prometheus"].read_text())
    mutate(doc)
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(doc))
    rc, lines = node_validate(f)
    assert rc != 0
    assert needle in lines[0]["error"], lines


def test_core_kinds_also_validate_with_kubernetes_models():
    files = [K8S / "base" / n for n in ("namespace.yaml", "deployment.yaml", "service.yaml", "pdb.yaml")]
    files += [K8S / "overlays" / "hpa" / "hpa.yaml", K8S / "prometheus-adapter" / "adapter-config.yaml"]
    rc, lines = node_validate(*files)
    assert rc == 0, [x for x in lines if not x["ok"]]
    assert len(lines) == 7


def _trigger(variant):
    so = find_doc(SCALED_OBJECTS[variant], "ScaledObject")
    (t,) = so["spec"]["triggers"]
    return so, t


def test_prometheus_trigger_contract():
    so, t = _trigger("prometheus")
    assert t["type"] == "prometheus"
    md = t["metadata"]
    assert {"serverAddress", "query", "threshold"} <= set(md)
    assert all(isinstance(v, str) for v in md.values()), "KEDA metadata values are strings"
    assert float(md["threshold"]) == 1.0
    assert t.get("metricType", "AverageValue") == "AverageValue"
    dep = find_doc(K8S / "base" / "deployment.yaml", "Deployment")
    assert f'namespace="{dep["metadata"]["namespace"]}"' in md["query"]
    assert so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]


def test_metrics_api_trigger_contract():
    so, t = _trigger("metrics-api")
    assert t["type"] == "metrics-api"
    md = t["metadata"]
    assert {"url", "valueLocation", "targetValue"} <= set(md)
    assert md["url"].endswith(":9464/v1/pressure")
    assert md.get("format", "json") == "json"
    assert float(md["targetValue"]) == 1.0
    assert t["metricType"] == "Value"
    # The URL's Service exists and targets the agent's admin port.
    svc_name = md["url"].split("//")[1].split(".")[0]
    svc = find_doc(K8S / "base" / "service.yaml", "Service", svc_name)
    assert svc["spec"]["ports"][0]["port"] == 9464
    assert svc["spec"]["publishNotReadyAddresses"] is True
