//! Upstream export against real OTLP receivers nobody here wrote:
//!
//! - Rotel (PyPI `rotel`), over gRPC and over HTTP/protobuf: metrics (with resource
//!   attributes, merged within the interval, plus derived and self-telemetry metrics), traces
//!   and logs forwarded unchanged; Rotel prints what it received.
//! - VictoriaMetrics (OTLP/HTTP protobuf with storage): the values queried back equal what
//!   the service sent (gauge and cumulative counter: the latest point of the interval;
//!   cumulative histogram). VictoriaMetrics 1.112 skips delta sums ("unsupported delta
//!   temporality"), so delta merging is checked against Rotel.
//!
//! The peers are installed by `scripts/install-peers.sh` (`scripts/peers.d/30-rotel.sh`,
//! `40-victoria-metrics.sh`); a missing peer fails the test, it is never skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use loopwatch_agent::config::{Config, ExportProtocol};
use loopwatch_e2e::free_port;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

/// Runs the peer installer script; panics (never skips) when it fails.
fn install(script: &str) -> PathBuf {
    loopwatch_e2e::install_peer(script)
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
}

struct Peer {
    child: Child,
    dir: PathBuf,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lw-agent-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn wait_port(port: u16, what: &str) {
    assert!(
        eventually(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }),
        "{what} did not listen on 127.0.0.1:{port}"
    );
}

fn number(name: &str, v: f64, t: u64, sum: Option<(bool, i32)>) -> Metric {
    let dp = NumberDataPoint {
        attributes: vec![kv("route", "/a")],
        start_time_unix_nano: t - 1_000_000_000,
        time_unix_nano: t,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    };
    Metric {
        name: name.into(),
        unit: "1".into(),
        description: format!("test {name}"),
        data: Some(match sum {
            None => metric::Data::Gauge(opentelemetry_proto::tonic::metrics::v1::Gauge {
                data_points: vec![dp],
            }),
            Some((monotonic, temporality)) => metric::Data::Sum(Sum {
                data_points: vec![dp],
                aggregation_temporality: temporality,
                is_monotonic: monotonic,
            }),
        }),
        ..Default::default()
    }
}

