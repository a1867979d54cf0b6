//! Prometheus text exposition (format 0.0.4) of everything received plus derived health
//! metrics and self-telemetry.
//!
//! Naming follows the OTel -> Prometheus compatibility rules: invalid characters (dots
//! included) become `_`; unit suffixes are appended (`s` -> `_seconds`, `ms` ->
//! `_milliseconds`, `By` -> `_bytes`, `By/s` -> `_bytes_per_second`, unit `1` on gauges ->
//! `_ratio`, `{...}` annotations dropped); monotonic sums get `_total`; histograms expose
//! `_bucket{le=..}`, `_sum` and `_count`. Labels are `service_name`, `service_instance_id`
//! and the datapoint attributes (dots -> `_`). Each family has exactly one `# HELP` and
//! `# TYPE` line and its samples grouped. A received metric whose name collides with an
//! agent-derived family, or with a family of another type, is left out.
//!
//! Derived per service instance (labels `service_name`, `service_instance_id`):
//!
//! Derived per-service gauges: the table in `derived` (`loopwatch_service_lag_seconds`,
//! `loopwatch_service_ready`, `loopwatch_service_stale`, `loopwatch_service_utilization_ratio`,
//! `loopwatch_pressure`, `loopwatch_service_last_seen_age_seconds`,
//! `loopwatch_service_stuck_workers`, `loopwatch_service_export_interval_seconds`,
//! `loopwatch_service_shed_ratio`).
//!
//! Self-telemetry: `loopwatch_agent_datapoints_received_total` (counter, accepted metric
//! datapoints), `loopwatch_agent_requests_refused_total{reason}` (counter, refused export
//! requests), `loopwatch_agent_datapoints_dropped_total{reason}` (counter, datapoints skipped
//! inside accepted requests: `non_finite`, `unsupported`, `oversize`, `invalid`),
//! `loopwatch_agent_spans_received_total`, `loopwatch_agent_log_records_received_total`
//! (counters; received and forwarded upstream when an exporter is configured),
//! `loopwatch_agent_connections_timed_out_total` (counter, connections closed by the header or
//! idle deadline of [`crate::deadline`], or a gRPC preface/idle deadline of [`crate::conn`]),
//! `loopwatch_agent_connections_refused_total{listener, reason}` (counter, connections closed
//! at accept; reason `max_connections`), `loopwatch_agent_connections_open{listener}` (gauge),
//! `loopwatch_agent_accept_errors_total` (counter, e.g. `EMFILE`; the listener backs off),
//! `loopwatch_agent_export_sent_total`, `loopwatch_agent_export_dropped_total{reason}`
//! (counters, items = datapoints, spans, log records; reasons `queue_full`,
//! `retries_exhausted`, `rejected`, `shutdown`), `loopwatch_agent_export_errors_total`
//! (counter, failed upstream attempts), `loopwatch_agent_export_queue_depth` (gauge,
//! requests), `loopwatch_agent_draining` (gauge, 1 after `POST /drain`),
//! `loopwatch_agent_services` (gauge, tracked service instances),
//! `loopwatch_agent_series_memory_bytes` (gauge, approximate bytes held by series).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::state::{AgentState, ServiceView};
use crate::store::{SeriesKind, SeriesValue, ServiceKey};

/// Content type of the exposition.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Replaces every character outside `[a-zA-Z0-9_]` (and `:` when `colon`) with `_`,
/// collapses repeated `_`, and prefixes a leading digit.
fn sanitize(s: &str, colon: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let ok = c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':');
        let c = if ok { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Prometheus metric name for an OTel metric.
pub(crate) fn metric_name(name: &str, unit: &str, kind: SeriesKind) -> String {
    let mut base = sanitize(name, true);
    let unit = unit.trim();
    let suffix: String = match unit {
        "" => String::new(),
        "s" => "seconds".into(),
        "ms" => "milliseconds".into(),
        "us" => "microseconds".into(),
        "ns" => "nanoseconds".into(),
        "min" => "minutes".into(),
        "h" => "hours".into(),
        "By" => "bytes".into(),
        "KiBy" => "kibibytes".into(),
        "MiBy" => "mebibytes".into(),
        "By/s" => "bytes_per_second".into(),
        "1" if kind == SeriesKind::Gauge => "ratio".into(),
        "1" => String::new(),
        u if u.starts_with('{') => String::new(),
        u => {
            // Drop `{...}` annotations inside, render `/` as `_per_`.
            let mut cleaned = String::new();
            let mut depth = 0;
            for c in u.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ if depth > 0 => {}
                    '/' => cleaned.push_str("_per_"),
                    c => cleaned.push(c),
                }
            }
            let s = sanitize(&cleaned, false);
            s.trim_matches('_').to_string()
        }
    };
    if !suffix.is_empty() && !base.ends_with(&format!("_{suffix}")) {
        base.push('_');
        base.push_str(&suffix);
    }
    if kind == SeriesKind::Counter && !base.ends_with("_total") {
        base.push_str("_total");
    }
    base
}

