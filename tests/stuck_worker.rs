//! End to end: one of four workers of a real `example-service` spins 2 s (`GET /spin`) while
//! the others keep the probe's lag near zero. The agent names the stuck worker as a reason
//! within `health.stuck_enter` + 200 ms of the spin's start, keeps the service ready (the
//! default `health.stuck_workers = "report"`), raises pressure, shows the worker in
//! `/v1/status` and on `/metrics`, and drops the reason after the spin.

use std::time::{Duration, Instant};

use loopwatch_e2e::{Agent, Service, http_get, wait_for};

const SPIN_MS: u64 = 2000;
/// `health.stuck_enter` at its default.
const STUCK_ENTER: Duration = Duration::from_secs(1);

fn stuck_reason(s: &serde_json::Value) -> Option<String> {
    s["reasons"]
        .as_array()?
        .iter()
        .filter_map(|r| r.as_str())
        .find(|r| r.contains("stuck for"))
        .map(str::to_owned)
}

#[test]
fn one_stuck_worker_of_four_is_a_reason_during_the_spin_and_gone_after() {
    let agent = Agent::start(&[]);
    let service = Service::start_with(&agent, "stuck-e2e", &["--workers", "4"]);
    service.wait_ready_at(&agent);

    let url = format!("{}/spin?ms={SPIN_MS}", service.url);
    let started = Instant::now();
    let spin = std::thread::spawn(move || (http_get(&url).0, Instant::now()));
    let mut seen = None;
    while !spin.is_finished() && started.elapsed() < Duration::from_secs(10) {
        if let Some(s) = agent.service_status(&service.name)
            && let Some(r) = stuck_reason(&s)
        {
            seen = Some((started.elapsed(), r, s));
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (at, reason, status) = seen.expect("no stuck reason during the spin");
    eprintln!("spin start -> stuck reason: {at:?}: {reason}");
    assert!(
        at <= STUCK_ENTER + Duration::from_millis(200),
        "stuck reason after {at:?}, beyond stuck_enter + 200 ms: {status}"
    );
    assert!(reason.starts_with("worker "), "{reason}");
    assert_eq!(
        status["state"], "ok",
        "report mode keeps it ready: {status}"
    );
    let workers = status["stuck_workers"].as_array().expect("stuck_workers");
    assert_eq!(workers.len(), 1, "{status}");
    assert!(
        workers[0]["seconds"].as_f64().unwrap_or(0.0) >= 1.0,
        "{status}"
    );
    let pressure = status["pressure"].as_f64().expect("pressure");
    let lag = status["lag_seconds"].as_f64().unwrap_or(0.0);
    let util = status["utilization"].as_f64().unwrap_or(0.0);
    assert!(
        pressure > (lag / 0.1).max(util / 0.8),
        "pressure counts the lost worker: {status}"
    );
    let label = format!("service_name=\"{}\"", service.name);
    assert_eq!(
        agent.metric_values("loopwatch_service_stuck_workers", &label),
        vec![1.0]
    );
    assert_eq!(agent.get("/readyz?service=stuck-e2e").0, 200);

    let (code, _ended) = spin.join().expect("spin thread");
    assert_eq!(code, 200);
    wait_for(
        "stuck reason gone after the spin",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let s = agent.service_status(&service.name)?;
            (stuck_reason(&s).is_none() && s["stuck_workers"] == serde_json::json!([]))
                .then_some(())
        },
    );
}
