"""The OpenTelemetry Collector config: structure, references, and component names.

There is no otelcol binary here, so `otelcol-contrib validate` cannot run. Instead the component
types used must be in OTELCOL_CONTRIB_COMPONENTS below, copied from the otelcol-contrib distribution
manifest (opentelemetry-collector-releases, distributions/otelcol-contrib/manifest.yaml, release
0.136.0): each entry maps the config type name to the Go module that registers it. Only the
components this project may use are listed; add to it from that manifest, never from memory.
"""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import CC

OTELCOL_CONTRIB_VERSION = "0.136.0"
OTELCOL_CONTRIB_COMPONENTS = {
    "receivers": {
        "otlp": "go.opentelemetry.io/collector/receiver/otlpreceiver",
        "prometheus": "github.com/open-telemetry/opentelemetry-collector-contrib/receiver/prometheusreceiver",
    },
    "processors": {
        "batch": "go.opentelemetry.io/collector/processor/batchprocessor",
        "memory_limiter": "go.opentelemetry.io/collector/processor/memorylimiterprocessor",
        "resource": "github.com/open-telemetry/opentelemetry-collector-contrib/processor/resourceprocessor",
        "k8sattributes": "github.com/open-telemetry/opentelemetry-collector-contrib/processor/k8sattributesprocessor",
        "filter": "github.com/open-telemetry/opentelemetry-collector-contrib/processor/filterprocessor",
        "cumulativetodelta": "github.com/open-telemetry/opentelemetry-collector-contrib/processor/cumulativetodeltaprocessor",
    },
    "exporters": {
        "otlp": "go.opentelemetry.io/collector/exporter/otlpexporter",
        "otlphttp": "go.opentelemetry.io/collector/exporter/otlphttpexporter",
        "debug": "go.opentelemetry.io/collector/exporter/debugexporter",
        "prometheus": "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/prometheusexporter",
        "prometheusremotewrite": "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/prometheusremotewriteexporter",
    },
    "extensions": {
        "health_check": "github.com/open-telemetry/opentelemetry-collector-contrib/extension/healthcheckextension",
        "pprof": "github.com/open-telemetry/opentelemetry-collector-contrib/extension/pprofextension",
        "zpages": "go.opentelemetry.io/collector/extension/zpagesextension",
    },
}
SECTIONS = ("receivers", "processors", "exporters", "extensions")


@pytest.fixture(scope="module")
def cfg() -> dict:
    return yaml.safe_load((CC / "otelcol" / "config.yaml").read_text())


def ctype(component_id: str) -> str:
    """`type/name` -> `type` (the collector's component ID syntax)."""
    return component_id.split("/", 1)[0]


def test_only_known_top_level_keys(cfg):
    assert set(cfg) <= {"receivers", "processors", "exporters", "extensions", "connectors", "service"}


@pytest.mark.parametrize("section", SECTIONS)
def test_component_types_exist_in_otelcol_contrib(cfg, section):
    for cid in cfg.get(section, {}):
        assert re.fullmatch(r"[a-z0-9_]+(/[A-Za-z0-9_.-]+)?", cid), cid
        assert ctype(cid) in OTELCOL_CONTRIB_COMPONENTS[section], (
            f"{section}.{cid}: not in the otelcol-contrib {OTELCOL_CONTRIB_VERSION} list"
        )


def test_pipelines_reference_defined_components_and_use_all(cfg):
    svc = cfg["service"]
    used = {s: set() for s in SECTIONS}
    for ext in svc.get("extensions", []):
        assert ext in cfg["extensions"], ext
        used["extensions"].add(ext)
    for pname, p in svc["pipelines"].items():
        assert ctype(pname) in {"metrics", "traces", "logs"}, pname
        for section in ("receivers", "processors", "exporters"):
            for cid in p.get(section, []):
                assert cid in cfg[section], f"pipeline {pname}: {section} {cid} is not defined"
                used[section].add(cid)
        assert p["receivers"] and p["exporters"], pname
    for section in SECTIONS:
        assert set(cfg.get(section, {})) == used[section], f"defined but unused {section}"


