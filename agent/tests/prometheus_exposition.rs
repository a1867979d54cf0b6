//! `/metrics` exposition checked by the real `promtool check metrics` (Prometheus 2.42).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use loopwatch_agent::config::Config;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, Sum, metric, number_data_point,
};

const PROMTOOL: &str = "/usr/bin/promtool";

fn promtool_check(text: &str) -> (bool, String) {
    assert!(
        std::path::Path::new(PROMTOOL).exists(),
        "{PROMTOOL} is missing: install the test peers first (apt-get install -y --no-install-recommends prometheus, \
         see the project's peer install script); this test must not be skipped"
    );
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), msg)
}

fn up_down(name: &str, unit: &str, v: i64) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        description: "multi\nline \\ help".into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: vec![NumberDataPoint {
                value: Some(number_data_point::Value::AsInt(v)),
                ..Default::default()
            }],
            aggregation_temporality: 2,
            is_monotonic: false,
        })),
        ..Default::default()
    }
}

fn int_attr_gauge() -> Metric {
    Metric {
        name: "tokio.worker.busy".into(),
        unit: "1".into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                attributes: vec![KeyValue {
                    key: "tokio.worker.index".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::IntValue(3)),
                    }),
                    ..Default::default()
                }],
                value: Some(number_data_point::Value::AsDouble(0.25)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

#[test]
fn metrics_pass_promtool_and_use_prometheus_names() {
    let agent = TestAgent::start(Config::builder().stale_after(Duration::from_secs(600)));
    let rt = [("tokio.runtime.name", "main")];
    for (svc, inst, p99) in [("x", "y", 1.48), ("other", "o-1", 0.002)] {
        let req = request(
            svc,
            inst,
            vec![
                gauge("tokio.eventloop.delay.p99", "s", p99, &rt),
                gauge("tokio.eventloop.stall.duration", "s", 0.0, &rt),
                gauge("tokio.eventloop.utilization", "1", 0.5, &rt),
                counter("tokio.eventloop.stalls", "{stall}", 3, false),
                histogram(
                    "tokio.schedule.duration",
                    &[0.0001, 0.001, 0.01],
                    &[5, 10, 2, 1],
                    0.02,
                ),
                up_down("process.memory.usage", "By", 123_456),
                up_down("http.server.active_requests", "{request}", 2),
                int_attr_gauge(),
                gauge(
                    "weird-name.with/chars",
                    "",
                    7.0,
                    &[
                        ("quote\"key", "va\"l\\ue\nline"),
                        ("service.name", "shadow"),
                    ],
                ),
                // Collides with an agent-derived family: left out.
                gauge("loopwatch.pressure", "", 99.0, &[]),
            ],
        );
        assert_eq!(agent.post_metrics(&req), 200);
    }
    // Same name, different type in another service: the conflicting kind is left out.
    let mut clash = histogram("weird-name.with/chars", &[1.0], &[1, 0], 0.5);
    clash.unit = String::new();
    let conflict = request("z", "", vec![clash]);
    assert_eq!(agent.post_metrics(&conflict), 200);

    let (status, text) = agent.get("/metrics");
    assert_eq!(status, 200);
    let (ok, msg) = promtool_check(&text);
    assert!(
        ok,
        "promtool check metrics failed:\n{msg}\n--- exposition ---\n{text}"
    );

    let l = r#"service_name="x",service_instance_id="y""#;
    for line in [
        format!(r#"tokio_eventloop_delay_p99_seconds{{{l},tokio_runtime_name="main"}} 1.48"#),
        format!(r#"tokio_eventloop_stall_duration_seconds{{{l},tokio_runtime_name="main"}} 0"#),
        format!(r#"tokio_eventloop_utilization_ratio{{{l},tokio_runtime_name="main"}} 0.5"#),
        format!("tokio_eventloop_stalls_total{{{l}}} 3"),
        format!(
            r#"tokio_schedule_duration_seconds_bucket{{{l},tokio_runtime_name="main",le="0.0001"}} 5"#
        ),
        format!(
            r#"tokio_schedule_duration_seconds_bucket{{{l},tokio_runtime_name="main",le="0.001"}} 15"#
        ),
        format!(
            r#"tokio_schedule_duration_seconds_bucket{{{l},tokio_runtime_name="main",le="+Inf"}} 18"#
        ),
        format!(r#"tokio_schedule_duration_seconds_sum{{{l},tokio_runtime_name="main"}} 0.02"#),
        format!(r#"tokio_schedule_duration_seconds_count{{{l},tokio_runtime_name="main"}} 18"#),
        format!("process_memory_usage_bytes{{{l}}} 123456"),
        format!("http_server_active_requests{{{l}}} 2"),
        format!(r#"tokio_worker_busy_ratio{{{l},tokio_worker_index="3"}} 0.25"#),
        format!(r#"weird_name_with_chars{{{l},quote_key="va\"l\\ue\nline"}} 7"#),
        format!("loopwatch_service_lag_seconds{{{l}}} 1.48"),
        format!("loopwatch_service_ready{{{l}}} 0"),
        format!("loopwatch_service_stale{{{l}}} 0"),
        format!("loopwatch_service_utilization_ratio{{{l}}} 0.5"),
        "loopwatch_agent_services 3".to_string(),
        "# TYPE tokio_schedule_duration_seconds histogram".to_string(),
        "# TYPE tokio_eventloop_stalls_total counter".to_string(),
        r"# HELP process_memory_usage_bytes multi\nline \\ help".to_string(),
    ] {
        assert!(text.lines().any(|x| x == line), "missing {line}\n{text}");
    }
    let pressure = text
        .lines()
        .find_map(|x| x.strip_prefix(&format!("loopwatch_pressure{{{l}}} ")))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("pressure sample for x/y");
    assert!(
        (pressure - 14.8).abs() < 1e-9,
        "1.48 s / 0.1 s target: {pressure}"
    );
    assert!(
        !text.contains(r#"weird_name_with_chars_bucket{service_name="z""#),
        "{text}"
    );
    assert!(
        text.contains("loopwatch_service_last_seen_age_seconds{"),
        "{text}"
    );
    assert!(
        text.contains("loopwatch_agent_datapoints_received_total "),
        "{text}"
    );
    assert!(
        !text.contains(" 99\n"),
        "reserved name must not be overwritten:\n{text}"
    );
    // One HELP/TYPE per family, and each family's samples contiguous.
    let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let mut names: Vec<&str> = types.iter().filter_map(|l| l.split(' ').nth(2)).collect();
    let n = names.len();
    names.dedup();
    assert_eq!(n, names.len(), "duplicate TYPE lines");
}

#[test]
fn promtool_rejects_a_broken_exposition() {
    // Guards the guard: the checker really fails on a duplicate family.
    let broken = "# TYPE a gauge\na 1\n# TYPE a gauge\na 2\n";
    let (ok, _) = promtool_check(broken);
    assert!(!ok);
}
