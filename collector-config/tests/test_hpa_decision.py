"""HPA decision test on live processes: 3 example-service replicas, each with its own
loopwatch-agent, scraped by a real Prometheus. The prometheus-adapter query is taken from the
shipped adapter rules, rendered like the adapter does, evaluated on Prometheus, and fed to the
Kubernetes HPA formula. Healthy: hold. One replica stalled: scale up. The two KEDA variants are
checked on the same data."""

from __future__ import annotations

import json
import math
import re
import threading
import time

from conftest import K8S, find_doc
from lwquery import adapter_metric_name, hpa_decide, render_adapter_query
from lwstack import http, wait_until

# How long replica 0 blocks its (current-thread) runtime. Long enough for several 1 s scrapes and
# exports while it lasts; the example service caps /block at 60 s.
STALL_MS = 5000


def parse_quantity(q: str) -> float:
    """Kubernetes resource quantity (the subset used for metric targets)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|M|G)?", q)
    assert m, q
    return float(m.group(1)) * {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}[m.group(2)]


def gjson_get(doc, path: str):
    """The subset of GJSON paths KEDA's metrics-api valueLocation uses here: a.b.0.c."""
    cur = doc
    for part in path.split("."):
        cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    return cur


def hpa_spec() -> dict:
    return find_doc(K8S / "overlays" / "hpa" / "hpa.yaml", "HorizontalPodAutoscaler")["spec"]


def adapter_query(stack, adapter_rules) -> tuple[str, float]:
    """(rendered adapter query for the HPA's metric, target average) from the shipped manifests."""
    spec = hpa_spec()
    (metric,) = spec["metrics"]
    name = metric["pods"]["metric"]["name"]
    target = parse_quantity(metric["pods"]["target"]["averageValue"])
    rules = [r for r in adapter_rules if r["name"]["as"] == name]
    assert len(rules) == 1, f"no single adapter rule publishes {name}"
    rule = rules[0]
    # Discovery, as the adapter does it: series matching seriesQuery, renamed by name.matches/as.
    found = {s["__name__"] for s in stack.prometheus.series(rule["seriesQuery"])}
    series = sorted(s for s in found if re.search(rule["name"]["matches"], s) and adapter_metric_name(rule, s) == name)
    assert len(series) == 1, f"seriesQuery {rule['seriesQuery']!r} found {sorted(found)}"
    pods = [r.pod for r in stack.replicas]
    return render_adapter_query(rule, series[0], stack.namespace, pods), target


def per_pod_values(stack, query: str) -> dict[str, float] | None:
    res = stack.prometheus.query(query)
    values = {x["metric"]["pod"]: float(x["value"][1]) for x in res}
    if set(values) != {r.pod for r in stack.replicas}:
        return None
    assert all(math.isfinite(v) for v in values.values()), values
    return values


