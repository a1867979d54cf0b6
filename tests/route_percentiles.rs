//! `/v1/status` `routes` of a real `example-service`: its `/sleep` requests, of known
//! durations, read back as percentiles that land in the buckets of the percentiles of what
//! the test sent; `/fail` is all errors. The same check for a Node.js service is in
//! `agent/tests/node_zero_code.rs`.

use std::time::Duration;

use loopwatch_e2e::{
    Agent, SLEEP_PLAN_MS, Service, assert_percentiles_in_raw_buckets, client, wait_for,
};

#[test]
fn route_percentiles_land_in_the_buckets_of_the_raw_observations() {
    let agent = Agent::start(&[]);
    let service = Service::start(&agent, "percentiles");
    service.wait_ready_at(&agent);

    let c = client();
    let mut raw = Vec::new();
    for (ms, n) in SLEEP_PLAN_MS {
        for _ in 0..n {
            let r = c
                .get(format!("{}/sleep?ms={ms}", service.url))
                .send()
                .expect("GET /sleep");
            assert_eq!(r.status(), 200);
            raw.push(ms as f64 / 1e3);
        }
    }
    for _ in 0..10 {
        let r = c.get(format!("{}/fail", service.url)).send().expect("GET");
        assert_eq!(r.status(), 500);
    }
    let sent = raw.len() as u64;
    let routes = wait_for(
        "the agent to count every request",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let s = agent.service_status("percentiles")?;
            let routes = s["routes"].as_array()?.clone();
            let count = |route: &str| {
                routes
                    .iter()
                    .find(|r| r["route"] == route)
                    .and_then(|r| r["requests"].as_u64())
            };
            (count("/sleep") == Some(sent) && count("/fail") == Some(10)).then_some(routes)
        },
    );
    // Worst first: the failing route heads the list.
    assert_eq!(routes[0]["route"], "/fail", "{routes:?}");
    assert_eq!(routes[0]["error_ratio"], 1.0);
    let sleep = routes
        .iter()
        .find(|r| r["route"] == "/sleep")
        .expect("/sleep");
    assert_eq!(sleep["method"], "GET", "{sleep}");
    assert_eq!(sleep["error_ratio"], 0.0, "{sleep}");
    assert!(
        sleep["requests_per_second"].as_f64().unwrap_or(0.0) > 0.0,
        "{sleep}"
    );
    assert_percentiles_in_raw_buckets(sleep, &raw);
    eprintln!("/sleep: {sleep}");
}
