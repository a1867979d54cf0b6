//! End to end: a real `example-service` with `--shed-delay-ms 50` under steady traffic sheds
//! the requests that queued behind a 1.5 s block (503 + `Retry-After`, marked
//! `error.type = "loopwatch.shed"`). The agent counts them as shed, not as route errors, so
//! `/readyz` is back to 200 within `health.hold` + 1 s of the block's end instead of
//! `health.error_window` later, and the shed ratio is visible.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loopwatch_e2e::{Agent, Service, client, wait_for};

const BLOCK_MS: u64 = 1500;
/// `health.hold` at its default.
const HOLD: Duration = Duration::from_secs(3);

#[test]
fn shed_responses_are_not_errors_and_readiness_recovers_after_the_hold() {
    let agent = Agent::start(&[]);
    let service = Service::start_with(&agent, "shed-e2e", &["--shed-delay-ms", "50"]);
    service.wait_ready_at(&agent);

    // ~60 requests/s, bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let shed = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (stop, shed, url) = (stop.clone(), shed.clone(), service.url.clone());
        std::thread::spawn(move || {
            let c = client();
            let started = Instant::now();
            for i in 0..3000u64 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(40) {
                    break;
                }
                if let Ok(r) = c.get(format!("{url}/items/{}", i % 7)).send()
                    && r.status() == 503
                    && r.headers().contains_key("retry-after")
                {
                    shed.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(16));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let (code, ended) = service.block_in_background(BLOCK_MS).join().expect("block");
    assert_eq!(code, 200);
    let recovered = wait_for(
        "/readyz back to 200 after the block",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || (agent.get("/readyz?service=shed-e2e").0 == 200).then(Instant::now),
    );
    let after = recovered.saturating_duration_since(ended);
    eprintln!("block end -> /readyz 200: {after:?}");
    assert!(
        after <= HOLD + Duration::from_secs(1),
        "readiness recovered {after:?} after the block, beyond hold + 1 s"
    );
    // Traffic goes on; the shed responses are counted as shed and never as errors.
    std::thread::sleep(Duration::from_secs(2));
    let status = agent.service_status(&service.name).expect("tracked");
    stop.store(true, Ordering::Relaxed);
    traffic.join().expect("traffic");
    let shed = shed.load(Ordering::Relaxed);
    assert!(shed > 0, "the service shed nothing: {status}");
    let ratio = status["shed_ratio"].as_f64().expect("shed_ratio");
    assert!(ratio > 0.0, "{status}");
    assert_eq!(status["state"], "ok", "{status}");
    let by_route = status["shed_by_route"].as_array().expect("shed_by_route");
    assert!(
        by_route
            .iter()
            .any(|r| r["route"] == "/items/{id}" && r["shed"].as_u64().unwrap_or(0) > 0),
        "{status}"
    );
    let label = format!("service_name=\"{}\"", service.name);
    assert!(
        agent
            .metric_values("loopwatch_service_shed_ratio", &label)
            .iter()
            .any(|v| *v > 0.0)
    );
    eprintln!("shed {shed} responses; agent shed_ratio {ratio}");
}
