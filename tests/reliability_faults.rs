//! Faults: the agent killed and restarted under a running `example-service` (the service is
//! unaffected and reporting resumes), a killed service marked stale, and OTLP timestamps
//! that jump (zero, far past, far future) never producing negative or absurd lag.

#[path = "reliability_common.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use loopwatch_e2e::{Agent, Service, http_get, http_post, rss_kib, wait_for};

/// How long the agent stays down (several export intervals of the service: 1 s each).
const OUTAGE: Duration = Duration::from_secs(6);

#[test]
fn agent_killed_and_restarted_service_unaffected_and_reporting_resumes() {
    let mut agent = Agent::start(&[]);
    let grpc = agent.grpc.trim_start_matches("http://").to_string();
    let mut service = Service::start(&agent, "survivor");
    service.wait_ready_at(&agent);
    let label = format!("service_name=\"{}\"", service.name);
    let stalls_before: f64 = agent
        .metric_values("tokio_eventloop_stalls_total", &label)
        .into_iter()
        .sum();
    let rss_before = rss_kib(service.proc.pid()).expect("service RSS");

    // Kill the agent (SIGKILL: no goodbye) and keep using the service while it is gone.
    agent.proc.kill();
    let start = Instant::now();
    let mut served = 0;
    let mut slowest = Duration::ZERO;
    while start.elapsed() < OUTAGE {
        let t = Instant::now();
        let (code, body) = http_get(&format!("{}/", service.url));
        assert_eq!(code, 200, "service answers while its agent is down: {body}");
        slowest = slowest.max(t.elapsed());
        served += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("served {served} requests during the outage, slowest {slowest:?}");
    // Generous protocol bound: the export timeout is 2 s; a request must never wait on it.
    assert!(
        slowest < Duration::from_secs(2),
        "a request waited on the dead agent: {slowest:?}"
    );
    assert!(
        service.proc.is_running(),
        "service survived the agent's death"
    );
    let rss_during = rss_kib(service.proc.pid()).expect("service RSS");
    eprintln!("service RSS {rss_before} KiB -> {rss_during} KiB during the outage");
    assert!(
        rss_during < rss_before + 32 * 1024,
        "no unbounded buffering while the agent is down"
    );

    // Restart the agent on the same gRPC port: reporting resumes.
    let agent = Agent::start_args(
        &[
            "--grpc-listen",
            &grpc,
            "--http-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    service.wait_ready_at(&agent);
    let stalls_after: f64 = agent
        .metric_values("tokio_eventloop_stalls_total", &label)
        .into_iter()
        .sum();
    assert!(
        stalls_after <= stalls_before,
        "the outage caused no event-loop stall in the service: {stalls_before} -> {stalls_after}"
    );
    let log = service.proc.log_text();
    assert!(
        !log.contains("panicked"),
        "no panic in the service log:\n{log}"
    );

    // And a service that dies is marked stale by the (new) agent.
    service.proc.kill();
    wait_for(
        "agent to mark the killed service stale",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || (agent.service_status(&service.name)?["state"] == "stale").then_some(()),
    );
}

#[test]
fn timestamps_in_the_past_future_or_zero_do_not_skew_lag_or_staleness() {
    let agent = Agent::start_with(&[], &[("LOOPWATCH_HEALTH_STALE_AFTER", "2s")]);
    let url = format!("{}/v1/metrics", agent.http);
    let rt = [("tokio.runtime.name", "main")];
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let cases: [(&str, u64); 5] = [
        ("ts-zero", 0),
        ("ts-epoch", 1),
        (
            "ts-past",
            now_ns.saturating_sub(10 * 365 * 86_400 * 1_000_000_000),
        ),
        (
            "ts-future",
            now_ns.saturating_add(10 * 365 * 86_400 * 1_000_000_000),
        ),
        ("ts-max", u64::MAX),
    ];
    for (name, ts) in cases {
        let req = request(
            name,
            vec![
                gauge_at("tokio.eventloop.delay.p99", "s", 0.002, &rt, ts),
                gauge_at("tokio.eventloop.stall.duration", "s", 0.0, &rt, ts),
                gauge_at("tokio.eventloop.utilization", "1", 0.25, &rt, ts),
            ],
        );
        assert_eq!(http_post(&url, PB, None, pb(&req)).0, 200, "{name}");
        let s = agent.service_status(name).expect("tracked");
        assert_eq!(s["state"], "ok", "{name}: {s}");
        assert_eq!(
            s["lag_seconds"], 0.002,
            "{name}: lag is the reported delay: {s}"
        );
        let age = s["last_seen_age_seconds"].as_f64().expect("age");
        assert!(
            (0.0..2.0).contains(&age),
            "{name}: last-seen age from the agent's monotonic clock: {s}"
        );
        let p = s["pressure"].as_f64().expect("pressure");
        assert!(p.is_finite() && p >= 0.0, "{name}: {s}");
    }
    // Staleness runs on the agent's monotonic clock: a future timestamp does not keep a
    // silent service fresh.
    wait_for(
        "future-stamped service to go stale on the monotonic clock",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || (agent.service_status("ts-future")?["state"] == "stale").then_some(()),
    );
    let s = agent.service_status("ts-future").expect("tracked");
    let age = s["last_seen_age_seconds"].as_f64().expect("age");
    assert!((2.0..60.0).contains(&age), "{s}");
}
