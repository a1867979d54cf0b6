"""Every PromQL in the dashboard, the prometheus-adapter rules and the KEDA prometheus trigger is
evaluated on a real Prometheus scraping real agents fed by real example services, and must return
data."""

from __future__ import annotations

import json
import math
import warnings

import pytest

from conftest import CC, K8S, find_doc, load_docs
from lwquery import dashboard_annotations, dashboard_targets, metric_names, render_adapter_query, substitute
from lwstack import PromQLError, http, wait_until

import yaml

DASHBOARD = json.loads((CC / "grafana" / "loopwatch-dashboard.json").read_text())

# Metrics that panels already show but that the agent does not export yet (they come with later
# issues). A query may return no data ONLY while every metric it is missing is in this list and
# absent from Prometheus altogether; once the agent exports a metric, its panels must return data.
NOT_YET_EXPORTED: dict[str, str] = {}


def metric_exists(stack, name: str) -> bool:
    return bool(stack.prometheus.query(f'count({{__name__="{name}"}})'))


def assert_returns_data(stack, expr: str, what: str, timeout: float = 20):
    stack.prometheus.query(expr)  # a PromQL syntax/type error fails here, as such
    absent = {m for m in metric_names(expr) if not metric_exists(stack, m)}
    if absent and absent <= set(NOT_YET_EXPORTED):
        warnings.warn(f"{what}: not checked for data, metrics not exported yet: {sorted(absent)}")
        return None
    try:
        return wait_until(lambda: stack.prometheus.query(expr), timeout=timeout, interval=1, what=what)
    except AssertionError:
        absent = {m for m in metric_names(expr) if not metric_exists(stack, m)}
        raise AssertionError(f"{what}: no data for {expr!r} (metrics absent from Prometheus: {sorted(absent)}) "
                             f"{stack.logs_hint()}") from None


@pytest.fixture(scope="module")
def stalled_once(stack):
    """Stalls the last replica once (600 ms, past the 250 ms default stall_threshold), at the
    start of this module, so that every panel has data in its window:
    - tokio.eventloop.stalls is a counter that only appears after the first stall;
    - the rate() panels of tokio.schedule.duration need probe samples within their 30 s
      window, and a quiet runtime has none (loopwatch does not probe a parked runtime: it has
      no scheduling delay), nor does the session's trickle of single requests;
    - the error-ratio panels need a 5xx within the same window.
    Relying on an earlier module's traffic made these depend on how long the modules in
    between took."""
    def total(expr: str) -> float:
        res = stack.prometheus.query(expr)
        return float(res[0]["value"][1]) if res else 0.0

    samples = "sum(tokio_schedule_duration_seconds_count)"
    fails = 'sum(http_server_request_duration_seconds_count{http_route="/fail"})'
    before = (total(samples), total(fails))
    status, _ = stack.replicas[-1].get("/block?ms=600", timeout=30)
    assert status == 200
    # The session's trickle sends /fail only every 25th round: one more per replica now, so
    # the error-ratio panels have a 5xx within their window too.
    for r in stack.replicas:
        status, _ = r.get("/fail", timeout=10)
        assert status == 500
    wait_until(lambda: metric_exists(stack, "tokio_eventloop_stalls_total"), timeout=20,
               what=f"tokio_eventloop_stalls_total after a 600 ms block {stack.logs_hint()}")
    wait_until(lambda: total(samples) > before[0] and total(fails) >= before[1] + 3, timeout=20,
               what=f"the block's probe samples and the /fail requests in Prometheus {stack.logs_hint()}")
    return stack


@pytest.mark.parametrize(
    "title,ref,expr", dashboard_targets(DASHBOARD), ids=[f"{t}/{r}" for t, r, _ in dashboard_targets(DASHBOARD)]
)
def test_dashboard_query_returns_data(stalled_once, title, ref, expr):
    stack = stalled_once
    q = substitute(expr, DASHBOARD)
    res = assert_returns_data(stack, q, f"panel {title!r} {ref}")
    if res is not None:
        values = [float(x["value"][1]) for x in res]
        # "Data" means at least one real number, not only NaN from 0/0 or an empty histogram.
        assert any(math.isfinite(v) for v in values), f"panel {title!r} {ref}: only NaN/Inf: {res}"


@pytest.mark.parametrize("name,expr", dashboard_annotations(DASHBOARD), ids=[n for n, _ in dashboard_annotations(DASHBOARD)])
def test_dashboard_annotation_queries_run(stalled_once, name, expr):
    """Each annotation query is valid PromQL over metrics the agents export. An annotation
    marks moments, so it returns data only around them: "Not ready" must have marked the
    stall the stack has seen (readiness holds for health.hold, 3 s, over 1 s scrapes)."""
    stack = stalled_once
    q = substitute(expr, DASHBOARD)
    stack.prometheus.query(q)  # a syntax/type error fails here
    absent = {m for m in metric_names(q) if not metric_exists(stack, m)}
    assert not absent, f"annotation {name!r}: metrics absent from Prometheus: {sorted(absent)}"
    if name == "Not ready":
        marked = wait_until(lambda: stack.prometheus.query(f"max_over_time(({q})[15m:1s])"),
                            timeout=20, interval=1, what=f"annotation {name!r} over the last 15 min")
        assert marked, marked


def test_dashboard_variables_resolve(stack):
    for var in DASHBOARD["templating"]["list"]:
        if var["type"] != "query":
            continue
        definition = var["query"]["query"]
        inner = definition[len("label_values("):-1]
        selector, label = (x.strip() for x in inner.rsplit(",", 1))
        selector = substitute(selector, DASHBOARD)
        values = stack.prometheus.label_values(label, selector)
        assert values, f"variable {var['name']}: {definition} -> no values"
    assert stack.namespace in stack.prometheus.label_values("namespace", "loopwatch_pressure")


def test_adapter_rules_discover_and_return_data_for_every_pod(stack, adapter_rules):
    pods = [r.pod for r in stack.replicas]
    for rule in adapter_rules:
        series = {s["__name__"] for s in stack.prometheus.series(rule["seriesQuery"])}
        assert series, f"seriesQuery {rule['seriesQuery']!r} found nothing"
        for name in series:
            q = render_adapter_query(rule, name, stack.namespace, pods)
            res = assert_returns_data(stack, q, f"adapter rule for {name}")
            assert {x["metric"]["pod"] for x in res} == set(pods), (q, res)


def test_keda_prometheus_query_returns_one_value(stack):
    so = find_doc(K8S / "overlays" / "keda-prometheus" / "scaledobject.yaml", "ScaledObject")
    (t,) = so["spec"]["triggers"]
    res = assert_returns_data(stack, t["metadata"]["query"], "KEDA prometheus trigger")
    assert len(res) == 1, "KEDA needs a single sample"


def test_keda_metrics_api_value_location_reads_a_number(stack):
    so = find_doc(K8S / "overlays" / "keda-metrics-api" / "scaledobject.yaml", "ScaledObject")
    (t,) = so["spec"]["triggers"]
    path = t["metadata"]["url"].split(":9464", 1)[1]
    for r in stack.replicas:
        status, body = http("GET", f"http://{r.agent_admin}{path}", timeout=5)
        assert status == 200, body
        doc = json.loads(body)
        value = doc
        for part in t["metadata"]["valueLocation"].split("."):
            value = value[part]
        assert isinstance(value, (int, float)) and value >= 0, doc