def test_required_components_and_order(cfg):
    pipes = cfg["service"]["pipelines"]
    m = pipes["metrics"]
    assert "otlp" in m["receivers"]
    exporters = {ctype(e) for e in m["exporters"]}
    assert exporters & {"prometheusremotewrite", "prometheus"}
    assert "otlphttp" in exporters
    for name, p in pipes.items():
        procs = [ctype(x) for x in p["processors"]]
        # memory_limiter must run first, batch last (collector documentation's recommended order).
        assert procs[0] == "memory_limiter", name
        assert procs[-1] == "batch", name


def test_memory_limiter_and_batch_settings(cfg):
    ml = cfg["processors"]["memory_limiter"]
    assert ml["check_interval"].endswith("s")
    assert 0 < ml["spike_limit_mib"] < ml["limit_mib"]
    b = cfg["processors"]["batch"]
    assert b["send_batch_size"] <= b["send_batch_max_size"]


def test_otlp_receiver_binds_pod_ip_on_standard_ports(cfg):
    protos = cfg["receivers"]["otlp"]["protocols"]
    assert protos["grpc"]["endpoint"].endswith(":4317")
    assert protos["http"]["endpoint"].endswith(":4318")


def test_config_is_annotated():
    text = (CC / "otelcol" / "config.yaml").read_text()
    comments = [line for line in text.splitlines() if line.strip().startswith("#")]
    assert len(comments) >= 20


def _mib(q: str) -> float:
    m = re.fullmatch(r"(\d+)(Mi|Gi|MiB|GiB)", q)
    assert m, q
    return int(m.group(1)) * (1024 if m.group(2).startswith("G") else 1)


@pytest.fixture(scope="module")
def collector():
    from conftest import find_doc

    dep = find_doc(CC / "otelcol" / "deployment.yaml", "Deployment")
    svc = find_doc(CC / "otelcol" / "deployment.yaml", "Service")
    return dep, svc


def test_collector_deployment_defines_every_env_the_config_uses(cfg, collector):
    dep, _ = collector
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    text = "\n".join(
        line for line in (CC / "otelcol" / "config.yaml").read_text().splitlines() if not line.strip().startswith("#")
    )
    used = set(re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", text))
    defined = {e["name"] for e in c["env"]}
    assert used and used <= defined, used - defined


def test_collector_memory_settings_are_consistent(cfg, collector):
    dep, _ = collector
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    limit = _mib(c["resources"]["limits"]["memory"])
    env = {e["name"]: e.get("value") for e in c["env"]}
    ml = cfg["processors"]["memory_limiter"]
    # memory_limiter refuses data before the Go heap target, which stays below the OOM kill.
    assert ml["limit_mib"] < _mib(env["GOMEMLIMIT"]) < limit


def test_collector_config_is_mounted_where_args_point(collector):
    dep, _ = collector
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    kust = yaml.safe_load((CC / "otelcol" / "kustomization.yaml").read_text())
    (gen,) = kust["configMapGenerator"]
    assert gen["files"] == ["config.yaml"]
    (vol,) = pod["volumes"]
    assert vol["configMap"]["name"] == gen["name"]
    (mount,) = c["volumeMounts"]
    assert mount["name"] == vol["name"]
    assert f"--config={mount['mountPath']}/config.yaml" in c["args"]


def test_collector_ports_match_config_and_probes(cfg, collector):
    dep, svc = collector
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    protos = cfg["receivers"]["otlp"]["protocols"]
    assert int(protos["grpc"]["endpoint"].rsplit(":", 1)[1]) == ports["otlp-grpc"]
    assert int(protos["http"]["endpoint"].rsplit(":", 1)[1]) == ports["otlp-http"]
    assert int(cfg["extensions"]["health_check"]["endpoint"].rsplit(":", 1)[1]) == ports["health"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == "health"
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)


def test_agents_export_to_the_collector_service(collector):
    from conftest import K8S, find_doc

    _, svc = collector
    app = find_doc(K8S / "base" / "deployment.yaml", "Deployment")
    agent = app["spec"]["template"]["spec"]["initContainers"][0]
    env = {e["name"]: e.get("value") for e in agent["env"]}
    grpc_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "otlp-grpc")
    name, ns = svc["metadata"]["name"], svc["metadata"]["namespace"]
    assert env["LOOPWATCH_EXPORTER_ENDPOINT"] == f"http://{name}.{ns}.svc.cluster.local:{grpc_port}"