fn label_name(key: &str) -> String {
    // `sanitize` collapses repeated `_`, so the reserved `__` prefix cannot occur.
    let s = sanitize(key, false);
    if key.starts_with(|c: char| c.is_ascii_digit()) {
        format!("key{s}")
    } else {
        s
    }
}

fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Builds a `{a="b",...}` label set; later duplicates of a label name are dropped.
fn labels(pairs: &[(String, String)]) -> String {
    let mut seen: Vec<&str> = Vec::with_capacity(pairs.len());
    let mut out = String::from("{");
    for (k, v) in pairs {
        if seen.contains(&k.as_str()) {
            continue;
        }
        seen.push(k);
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_label_value(v, &mut out);
        out.push('"');
    }
    out.push('}');
    out
}

fn service_labels(key: &ServiceKey) -> Vec<(String, String)> {
    vec![
        ("service_name".into(), key.service.clone()),
        ("service_instance_id".into(), key.instance.clone()),
    ]
}

struct Family {
    kind: &'static str,
    help: String,
    samples: String,
}

/// Families under construction, ordered by name.
#[derive(Default)]
struct Families(BTreeMap<String, Family>);

impl Families {
    /// Returns the sample buffer of family `name`, or `None` if it exists with another type.
    fn family(&mut self, name: &str, kind: &'static str, help: &str) -> Option<&mut String> {
        let f = self.0.entry(name.to_string()).or_insert_with(|| Family {
            kind,
            help: help.to_string(),
            samples: String::new(),
        });
        (f.kind == kind).then_some(&mut f.samples)
    }

    fn render(self) -> String {
        let mut out = String::new();
        for (name, f) in self.0 {
            let help = if f.help.is_empty() {
                format!("OTel metric {name}")
            } else {
                escape_help(&f.help)
            };
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {}", f.kind);
            out.push_str(&f.samples);
        }
        out
    }
}

/// Renders the full exposition from the shared state and freshly evaluated views.
pub fn render(state: &AgentState, views: &[ServiceView]) -> String {
    let mut fams = Families::default();
    {
        let store = state.store();
        for (skey, s) in store.services() {
            let base = service_labels(skey);
            for (key, series) in &s.series {
                let name = metric_name(&key.name, &series.unit, series.kind);
                if crate::self_telemetry::SELF_METRICS
                    .iter()
                    .any(|m| m.prometheus == name)
                    || crate::derived::DERIVED.iter().any(|d| d.prometheus == name)
                {
                    continue;
                }
                let mut pairs = base.clone();
                pairs.extend(
                    key.attributes
                        .iter()
                        .map(|(k, v)| (label_name(k), v.clone()))
                        .filter(|(k, _)| series.kind != SeriesKind::Histogram || k != "le"),
                );
                let kind = match series.kind {
                    SeriesKind::Gauge | SeriesKind::UpDownCounter => "gauge",
                    SeriesKind::Counter => "counter",
                    SeriesKind::Histogram => "histogram",
                };
                let Some(buf) = fams.family(&name, kind, &series.description) else {
                    continue;
                };
                match &series.value {
                    SeriesValue::Number(v) => {
                        let _ = writeln!(buf, "{name}{} {}", labels(&pairs), format_value(*v));
                    }
                    SeriesValue::Histogram {
                        bounds,
                        counts,
                        sum,
                        count,
                    } => {
                        let mut cumulative = 0u64;
                        for (i, c) in counts.iter().enumerate() {
                            cumulative = cumulative.saturating_add(*c);
                            let le = bounds
                                .get(i)
                                .map_or_else(|| "+Inf".to_string(), |b| format_value(*b));
                            let mut p = pairs.clone();
                            p.push(("le".into(), le));
                            let _ = writeln!(buf, "{name}_bucket{} {cumulative}", labels(&p));
                        }
                        let total = if counts.is_empty() {
                            *count
                        } else {
                            cumulative
                        };
                        if counts.is_empty() {
                            let mut p = pairs.clone();
                            p.push(("le".into(), "+Inf".into()));
                            let _ = writeln!(buf, "{name}_bucket{} {total}", labels(&p));
                        }
                        let l = labels(&pairs);
                        let _ = writeln!(buf, "{name}_sum{l} {}", format_value(*sum));
                        let _ = writeln!(buf, "{name}_count{l} {total}");
                    }
                }
            }
        }
    }
    derived(&mut fams, views);
    self_telemetry(&mut fams, state);
    fams.render()
}