fn traces(service: &str, span: &str) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![7; 16],
                    span_id: vec![9; 8],
                    name: span.into(),
                    kind: 2,
                    start_time_unix_nano: now_nanos() - 1_000_000,
                    end_time_unix_nano: now_nanos(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn logs(service: &str, body: &str) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: now_nanos(),
                    severity_text: "INFO".into(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(body.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn post(agent: &TestAgent, path: &str, body: Vec<u8>) {
    let status = client()
        .post(agent.http(path))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .expect("POST")
        .status();
    assert_eq!(status.as_u16(), 200, "{path}");
}

fn start_rotel(dir: &Path, grpc: u16, http: u16) -> Peer {
    let bin = install("30-rotel.sh");
    let out = std::fs::File::create(dir.join("rotel.out")).expect("log file");
    let child = Command::new(&bin)
        .args([
            "start",
            "--otlp-grpc-endpoint",
            &format!("127.0.0.1:{grpc}"),
            "--otlp-http-endpoint",
            &format!("127.0.0.1:{http}"),
            "--exporter",
            "blackhole",
            "--debug-log",
            "metrics",
            "--debug-log",
            "traces",
            "--debug-log",
            "logs",
            "--debug-log-verbosity",
            "detailed",
            "--log-file",
            &dir.join("rotel.log").display().to_string(),
        ])
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start rotel at {}: {e}", bin.display()));
    wait_port(grpc, "rotel gRPC");
    wait_port(http, "rotel HTTP");
    Peer {
        child,
        dir: dir.to_path_buf(),
    }
}

/// One agent exporting to Rotel with `protocol`; the service sends three delta exports, a
/// gauge twice, a trace and a log; the agent's shutdown flushes one merged batch.
fn export_to_rotel(rotel_out: &Path, endpoint: String, protocol: ExportProtocol, service: &str) {
    let agent = TestAgent::start(
        Config::builder()
            .exporter(endpoint, protocol)
            .exporter_interval(Duration::from_secs(600))
            .stale_after(Duration::from_secs(600)),
    );
    let t = now_nanos();
    for (i, v) in [2.0, 3.0, 4.0].into_iter().enumerate() {
        let mut req = request(
            service,
            "i-1",
            vec![
                number("peer.delta", v, t + i as u64, Some((true, 1))),
                number("peer.gauge", 10.0 + v, t + i as u64, None),
            ],
        );
        if let Some(r) = req.resource_metrics[0].resource.as_mut() {
            r.attributes.push(kv("k8s.pod.name", "pod-7"));
        }
        assert_eq!(agent.post_metrics(&req), 200);
    }
    post(
        &agent,
        "/v1/traces",
        traces(service, &format!("{service}-span")).encode_to_vec(),
    );
    post(
        &agent,
        "/v1/logs",
        logs(service, &format!("{service}-log-line")).encode_to_vec(),
    );
    let state = agent.agent().state().clone();
    drop(agent); // shutdown: flushes the batch and the queue
    assert_eq!(
        state
            .export
            .stats
            .errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no failed attempts"
    );
    // The metrics block of this service (Rotel prints each request as it is processed, the
    // service's metrics and the agent's own in separate requests).
    let service_block = |text: &str| -> String {
        text.split("ResourceMetrics #")
            .map(|b| b.split("ResourceSpans #").next().unwrap_or(""))
            .map(|b| b.split("ResourceLog #").next().unwrap_or(""))
            .filter(|b| b.contains(&format!("service.name: Str({service})")))
            .collect()
    };
    let mut text = String::new();
    let found = eventually(Duration::from_secs(30), || {
        text = std::fs::read_to_string(rotel_out).unwrap_or_default();
        let block = service_block(&text);
        text.contains(&format!("{service}-log-line"))
            && text.contains(&format!("{service}-span"))
            && text.contains("loopwatch.agent.export.queue.depth")
            && block.contains("-> Name: peer.delta\n")
            && block.contains("-> Name: peer.gauge\n")
    });
    assert!(
        found,
        "rotel did not print everything for {service}:\n{text}"
    );
    // Merged delta 2+3+4 = 9, latest gauge 14.
    let block = service_block(&text);
    assert!(block.contains("k8s.pod.name: Str(pod-7)"), "{block}");
    let value_after = |name: &str| -> Vec<String> {
        block
            .split("Metric #")
            .filter(|m| m.contains(&format!("-> Name: {name}\n")))
            .flat_map(|m| {
                m.lines()
                    .filter_map(|l| l.strip_prefix("Value: ").map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert_eq!(value_after("peer.delta"), vec!["9".to_string()], "{block}");
    assert_eq!(value_after("peer.gauge"), vec!["14".to_string()], "{block}");
    assert_eq!(
        value_after("loopwatch.service.ready"),
        vec!["1".to_string()],
        "{block}"
    );
    assert_eq!(value_after("loopwatch.pressure").len(), 1, "{block}");
}

#[test]
fn rotel_receives_over_grpc_and_http() {
    let dir = temp_dir("rotel");
    let (grpc, http) = (free_port(), free_port());
    let rotel = start_rotel(&dir, grpc, http);
    let out = rotel.dir.join("rotel.out");
    export_to_rotel(
        &out,
        format!("http://127.0.0.1:{grpc}"),
        ExportProtocol::Grpc,
        "svc-grpc",
    );
    export_to_rotel(
        &out,
        format!("http://127.0.0.1:{http}"),
        ExportProtocol::HttpProtobuf,
        "svc-http",
    );
}

fn histogram_metric(t: u64) -> Metric {
    Metric {
        name: "peer.latency".into(),
        unit: "s".into(),
        description: "test histogram".into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                attributes: vec![kv("route", "/a")],
                start_time_unix_nano: t - 1_000_000_000,
                time_unix_nano: t,
                count: 6,
                sum: Some(4.5),
                bucket_counts: vec![1, 2, 3],
                explicit_bounds: vec![0.1, 1.0],
                ..Default::default()
            }],
            aggregation_temporality: 2,
        })),
        ..Default::default()
    }
}

/// `/api/v1/export` lines of series matching `selector`: (labels, last value).
fn vm_export(port: u16, selector: &str) -> Vec<(serde_json::Value, f64)> {
    let enc: String = selector
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let Ok(resp) = client()
        .get(format!(
            "http://127.0.0.1:{port}/api/v1/export?match%5B%5D={enc}"
        ))
        .send()
    else {
        return Vec::new();
    };
    let text = resp.text().unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let last = v["values"].as_array()?.last()?.as_f64()?;
            Some((v["metric"].clone(), last))
        })
        .collect()
}

