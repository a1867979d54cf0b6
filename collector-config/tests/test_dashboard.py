"""Static checks of the Grafana dashboard JSON (the live PromQL checks are in test_promql_live.py)."""

from __future__ import annotations

import json

from conftest import CC
from lwquery import dashboard_annotations, dashboard_targets, dashboard_variables, metric_names, substitute


def test_dashboard_parses_and_has_identity():
    dash = json.loads((CC / "grafana" / "loopwatch-dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = []

    def walk(ps):
        for p in ps:
            ids.append(p["id"])
            walk(p.get("panels", []))

    walk(dash["panels"])
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_covers_the_required_views(dashboard):
    exprs = " ".join(e for _, _, e in dashboard_targets(dashboard))
    required = {
        "lag p99 per pod": "tokio_eventloop_delay_p99_seconds",
        "current stall per pod": "tokio_eventloop_stall_duration_seconds",
        "utilization": "loopwatch_service_utilization_ratio",
        "pressure": "loopwatch_pressure",
        "per-route error ratio": 'http_response_status_code=~"5.."',
        "per-route latency": "http_server_request_duration_seconds_bucket",
        "per-route p95": "histogram_quantile(0.95,",
        "per-route p99": "histogram_quantile(0.99,",
        "shed responses are not errors": 'error_type!="loopwatch.shed"',
        "heap growth": "loopwatch_heap_growth_rate_bytes_per_second",
        "readiness state": "loopwatch_service_ready",
    }
    missing = [k for k, needle in required.items() if needle not in exprs]
    assert not missing, missing


def test_every_panel_has_unit_and_description(dashboard):
    def walk(ps):
        for p in ps:
            if p["type"] != "row":
                assert p.get("description"), p["title"]
                assert p["fieldConfig"]["defaults"].get("unit"), p["title"]
                assert p["datasource"]["uid"] == "${datasource}", p["title"]
            walk(p.get("panels", []))

    walk(dashboard["panels"])


def test_queries_select_by_variables_and_pod(dashboard):
    assert {"datasource", "namespace", "service"} <= set(dashboard_variables(dashboard))
    for title, ref, expr in dashboard_targets(dashboard):
        assert 'namespace=~"$namespace"' in expr, (title, ref)
        assert metric_names(expr), (title, ref, expr)
        substitute(expr, dashboard)  # every variable is known


def test_state_changes_are_annotations(dashboard):
    ann = dict(dashboard_annotations(dashboard))
    assert "loopwatch_service_ready" in ann.get("Not ready", ""), ann
    assert "loopwatch_service_stale" in ann.get("Stale", ""), ann
    for name, expr in ann.items():
        assert 'namespace=~"$namespace"' in expr, name
        substitute(expr, dashboard)
    for a in dashboard["annotations"]["list"]:
        assert a["datasource"]["uid"] == "${datasource}", a["name"]
        assert "{{pod}}" in a["titleFormat"], a["name"]