fn derived(fams: &mut Families, views: &[ServiceView]) {
    for d in crate::derived::DERIVED {
        if let Some(buf) = fams.family(d.prometheus, "gauge", d.help) {
            for v in views {
                if let Some(x) = (d.get)(v).filter(|x| x.is_finite()) {
                    let _ = writeln!(
                        buf,
                        "{}{} {}",
                        d.prometheus,
                        labels(&service_labels(&v.key)),
                        format_value(x)
                    );
                }
            }
        }
    }
}

fn self_telemetry(fams: &mut Families, state: &AgentState) {
    use crate::self_telemetry::{Kind, SELF_METRICS};
    for m in SELF_METRICS {
        let kind = match m.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let points = (m.read)(state);
        if let Some(buf) = fams.family(m.prometheus, kind, m.help) {
            for (attrs, v) in points {
                let pairs: Vec<(String, String)> = attrs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect();
                let l = if pairs.is_empty() {
                    String::new()
                } else {
                    labels(&pairs)
                };
                let _ = writeln!(buf, "{}{l} {}", m.prometheus, format_value(v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otel_names_map_to_prometheus() {
        use SeriesKind::*;
        let cases = [
            (
                "tokio.eventloop.delay.p99",
                "s",
                Gauge,
                "tokio_eventloop_delay_p99_seconds",
            ),
            (
                "tokio.eventloop.stall.duration",
                "s",
                Gauge,
                "tokio_eventloop_stall_duration_seconds",
            ),
            (
                "tokio.eventloop.stalls",
                "{stall}",
                Counter,
                "tokio_eventloop_stalls_total",
            ),
            (
                "tokio.eventloop.utilization",
                "1",
                Gauge,
                "tokio_eventloop_utilization_ratio",
            ),
            (
                "tokio.schedule.duration",
                "s",
                Histogram,
                "tokio_schedule_duration_seconds",
            ),
            (
                "process.memory.usage",
                "By",
                UpDownCounter,
                "process_memory_usage_bytes",
            ),
            (
                "loopwatch.heap.growth_rate",
                "By/s",
                Gauge,
                "loopwatch_heap_growth_rate_bytes_per_second",
            ),
            (
                "http.server.active_requests",
                "{request}",
                UpDownCounter,
                "http_server_active_requests",
            ),
            ("requests_total", "", Counter, "requests_total"),
            ("x.seconds", "s", Gauge, "x_seconds"),
            ("9lives", "m/s", Gauge, "_9lives_m_per_s"),
        ];
        for (n, u, k, want) in cases {
            assert_eq!(metric_name(n, u, k), want, "{n} [{u}]");
        }
    }

    #[test]
    fn labels_escape_and_dedupe() {
        let l = labels(&[
            ("a".into(), "x\"y\\z\nw".into()),
            ("a".into(), "dup".into()),
            ("b".into(), "".into()),
        ]);
        assert_eq!(l, r#"{a="x\"y\\z\nw",b=""}"#);
        assert_eq!(label_name("tokio.runtime.name"), "tokio_runtime_name");
        assert_eq!(label_name("__x"), "_x");
        assert_eq!(label_name("1a"), "key_1a");
    }
}
