//! Health rules beyond lag: per-route error ratio from `http.server.request.duration`, heap
//! growth from `loopwatch.heap.growth_rate`, and Go's `go.schedule.duration` histogram, each
//! entering and leaving with hysteresis, with reasons in `/readyz` and `/v1/status`.

mod common;

use std::time::Duration;

use common::*;
use loopwatch_agent::config::Config;
use opentelemetry_proto::tonic::metrics::v1::{Histogram, HistogramDataPoint, Metric, metric};

/// One series: attributes and bucket counts.
type HistSeries<'a> = (Vec<(&'a str, &'a str)>, Vec<u64>);

/// One histogram metric with several series.
fn hist(name: &str, bounds: &[f64], series: &[HistSeries<'_>]) -> Metric {
    Metric {
        name: name.into(),
        unit: "s".into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: series
                .iter()
                .map(|(attrs, counts)| HistogramDataPoint {
                    attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
                    explicit_bounds: bounds.to_vec(),
                    bucket_counts: counts.clone(),
                    count: counts.iter().sum(),
                    sum: Some(0.0),
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: 2,
        })),
        ..Default::default()
    }
}

/// Cumulative request counts per (route, status).
fn requests(ok_a: u64, ok_fail: u64, err_fail: u64, typed_err: u64) -> Metric {
    let b = [0.1];
    hist(
        "http.server.request.duration",
        &b,
        &[
            (
                vec![("http.route", "/a"), ("http.response.status_code", "200")],
                vec![ok_a, 0],
            ),
            (
                vec![
                    ("http.route", "/fail"),
                    ("http.response.status_code", "200"),
                ],
                vec![ok_fail, 0],
            ),
            (
                vec![
                    ("http.route", "/fail"),
                    ("http.response.status_code", "503"),
                ],
                vec![err_fail, 0],
            ),
            (
                vec![("http.route", "/fail"), ("error.type", "timeout")],
                vec![typed_err, 0],
            ),
        ],
    )
}

fn reasons(agent: &TestAgent, service: &str) -> Vec<String> {
    status_of(agent, service, "")
        .and_then(|s| s["reasons"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect()
}

#[test]
fn route_error_ratio_enters_and_recovers() {
    let agent = TestAgent::start(
        Config::builder()
            .error_ratio(0.5, 0.2)
            .error_window(Duration::from_millis(800))
            .error_min_requests(10)
            .error_hold(Duration::from_millis(300))
            .stale_after(Duration::from_secs(600)),
    );
    // Baseline, then /fail: 5 ok, 6 x 503 and 4 x error.type within the window.
    assert_eq!(
        agent.post_metrics(&request("web", "", vec![requests(100, 0, 0, 0)])),
        200
    );
    assert_eq!(
        status_of(&agent, "web", "").expect("web")["runtime"],
        "http"
    );
    assert_eq!(
        agent.post_metrics(&request("web", "", vec![requests(200, 5, 6, 4)])),
        200
    );
    let (code, body) = agent.get_json("/readyz");
    assert_eq!(code, 503, "{body}");
    let r = reasons(&agent, "web");
    assert!(
        r.iter().any(|x| x.starts_with(r#"route "/fail" error ratio 0.667"#)
            && x.contains("(10/15 in")),
        "{r:?}"
    );
    assert!(
        !r.iter().any(|x| x.contains(r#""/a""#)),
        "/a has no errors: {r:?}"
    );
    // No new errors: the window slides past them and the hold expires.
    assert!(
        eventually(Duration::from_secs(30), || agent.get("/readyz").0 == 200),
        "did not recover: {:?}",
        reasons(&agent, "web")
    );
}

#[test]
fn few_requests_do_not_count() {
    let agent = TestAgent::start(
        Config::builder()
            .error_ratio(0.5, 0.2)
            .error_min_requests(10)
            .stale_after(Duration::from_secs(600)),
    );
    assert_eq!(
        agent.post_metrics(&request("web", "", vec![requests(0, 0, 0, 0)])),
        200
    );
    // 3 of 3 failed, but under error_min_requests.
    assert_eq!(
        agent.post_metrics(&request("web", "", vec![requests(0, 0, 3, 0)])),
        200
    );
    assert_eq!(agent.get("/readyz").0, 200);
}

#[test]
fn heap_growth_enters_and_recovers() {
    let agent = TestAgent::start(
        Config::builder()
            .heap_growth(1_000_000.0, 100_000.0)
            .heap_hold(Duration::from_millis(200))
            .stale_after(Duration::from_secs(600)),
    );
    let heap = |v: f64| {
        request(
            "leaky",
            "",
            vec![gauge("loopwatch.heap.growth_rate", "By/s", v, &[])],
        )
    };
    assert_eq!(agent.post_metrics(&heap(5_000_000.0)), 200);
    let (code, body) = agent.get_json("/readyz");
    assert_eq!(code, 503, "{body}");
    let st = status_of(&agent, "leaky", "").expect("leaky");
    assert_eq!(st["state"], "unhealthy", "{st}");
    assert_eq!(st["heap_growth_bytes_per_second"], 5_000_000.0, "{st}");
    assert_eq!(
        st["reasons"][0], "heap growth 5000000 By/s >= 1000000 By/s",
        "{st}"
    );
    // Between leave and enter: stays unhealthy.
    assert_eq!(agent.post_metrics(&heap(500_000.0)), 200);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(agent.get("/readyz").0, 503);
    assert_eq!(
        reasons(&agent, "leaky"),
        vec!["heap growth 500000 By/s >= 100000 By/s (leave threshold)".to_string()]
    );
    assert_eq!(agent.post_metrics(&heap(1_000.0)), 200);
    assert!(eventually(Duration::from_secs(30), || agent
        .get("/readyz")
        .0
        == 200));
}

#[test]
fn go_schedule_histogram_feeds_lag() {
    let agent = TestAgent::start(
        Config::builder()
            .hold(Duration::from_millis(200))
            .stale_after(Duration::from_secs(600)),
    );
    let bounds = [0.01, 0.1, 1.0];
    let go = |counts: Vec<u64>| {
        request(
            "gosvc",
            "",
            vec![hist("go.schedule.duration", &bounds, &[(vec![], counts)])],
        )
    };
    assert_eq!(agent.post_metrics(&go(vec![100, 0, 0, 0])), 200);
    let st = status_of(&agent, "gosvc", "").expect("gosvc");
    assert_eq!(st["runtime"], "go", "{st}");
    assert_eq!(st["delay_p99_seconds"], 0.01, "{st}");
    assert_eq!(st["state"], "ok", "{st}");
    // 50 new observations in (0.1, 1]: this interval's p99 is 1 s.
    assert_eq!(agent.post_metrics(&go(vec![100, 0, 50, 0])), 200);
    let st = status_of(&agent, "gosvc", "").expect("gosvc");
    assert_eq!(st["delay_p99_seconds"], 1.0, "{st}");
    assert_eq!(st["state"], "unhealthy", "{st}");
    // 100 new fast ones: p99 back to 10 ms, recovers after the hold.
    assert_eq!(agent.post_metrics(&go(vec![200, 0, 50, 0])), 200);
    assert_eq!(
        status_of(&agent, "gosvc", "").expect("gosvc")["delay_p99_seconds"],
        0.01
    );
    assert!(eventually(Duration::from_secs(30), || agent
        .get("/readyz")
        .0
        == 200));
}
