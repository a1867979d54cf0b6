//! The agent's self-telemetry: one table, rendered by `/metrics` ([`crate::prometheus`],
//! Prometheus names) and by the upstream export ([`crate::export`], OTel names), so the two
//! never differ.

use std::sync::atomic::Ordering;

use crate::conn::Listener;
use crate::export::ExportDrop;
use crate::state::{AgentState, RefuseReason};
use crate::store::DropReason;

/// Counter (cumulative, monotonic) or gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
}

/// The points of one metric: attribute pairs and value.
pub(crate) type Points = Vec<(Vec<(&'static str, &'static str)>, f64)>;

/// One self-telemetry metric.
pub(crate) struct SelfMetric {
    pub(crate) otel: &'static str,
    pub(crate) prometheus: &'static str,
    pub(crate) unit: &'static str,
    pub(crate) kind: Kind,
    pub(crate) help: &'static str,
    pub(crate) read: fn(&AgentState) -> Points,
}

fn one(v: f64) -> Points {
    vec![(Vec::new(), v)]
}

fn by_reason<R: Copy>(all: &[R], name: fn(R) -> &'static str, n: impl Fn(R) -> u64) -> Points {
    all.iter()
        .map(|r| (vec![("reason", name(*r))], n(*r) as f64))
        .collect()
}

/// Every self-telemetry metric.
pub(crate) const SELF_METRICS: &[SelfMetric] = &[
    SelfMetric {
        otel: "loopwatch.agent.datapoints.received",
        prometheus: "loopwatch_agent_datapoints_received_total",
        unit: "{datapoint}",
        kind: Kind::Counter,
        help: "Metric datapoints accepted by the OTLP receivers.",
        read: |s| one(s.telemetry.datapoints_received.load(Ordering::Relaxed) as f64),
    },
    SelfMetric {
        otel: "loopwatch.agent.spans.received",
        prometheus: "loopwatch_agent_spans_received_total",
        unit: "{span}",
        kind: Kind::Counter,
        help: "Spans received over OTLP (forwarded upstream when exporter.endpoint is set).",
        read: |s| one(s.telemetry.spans_received.load(Ordering::Relaxed) as f64),
    },
    SelfMetric {
        otel: "loopwatch.agent.log_records.received",
        prometheus: "loopwatch_agent_log_records_received_total",
        unit: "{log_record}",
        kind: Kind::Counter,
        help: "Log records received over OTLP (forwarded upstream when exporter.endpoint is set).",
        read: |s| one(s.telemetry.log_records_received.load(Ordering::Relaxed) as f64),
    },
    SelfMetric {
        otel: "loopwatch.agent.connections.timed_out",
        prometheus: "loopwatch_agent_connections_timed_out_total",
        unit: "{connection}",
        kind: Kind::Counter,
        help: "Connections closed because a request head or HTTP/2 preface did not arrive in time or a connection stayed idle (slow-loris defence).",
        read: |s| one(s.telemetry.connections_timed_out.load(Ordering::Relaxed) as f64),
    },
    SelfMetric {
        otel: "loopwatch.agent.accept_errors",
        prometheus: "loopwatch_agent_accept_errors_total",
        unit: "{error}",
        kind: Kind::Counter,
        help: "Accept errors other than per-connection ones (e.g. EMFILE); the listener backs off.",
        read: |s| one(s.telemetry.connections.accept_errors() as f64),
    },
    SelfMetric {
        otel: "loopwatch.agent.connections.refused",
        prometheus: "loopwatch_agent_connections_refused_total",
        unit: "{connection}",
        kind: Kind::Counter,
        help: "Connections closed at accept, by listener and reason.",
        read: |s| {
            Listener::ALL
                .iter()
                .map(|l| {
                    let attrs = vec![("listener", l.as_str()), ("reason", "max_connections")];
                    (attrs, s.telemetry.connections.refused(*l) as f64)
                })
                .collect()
        },
    },
    SelfMetric {
        otel: "loopwatch.agent.connections.open",
        prometheus: "loopwatch_agent_connections_open",
        unit: "{connection}",
        kind: Kind::Gauge,
        help: "Open connections, by listener.",
        read: |s| {
            Listener::ALL
                .iter()
                .map(|l| {
                    let n = s.telemetry.connections.open(*l) as f64;
                    (vec![("listener", l.as_str())], n)
                })
                .collect()
        },
    },
    SelfMetric {
        otel: "loopwatch.agent.requests.refused",
        prometheus: "loopwatch_agent_requests_refused_total",
        unit: "{request}",
        kind: Kind::Counter,
        help: "OTLP export requests refused, by reason.",
        read: |s| {
            by_reason(&RefuseReason::ALL, RefuseReason::as_str, |r| {
                s.telemetry.refused(r)
            })
        },
    },
    SelfMetric {
        otel: "loopwatch.agent.datapoints.dropped",
        prometheus: "loopwatch_agent_datapoints_dropped_total",
        unit: "{datapoint}",
        kind: Kind::Counter,
        help: "Datapoints skipped inside accepted requests, by reason.",
        read: |s| {
            by_reason(&DropReason::ALL, DropReason::as_str, |r| {
                s.telemetry.dropped(r)
            })
        },
    },
    SelfMetric {
        otel: "loopwatch.agent.export.sent",
        prometheus: "loopwatch_agent_export_sent_total",
        unit: "{item}",
        kind: Kind::Counter,
        help: "Items (datapoints, spans, log records) accepted by the upstream OTLP endpoint.",
        read: |s| one(s.export.stats.sent_items.load(Ordering::Relaxed) as f64),
    },
    SelfMetric {
        otel: "loopwatch.agent.export.errors",
        prometheus: "loopwatch_agent_export_errors_total",
        unit: "{attempt}",
        kind: Kind::Counter,
        help: "Failed upstream send attempts (each retry counts).",
        read: |s| one(s.export.stats.errors.load(Ordering::Relaxed) as f64),
    },
    SelfMetric {
        otel: "loopwatch.agent.export.dropped",
        prometheus: "loopwatch_agent_export_dropped_total",
        unit: "{item}",
        kind: Kind::Counter,
        help: "Items (datapoints, spans, log records) dropped before reaching the upstream, by reason.",
        read: |s| {
            by_reason(&ExportDrop::ALL, ExportDrop::as_str, |r| {
                s.export.stats.dropped(r)
            })
        },
    },
    SelfMetric {
        otel: "loopwatch.agent.export.queue.depth",
        prometheus: "loopwatch_agent_export_queue_depth",
        unit: "{request}",
        kind: Kind::Gauge,
        help: "Requests waiting in the upstream export queue (including the one being sent).",
        read: |s| one(s.export.queue_depth() as f64),
    },
    SelfMetric {
        otel: "loopwatch.agent.draining",
        prometheus: "loopwatch_agent_draining",
        unit: "",
        kind: Kind::Gauge,
        help: "1 after POST /drain, else 0.",
        read: |s| one(f64::from(u8::from(s.is_draining()))),
    },
    SelfMetric {
        otel: "loopwatch.agent.services",
        prometheus: "loopwatch_agent_services",
        unit: "{service}",
        kind: Kind::Gauge,
        help: "Service instances currently tracked.",
        read: |s| one(s.store().len() as f64),
    },
    SelfMetric {
        otel: "loopwatch.agent.series.memory",
        prometheus: "loopwatch_agent_series_memory_bytes",
        unit: "By",
        kind: Kind::Gauge,
        help: "Approximate bytes held by stored series, in bytes.",
        read: |s| one(s.store().approx_bytes() as f64),
    },
];
