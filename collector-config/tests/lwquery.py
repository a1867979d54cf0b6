"""Query helpers shared by the tests: dashboard expression extraction and Grafana variable
substitution, prometheus-adapter template rendering, and the Kubernetes HPA decision."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Grafana's $__rate_interval is max(4 x scrape interval, $__interval + scrape interval); with the
# tests' 1 s scrape interval 30s is a safe stand-in that always covers >= 2 samples.
RATE_INTERVAL = "30s"


def dashboard_targets(dash: dict) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) for every query target, including panels nested in rows."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p["title"], t["refId"], t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    return out


def dashboard_annotations(dash: dict) -> list[tuple[str, str]]:
    """(name, expr) of every Prometheus annotation query."""
    return [(a["name"], a["expr"]) for a in dash.get("annotations", {}).get("list", []) if a.get("expr")]


def dashboard_variables(dash: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dash["templating"]["list"]}


def substitute(expr: str, dash: dict) -> str:
    """Expands the dashboard's variables as Grafana does with "All" selected (its allValue)."""
    out = expr.replace("$__rate_interval", RATE_INTERVAL)
    for name, var in dashboard_variables(dash).items():
        if var["type"] == "query":
            out = out.replace("${" + name + "}", var["allValue"]).replace("$" + name, var["allValue"])
    assert "$" not in out, f"unsubstituted variable in {out!r}"
    return out


METRIC_NAME = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """Metric names used with a selector `name{...}` (all dashboard queries use selectors)."""
    return {m for m in METRIC_NAME.findall(expr) if m not in PROMQL_WORDS}


def render_adapter_query(rule: dict, series: str, namespace: str, pods: list[str]) -> str:
    """What prometheus-adapter sends to Prometheus for a Pods metric request of an HPA that selects
    `pods` in `namespace`: <<.Series>>, <<.LabelMatchers>> and <<.GroupBy>> expanded."""
    label_matchers = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
    q = rule["metricsQuery"]
    q = re.sub(r"<<\s*\.Series\s*>>", series, q)
    q = re.sub(r"<<\s*\.LabelMatchers\s*>>", label_matchers, q)
    q = re.sub(r"<<\s*\.GroupBy\s*>>", "pod", q)
    assert "<<" not in q, f"unknown template field left in {q!r}"
    return q


def adapter_metric_name(rule: dict, series: str) -> str:
    """The name the adapter publishes for `series` (name.matches -> name.as)."""
    return re.sub(rule["name"]["matches"], rule["name"]["as"], series)


@dataclass
class HpaDecision:
    current: int
    metric_avg: float
    ratio: float
    raw_desired: int  # formula with tolerance, before clamping and behavior
    desired: int  # after min/max, scale-up policies and scale-down stabilization


def hpa_decide(
    current: int,
    per_pod_values: list[float],
    target_average: float,
    hpa_spec: dict,
    previous_recommendations: list[int] | None = None,
    tolerance: float = 0.1,
) -> HpaDecision:
    """The replica calculator of the Kubernetes HPA controller for one Pods/AverageValue metric,
    all pods ready and reporting: usage ratio = avg / target; inside the tolerance the count is kept,
    else desired = ceil(ratio * current); then clamped to min/max, limited by the scale-up policies
    (selectPolicy Max) and, for scale-down, stabilized: the controller takes the highest
    recommendation within scaleDown.stabilizationWindowSeconds (a newly seen HPA starts that
    window with the current count)."""
    assert per_pod_values, "no metric values: the HPA would not act"
    avg = sum(per_pod_values) / len(per_pod_values)
    ratio = avg / target_average
    raw = current if abs(ratio - 1.0) <= tolerance else math.ceil(ratio * current)
    desired = max(hpa_spec.get("minReplicas", 1), min(hpa_spec["maxReplicas"], raw))
    behavior = hpa_spec.get("behavior", {})
    if desired > current:
        up = behavior.get("scaleUp", {})
        limits = []
        for pol in up.get("policies", []):
            if pol["type"] == "Percent":
                limits.append(math.ceil(current * (1 + pol["value"] / 100)))
            else:
                limits.append(current + pol["value"])
        if limits:
            desired = min(desired, max(limits) if up.get("selectPolicy", "Max") == "Max" else min(limits))
    elif desired < current:
        window = behavior.get("scaleDown", {}).get("stabilizationWindowSeconds", 300)
        if window > 0:
            recs = (previous_recommendations or [current]) + [desired]
            desired = max(recs)
    return HpaDecision(current, avg, ratio, raw, desired)
