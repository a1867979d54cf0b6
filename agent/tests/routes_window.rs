//! `routes` in `/v1/status` over `health.error_window` (30 s), on simulated time: cumulative
//! and delta histograms, a counter reset, the window sliding past old requests, and the older
//! `http.server.duration` (ms) of SDKs on the previous HTTP semantic conventions.

mod common;

use std::time::{Duration, Instant};

use common::*;
use loopwatch_agent::config::Config;
use loopwatch_agent::testing::AgentState;
use opentelemetry_proto::tonic::metrics::v1::{Histogram, HistogramDataPoint, Metric, metric};

const BOUNDS: [f64; 3] = [0.01, 0.1, 1.0];
const SECOND: u64 = 1_000_000_000;

/// One request-duration series of `/r` (GET, `status`) with `counts` per bucket; `start_s` and
/// `time_s` are the point's start and end times in seconds.
fn duration_metric(
    name: &str,
    unit: &str,
    delta: bool,
    status: &str,
    counts: &[u64],
    start_s: u64,
    time_s: u64,
) -> Metric {
    let (route_key, method_key, status_key) = if name == "http.server.duration" {
        ("http.route", "http.method", "http.status_code")
    } else {
        (
            "http.route",
            "http.request.method",
            "http.response.status_code",
        )
    };
    let scale = if unit == "ms" { 1e3 } else { 1.0 };
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                attributes: vec![
                    kv(route_key, "/r"),
                    kv(method_key, "GET"),
                    kv(status_key, status),
                ],
                explicit_bounds: BOUNDS.iter().map(|b| b * scale).collect(),
                bucket_counts: counts.to_vec(),
                count: counts.iter().sum(),
                start_time_unix_nano: start_s * SECOND,
                time_unix_nano: time_s * SECOND,
                ..Default::default()
            }],
            aggregation_temporality: if delta { 1 } else { 2 },
        })),
        ..Default::default()
    }
}

fn route(state: &AgentState, now: Instant) -> Option<(u64, f64, f64)> {
    let views = state.evaluate(now);
    let r = views
        .first()?
        .routes
        .iter()
        .find(|r| r.route == "/r")?
        .clone();
    assert_eq!(r.method.as_deref(), Some("GET"));
    Some((r.requests, r.error_ratio, r.p50_seconds.unwrap_or(f64::NAN)))
}

fn state() -> AgentState {
    AgentState::new(Config::builder().build().expect("config"))
}

#[test]
fn cumulative_counts_from_a_fresh_process_then_the_window_slides() {
    let s = state();
    let t0 = Instant::now();
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    let send = |secs: u64, ok: &[u64], err: &[u64]| {
        let req = request(
            "svc",
            "a",
            vec![
                duration_metric(
                    "http.server.request.duration",
                    "s",
                    false,
                    "200",
                    ok,
                    1000,
                    1000 + secs + 1,
                ),
                duration_metric(
                    "http.server.request.duration",
                    "s",
                    false,
                    "500",
                    err,
                    1000,
                    1000 + secs + 1,
                ),
            ],
        );
        s.ingest_metrics_at(&req, at(secs)).expect("accepted");
    };
    // Started 1 s before its first export: everything it counted is in the window.
    send(0, &[10, 0, 0, 0], &[0, 0, 0, 0]);
    assert_eq!(route(&s, at(0)), Some((10, 0.0, 0.005)));
    send(10, &[10, 20, 0, 0], &[0, 0, 10, 0]);
    let (n, err, p50) = route(&s, at(10)).expect("route");
    assert_eq!((n, err), (40, 0.25));
    assert!(p50 > 0.01 && p50 <= 0.1, "{p50}");
    // 40 s later only what came after the baseline taken near the window's start counts.
    for secs in (14..=50).step_by(4) {
        send(secs, &[10, 20, 0, 0], &[0, 0, 10, 0]);
    }
    send(52, &[10, 25, 0, 0], &[0, 0, 10, 0]);
    let (n, err, p50) = route(&s, at(52)).expect("route");
    assert_eq!((n, err), (5, 0.0));
    // Rank 2.5 of 5 in (0.01, 0.1]: interpolated to its middle.
    assert!((p50 - 0.055).abs() < 1e-9, "{p50}");
}

#[test]
fn delta_points_accumulate_and_a_reset_restarts_the_window() {
    let s = state();
    let t0 = Instant::now();
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    for (i, secs) in [0u64, 1, 2].into_iter().enumerate() {
        let req = request(
            "svc",
            "a",
            vec![duration_metric(
                "http.server.request.duration",
                "s",
                true,
                "200",
                &[0, 4, 0, 0],
                2000 + i as u64,
                2001 + i as u64,
            )],
        );
        s.ingest_metrics_at(&req, at(secs)).expect("accepted");
    }
    assert_eq!(route(&s, at(2)).map(|r| r.0), Some(12), "three deltas of 4");

    // Cumulative, then a restart under the same identity: the counts fall.
    let s = state();
    let cumulative = |secs: u64, counts: &[u64]| {
        let req = request(
            "svc",
            "a",
            vec![duration_metric(
                "http.server.request.duration",
                "s",
                false,
                "200",
                counts,
                100,
                100 + secs + 1,
            )],
        );
        s.ingest_metrics_at(&req, at(secs)).expect("accepted");
    };
    cumulative(0, &[0, 50, 0, 0]);
    cumulative(5, &[0, 80, 0, 0]);
    assert_eq!(route(&s, at(5)).map(|r| r.0), Some(80));
    cumulative(10, &[0, 0, 3, 0]);
    let (n, _, p50) = route(&s, at(10)).expect("route");
    assert_eq!(n, 3, "after a reset the new counts are the window");
    assert!(p50 > 0.1 && p50 <= 1.0, "{p50}");
}

#[test]
fn older_semantic_conventions_in_milliseconds() {
    let s = state();
    let t0 = Instant::now();
    let req = request(
        "svc",
        "a",
        vec![
            duration_metric(
                "http.server.duration",
                "ms",
                false,
                "200",
                &[0, 6, 0, 0],
                500,
                501,
            ),
            duration_metric(
                "http.server.duration",
                "ms",
                false,
                "503",
                &[0, 0, 2, 0],
                500,
                501,
            ),
        ],
    );
    s.ingest_metrics_at(&req, t0).expect("accepted");
    let (n, err, p50) = route(&s, t0).expect("route");
    assert_eq!((n, err), (8, 0.25));
    assert!(p50 > 0.01 && p50 <= 0.1, "p50 in seconds: {p50}");
}
