//! End to end: a real SIGTERM to a real `example-service` exporting to a real
//! `loopwatch-agent`. During the drain delay local `/readyz` is 503 and the agent hears
//! `loopwatch.lifecycle.state` = 1; after it the listener is closed (connections refused) while
//! an in-flight slow request still runs; that request completes with 200, the process exits 0,
//! and the final export (lifecycle 2, the slow request's duration) reaches the agent.

use std::process::Command;
use std::time::Duration;

use loopwatch_e2e::{Agent, Service, http_get, wait_for};

/// Drain delay given to the service: long enough for the checks made during it.
const DRAIN_MS: u64 = 3000;
/// The in-flight request: outlives the drain delay by several seconds.
const SLOW_MS: u64 = 7000;

fn max_value(agent: &Agent, family: &str, filter: &str) -> Option<f64> {
    agent
        .metric_values(family, filter)
        .into_iter()
        .reduce(f64::max)
}

#[test]
fn sigterm_drains_refuses_new_connections_and_final_metrics_reach_the_agent() {
    let agent = Agent::start(&[]);
    let drain = DRAIN_MS.to_string();
    let mut service = Service::start_with(
        &agent,
        "shutdown-e2e",
        &["--drain-delay-ms", &drain, "--drain-deadline-ms", "30000"],
    );
    service.wait_ready_at(&agent);
    let label = format!("service_name=\"{}\"", service.name);
    wait_for(
        "lifecycle 0 at the agent",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || (max_value(&agent, "loopwatch_lifecycle_state", &label) == Some(0.0)).then_some(()),
    );

    let slow_url = format!("{}/sleep?ms={SLOW_MS}", service.url);
    let slow = std::thread::spawn(move || http_get(&slow_url));
    // The slow request is in flight once the agent sees one active request.
    wait_for(
        "one active request at the agent",
        Duration::from_secs(15),
        Duration::from_millis(20),
        || {
            let v = max_value(&agent, "http_server_active_requests", &label)?;
            (v >= 1.0).then_some(())
        },
    );

    let status = Command::new("kill")
        .args(["-TERM", &service.proc.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM");

    // Draining: still accepting, but local readiness is 503 and the agent is told.
    let (code, body) = wait_for(
        "local /readyz 503 draining",
        Duration::from_secs(DRAIN_MS / 1000),
        Duration::from_millis(10),
        || {
            let (code, body) = http_get(&format!("{}/readyz", service.url));
            (code == 503).then_some((code, body))
        },
    );
    assert!(body.contains("draining"), "{code} {body}");
    wait_for(
        "lifecycle 1 (draining) at the agent",
        Duration::from_secs(DRAIN_MS / 1000),
        Duration::from_millis(10),
        || (max_value(&agent, "loopwatch_lifecycle_state", &label) == Some(1.0)).then_some(()),
    );
    assert!(!slow.is_finished(), "the slow request is still in flight");

    // After the drain delay: the listener is closed while the slow request still runs.
    let addr = service.url.trim_start_matches("http://").to_string();
    wait_for(
        "new connections refused after the drain",
        Duration::from_secs(15),
        Duration::from_millis(20),
        || match std::net::TcpStream::connect(&addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    );
    assert!(
        !slow.is_finished(),
        "connections were refused while the slow request was still in flight"
    );

    let (code, body) = slow.join().expect("slow request thread");
    assert_eq!(code, 200, "in-flight request completed: {body}");
    assert!(body.contains(&format!("slept {SLOW_MS} ms")), "{body}");

    let exit = service
        .proc
        .signal_and_wait("TERM", Duration::from_secs(30))
        .expect("service exits after draining");
    assert!(exit.success(), "clean exit: {exit:?}");

    // The final export: lifecycle 2 and the slow request's duration.
    wait_for(
        "lifecycle 2 (stopped) at the agent",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || (max_value(&agent, "loopwatch_lifecycle_state", &label) == Some(2.0)).then_some(()),
    );
    let (_, metrics) = agent.get("/metrics");
    let slow_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("http_server_request_duration_seconds_count")
                && l.contains(&label)
                && l.contains("http_route=\"/sleep\"")
        })
        .unwrap_or_else(|| panic!("no /sleep duration count at the agent:\n{metrics}"));
    let n: f64 = slow_line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        n >= 1.0,
        "the slow request is in the final export: {slow_line}"
    );
}
