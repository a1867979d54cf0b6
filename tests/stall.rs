//! End to end: a real `example-service` linking loopwatch exports to a real
//! `loopwatch-agent`; blocking the service's runtime turns the agent's `/readyz` 503 while
//! the block is still going on, `/metrics` shows it, and readiness recovers afterwards.

use std::time::{Duration, Instant};

use loopwatch_e2e::{Agent, Prometheus, Service, wait_for};

/// The injected block (the scenario).
const BLOCK_MS: u64 = 1500;

#[test]
fn readyz_turns_503_during_a_stall_and_recovers() {
    let agent = Agent::start(&[]);
    let service = Service::start(&agent, "stall-e2e");
    service.wait_ready_at(&agent);
    assert_eq!(agent.get("/readyz").0, 200, "ready before the block");

    let label = format!("service_name=\"{}\"", service.name);
    let started = Instant::now();
    let block = service.block_in_background(BLOCK_MS);

    // Poll readiness while the block runs; the 503 must come before the block's response.
    let mut saw_503_at = None;
    let mut body_503 = String::new();
    while !block.is_finished() && started.elapsed() < Duration::from_secs(30) {
        let (code, body) = agent.get("/readyz");
        if code == 503 && !block.is_finished() {
            saw_503_at = Some(started.elapsed());
            body_503 = body;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let detected = saw_503_at.expect("agent /readyz turned 503 while the block was still going on");
    eprintln!("block start -> /readyz 503: {detected:?}; reason: {body_503}");
    assert!(
        body_503.contains(&service.name),
        "503 body names the service: {body_503}"
    );
    let stall_during: f64 = agent
        .metric_values("tokio_eventloop_stall_duration_seconds", &label)
        .into_iter()
        .fold(0.0, f64::max);
    assert!(
        stall_during >= 0.25,
        "/metrics shows the stall in progress (>= stall_threshold): {stall_during}"
    );

    let (code, ended) = block.join().expect("block thread");
    assert_eq!(code, 200, "the block request itself succeeds");
    eprintln!("block took {:?}", ended - started);

    // After the block the window p99 reflects it: coordinated-omission-corrected, >= 1.4 s.
    let p99 = wait_for(
        "delay p99 >= 1.4 s on /metrics",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || {
            let v = agent
                .metric_values("tokio_eventloop_delay_p99_seconds", &label)
                .into_iter()
                .fold(0.0, f64::max);
            (v >= 1.4).then_some(v)
        },
    );
    let injected = BLOCK_MS as f64 / 1000.0;
    assert!(
        p99 <= injected + 0.05,
        "p99 {p99} never reads above the injected {injected} s"
    );
    let stalls = agent
        .metric_values("tokio_eventloop_stalls_total", &label)
        .into_iter()
        .fold(0.0, f64::max);
    assert!(stalls >= 1.0, "stalls counter counted the stall: {stalls}");

    // Readiness comes back after the hold time, and stays.
    let recovered = wait_for(
        "/readyz 200 after the stall",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || (agent.get("/readyz").0 == 200).then(|| started.elapsed()),
    );
    eprintln!("block start -> /readyz 200 again: {recovered:?}");
    let status = agent
        .service_status(&service.name)
        .expect("service tracked");
    assert_eq!(status["state"], "ok", "{status}");
}

#[test]
fn killed_service_is_reported_stale() {
    let agent = Agent::start_with(&[], &[("LOOPWATCH_HEALTH_STALE_AFTER", "3s")]);
    let mut service = Service::start(&agent, "stale-e2e");
    service.wait_ready_at(&agent);
    service.proc.kill();
    let status = wait_for(
        "agent to mark the killed service stale",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let s = agent.service_status(&service.name)?;
            (s["state"] == "stale").then_some(s)
        },
    );
    let (code, body) = agent.get("/readyz");
    assert_eq!(code, 503, "a stale service is not ready: {body}");
    assert!(body.contains("stale"), "{body}");
    assert_eq!(
        agent.metric_values(
            "loopwatch_service_stale",
            &format!("service_name=\"{}\"", service.name)
        ),
        vec![1.0],
        "{status}"
    );
}

#[test]
fn prometheus_reads_the_stall_back() {
    let agent = Agent::start(&[]);
    let service = Service::start(&agent, "prom-e2e");
    service.wait_ready_at(&agent);
    let prom = Prometheus::start(&[&agent.admin]);
    let sel = format!("{{service_name=\"{}\"}}", service.name);
    wait_for(
        "prometheus to scrape the service's metrics",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            (!prom
                .query(&format!("tokio_eventloop_delay_p99_seconds{sel}"))
                .is_empty())
            .then_some(())
        },
    );

    let block = service.block_in_background(BLOCK_MS);
    let (code, _) = block.join().expect("block thread");
    assert_eq!(code, 200);

    let stalls = wait_for(
        "PromQL to read the stall counter",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let v = prom.query(&format!("max(tokio_eventloop_stalls_total{sel})"));
            v.first().copied().filter(|v| *v >= 1.0)
        },
    );
    let stall_max = wait_for(
        "PromQL to read the in-progress stall",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let v = prom.query(&format!(
                "max(max_over_time(tokio_eventloop_stall_duration_seconds{sel}[5m]))"
            ));
            v.first().copied().filter(|v| *v >= 0.25)
        },
    );
    let lag_max = wait_for(
        "PromQL to read the lag the agent derived",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let v = prom.query(&format!(
                "max(max_over_time(loopwatch_service_lag_seconds{sel}[5m]))"
            ));
            v.first().copied().filter(|v| *v >= 1.0)
        },
    );
    eprintln!("prometheus: stalls={stalls} stall_max={stall_max} lag_max={lag_max}");
    assert!(
        lag_max <= BLOCK_MS as f64 / 1000.0 + 0.05,
        "lag never reads above the block: {lag_max}"
    );
}