#[test]
fn victoria_metrics_values_equal_what_the_service_sent() {
    let bin = install("40-victoria-metrics.sh");
    let dir = temp_dir("vm");
    let port = free_port();
    let child = Command::new(&bin)
        .args([
            &format!("-httpListenAddr=127.0.0.1:{port}"),
            &format!("-storageDataPath={}", dir.join("data").display()),
            "-inmemoryDataFlushInterval=1s",
            "-search.latencyOffset=0s",
            "-loggerLevel=WARN",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let _vm = Peer {
        child,
        dir: dir.clone(),
    };
    wait_port(port, "victoria-metrics");

    let agent = TestAgent::start(
        Config::builder()
            .exporter(
                format!("http://127.0.0.1:{port}/opentelemetry"),
                ExportProtocol::HttpProtobuf,
            )
            .exporter_interval(Duration::from_secs(600))
            .stale_after(Duration::from_secs(600)),
    );
    let t = now_nanos();
    // Within one interval: cumulative counter 5 then 7 (latest wins), a gauge 0.25 then
    // 1.25 (latest wins), an up-down counter, and a cumulative histogram.
    let sends = [
        vec![
            number("vm.cumulative", 5.0, t, Some((true, 2))),
            number("vm.gauge", 0.25, t, None),
        ],
        vec![
            number("vm.cumulative", 7.0, t + 1000, Some((true, 2))),
            number("vm.gauge", 1.25, t + 1000, None),
            number("vm.updown", -3.0, t + 1000, Some((false, 2))),
            histogram_metric(t + 1000),
        ],
    ];
    for metrics in sends {
        assert_eq!(agent.post_metrics(&request("vm-svc", "vm-1", metrics)), 200);
    }
    drop(agent); // flush

    let expect = [
        ("vm.cumulative", 7.0),
        ("vm.updown", -3.0),
        ("vm.gauge", 1.25),
        ("peer.latency_sum", 4.5),
        ("peer.latency_count", 6.0),
    ];
    let mut got = Vec::new();
    let ok = eventually(Duration::from_secs(60), || {
        got = vm_export(port, r#"{service.name="vm-svc"}"#);
        expect.iter().all(|(name, _)| {
            got.iter()
                .any(|(m, _)| m["__name__"].as_str() == Some(name))
        })
    });
    assert!(
        ok,
        "VictoriaMetrics does not have every series: {got:?}\nall: {:?}",
        vm_export(port, r#"{__name__=~".+"}"#)
    );
    for (name, want) in expect {
        let series: Vec<_> = got
            .iter()
            .filter(|(m, _)| m["__name__"].as_str() == Some(name))
            .collect();
        assert_eq!(series.len(), 1, "{name}: {series:?}");
        let (labels, value) = series[0];
        assert_eq!(*value, want, "{name}: {labels}");
        assert_eq!(labels["route"], "/a", "{labels}");
        assert_eq!(labels["service.instance.id"], "vm-1", "{labels}");
    }
    // Histogram buckets: cumulative by `le` as sent (1, 1+2, 1+2+3).
    let buckets: Vec<_> = got
        .iter()
        .filter(|(m, _)| m["__name__"] == "peer.latency_bucket")
        .map(|(m, v)| (m["le"].as_str().unwrap_or("").to_string(), *v))
        .collect();
    for (le, want) in [("0.1", 1.0), ("1", 3.0), ("+Inf", 6.0)] {
        assert!(
            buckets.iter().any(|(l, v)| l == le && *v == want),
            "bucket le={le} != {want}: {buckets:?}"
        );
    }
    // Derived metrics arrive in the service's resource.
    let derived = vm_export(port, r#"{__name__="loopwatch.service.ready"}"#);
    assert!(
        derived
            .iter()
            .any(|(m, v)| m["service.name"] == "vm-svc" && *v == 1.0),
        "{derived:?}"
    );
}

#[test]
fn full_queue_and_unreachable_upstream_are_counted() {
    // Nothing listens on this port: every attempt fails (retryable), the queue fills.
    let port = free_port();
    let agent = TestAgent::start(
        Config::builder()
            .exporter(
                format!("http://127.0.0.1:{port}"),
                ExportProtocol::HttpProtobuf,
            )
            .exporter_queue_size(2)
            .exporter_max_retry_time(Duration::from_secs(600))
            .exporter_interval(Duration::from_secs(600)),
    );
    for i in 0..5 {
        post(
            &agent,
            "/v1/traces",
            traces("q-svc", &format!("s{i}")).encode_to_vec(),
        );
    }
    let st = agent.agent().state().clone();
    use loopwatch_agent::testing::ExportDrop;
    // Two fit (one in flight, one waiting); three are dropped.
    assert_eq!(st.export.stats.dropped(ExportDrop::QueueFull), 3);
    assert!(eventually(Duration::from_secs(30), || {
        st.export
            .stats
            .errors
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    }));
    let (_, text) = agent.get("/metrics");
    for line in [
        r#"loopwatch_agent_export_dropped_total{reason="queue_full"} 3"#,
        "loopwatch_agent_export_queue_depth 2",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("loopwatch_agent_export_errors_total ") && !l.ends_with(" 0")),
        "{text}"
    );
}

#[test]
fn retries_until_the_upstream_comes_up() {
    // The upstream (another agent) starts only after the first attempts failed.
    let port = free_port();
    let agent = TestAgent::start(
        Config::builder()
            .exporter(
                format!("http://127.0.0.1:{port}"),
                ExportProtocol::HttpProtobuf,
            )
            .exporter_max_retry_time(Duration::from_secs(600))
            .exporter_interval(Duration::from_secs(600)),
    );
    post(
        &agent,
        "/v1/traces",
        traces("r-svc", "late").encode_to_vec(),
    );
    let st = agent.agent().state().clone();
    let errors = || {
        st.export
            .stats
            .errors
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert!(eventually(Duration::from_secs(30), || errors() >= 1));
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let upstream = TestAgent::start_with(
        Config::builder()
            .grpc_listen(loopback())
            .admin_listen(loopback())
            .http_listen(addr),
    );
    let spans = || {
        upstream
            .agent()
            .state()
            .telemetry
            .spans_received
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert!(
        eventually(Duration::from_secs(30), || spans() == 1),
        "span not delivered after the upstream came up"
    );
    assert_eq!(
        st.export
            .stats
            .sent_items
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        st.export
            .stats
            .dropped(loopwatch_agent::testing::ExportDrop::RetriesExhausted),
        0
    );
}
