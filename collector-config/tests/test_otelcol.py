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
