//! End to end: the example service's route layer exports `http.server.request.duration` per
//! route template (unmatched requests share one value, 5xx carry `error.type`) and the
//! per-route error ratio to a real agent; its shedding layer answers 503 + `Retry-After` right
//! after a stall while health routes stay exempt, and recovers.

use std::time::Duration;

use loopwatch_e2e::{Agent, Service, client, http_get, wait_for};

fn value(agent: &Agent, family: &str, filters: &[&str]) -> Option<f64> {
    let (_, body) = agent.get("/metrics");
    body.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(f64::max)
}

#[test]
fn per_route_metrics_reach_the_agent() {
    let agent = Agent::start(&[]);
    let service = Service::start(&agent, "routes-e2e");
    service.wait_ready_at(&agent);
    for path in [
        "/",
        "/items/1",
        "/items/2",
        "/items/3",
        "/fail",
        "/fail",
        "/no/such/route",
    ] {
        let (code, _) = http_get(&format!("{}{path}", service.url));
        assert_ne!(code, 0, "{path} answered");
    }
    let svc = format!("service_name=\"{}\"", service.name);
    let count = "http_server_request_duration_seconds_count";
    let items = wait_for(
        "3 requests on http.route=/items/{id}",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            let v = value(&agent, count, &[&svc, "http_route=\"/items/{id}\""])?;
            (v >= 3.0).then_some(v)
        },
    );
    assert_eq!(items, 3.0, "one series for the template, not one per id");
    let fails = value(
        &agent,
        count,
        &[
            &svc,
            "http_route=\"/fail\"",
            "error_type=\"500\"",
            "http_response_status_code=\"500\"",
        ],
    );
    assert_eq!(fails, Some(2.0), "5xx carry error.type");
    let unmatched = value(&agent, count, &[&svc, "http_route=\"(unmatched)\""]);
    assert_eq!(
        unmatched,
        Some(1.0),
        "unmatched requests share one route value"
    );
    let ok_root = value(
        &agent,
        count,
        &[&svc, "http_route=\"/\"", "http_request_method=\"GET\""],
    );
    assert_eq!(ok_root, Some(1.0));
    let ratio = wait_for(
        "error ratio of /fail exported",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            value(
                &agent,
                "loopwatch_http_route_error_ratio",
                &[&svc, "http_route=\"/fail\""],
            )
        },
    );
    assert_eq!(ratio, 1.0);
    let items_ratio = value(
        &agent,
        "loopwatch_http_route_error_ratio",
        &[&svc, "http_route=\"/items/{id}\""],
    );
    assert_eq!(items_ratio, Some(0.0));
}

#[test]
fn shedding_after_a_stall_with_health_routes_exempt() {
    let agent = Agent::start(&[]);
    let service = Service::start_with(&agent, "shed-e2e", &["--shed-delay-ms", "200"]);
    service.wait_ready_at(&agent);
    assert_eq!(
        http_get(&format!("{}/", service.url)).0,
        200,
        "not shedding when idle"
    );

    // Block the (current_thread) runtime; right after, the window p99 holds the block.
    let block = service.block_in_background(800);
    let (code, _) = block.join().expect("block thread");
    assert_eq!(code, 200, "the block request itself was admitted");
    let retry_after = wait_for(
        "503 + Retry-After after the stall",
        Duration::from_secs(5),
        Duration::from_millis(5),
        || {
            let resp = client().get(format!("{}/", service.url)).send().ok()?;
            (resp.status().as_u16() == 503).then(|| {
                resp.headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
        },
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(
        http_get(&format!("{}/livez", service.url)).0,
        200,
        "health routes are never shed"
    );
    wait_for(
        "shedding stops after the stall window",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || (http_get(&format!("{}/", service.url)).0 == 200).then_some(()),
    );
    let svc = format!("service_name=\"{}\"", service.name);
    let shed = wait_for(
        "shed 503s counted on route /",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            value(
                &agent,
                "http_server_request_duration_seconds_count",
                &[
                    &svc,
                    "http_route=\"/\"",
                    "http_response_status_code=\"503\"",
                ],
            )
        },
    );
    assert!(shed >= 1.0);
}