def test_hpa_holds_when_healthy_and_scales_up_under_stall(stack, adapter_rules):
    spec = hpa_spec()
    query, target = adapter_query(stack, adapter_rules)
    current = len(stack.replicas)
    assert spec["minReplicas"] <= current < spec["maxReplicas"]

    # --- healthy: every replica idle ---
    healthy = wait_until(lambda: per_pod_values(stack, query), timeout=30, what=f"values of {query}")
    decision = hpa_decide(current, list(healthy.values()), target, spec)
    print(f"healthy: {healthy} -> {decision}")
    assert decision.ratio < 1.0 - 0.1, f"healthy replicas already at/over target: {healthy}"
    assert decision.raw_desired <= current, decision
    # A scale-down recommendation is held by the scale-down stabilization window: the HPA holds.
    assert decision.desired == current, decision

    # --- stall replica 0 ---
    stalled = stack.replicas[0]
    result: dict = {}

    def block():
        result["resp"] = stalled.get(f"/block?ms={STALL_MS}", timeout=STALL_MS / 1000 + 30)

    t = threading.Thread(target=block, daemon=True)
    t.start()

    keda_so = find_doc(K8S / "overlays" / "keda-metrics-api" / "scaledobject.yaml", "ScaledObject")
    (mtrig,) = keda_so["spec"]["triggers"]
    api_samples: list[float] = []
    history = []
    deadline = time.monotonic() + STALL_MS / 1000 + 45
    scaled = None
    while time.monotonic() < deadline:
        # metrics-api variant: what KEDA would read from the stalled pod's agent right now.
        status, body = http("GET", f"http://{stalled.agent_admin}/v1/pressure", timeout=5)
        assert status == 200, body
        api_samples.append(float(gjson_get(json.loads(body), mtrig["metadata"]["valueLocation"])))
        values = per_pod_values(stack, query)
        if values:
            d = hpa_decide(current, list(values.values()), target, spec)
            history.append((round(time.monotonic(), 1), values, d.desired))
            if d.desired > current and not t.is_alive():
                scaled = (values, d)
                break
        time.sleep(1)
    t.join(timeout=STALL_MS / 1000 + 30)
    assert result.get("resp", (None,))[0] == 200, f"/block did not answer: {result} {stack.logs_hint()}"
    assert scaled, f"HPA never decided to scale up while replica 0 was stalled; history: {history} {stack.logs_hint()}"
    values, d = scaled
    print(f"stalled: {values} -> {d}")
    # The signal comes from the stalled pod, and the scale-up respects the behavior policies.
    assert max(values, key=values.get) == stalled.pod, values
    assert values[stalled.pod] > target
    assert d.raw_desired > current, d
    assert current < d.desired <= spec["maxReplicas"], d

    # KEDA prometheus variant (metricType AverageValue): desired = ceil(query result / threshold).
    keda_prom = find_doc(K8S / "overlays" / "keda-prometheus" / "scaledobject.yaml", "ScaledObject")
    (ptrig,) = keda_prom["spec"]["triggers"]
    res = stack.prometheus.query(ptrig["metadata"]["query"])
    assert len(res) == 1, res
    keda_value = float(res[0]["value"][1])
    keda_desired = math.ceil(keda_value / float(ptrig["metadata"]["threshold"]))
    assert keda_desired > current, (keda_value, keda_desired)

    # KEDA metrics-api variant (metricType Value): desired = ceil(current * value / target); the
    # stalled pod's agent must have reported a pressure that scales.
    mtarget = float(mtrig["metadata"]["targetValue"])
    best = max(api_samples)
    assert best / mtarget > 1.1 and math.ceil(current * best / mtarget) > current, api_samples


def test_hpa_formula_model():
    """The HPA model used above, on hand-computed cases with the shipped HPA spec."""
    spec = hpa_spec()
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 20)
    # Inside the 10 % tolerance: keep.
    assert hpa_decide(3, [1.05, 1.0, 1.1], 1.0, spec).desired == 3
    # avg 2 -> ceil(3 * 2) = 6, within the scale-up policies (max(+100 %, +4) = 7).
    d = hpa_decide(3, [2.0, 2.0, 2.0], 1.0, spec)
    assert (d.raw_desired, d.desired) == (6, 6)
    # avg 10 -> 30, clamped to max 20, then limited by the scale-up policies to 7.
    d = hpa_decide(3, [28.0, 1.0, 1.0], 1.0, spec)
    assert (d.raw_desired, d.desired) == (30, 7)
    # Idle: the formula says 1 (min 2) but the scale-down stabilization window holds 3 ...
    d = hpa_decide(3, [0.1, 0.1, 0.1], 1.0, spec)
    assert (d.raw_desired, d.desired) == (1, 3)
    # ... until every recommendation in the window is lower.
    assert hpa_decide(3, [0.1, 0.1, 0.1], 1.0, spec, previous_recommendations=[2, 2]).desired == 2
    assert parse_quantity("500m") == 0.5 and parse_quantity("1") == 1.0
    assert gjson_get({"services": [{"pressure": 0.5}], "max": 0.5}, "services.0.pressure") == 0.5
