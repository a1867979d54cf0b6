//! Health engine through the admin API: lag enter/hold/leave hysteresis on /readyz,
//! staleness, stall-driven lag, service scoping, /v1/pressure and /v1/history.

mod common;

use std::time::Duration;

use common::*;
use loopwatch_agent::config::Config;
use serde_json::json;

/// Generous bound for timer-driven transitions (protocol bound, not a performance check).
const BOUND: Duration = Duration::from_secs(60);

#[test]
fn lag_enters_holds_then_leaves() {
    let agent = TestAgent::start(
        Config::builder()
            .hold(Duration::from_secs(5))
            .stale_after(Duration::from_secs(600)),
    );
    assert_eq!(
        agent.get_json("/readyz"),
        (200, json!({"status": "ready", "services": 0}))
    );
    assert_eq!(
        agent.post_metrics(&tokio_export("svc", "i-1", 1.204, 0.0, 0.5)),
        200
    );
    let (code, body) = agent.get_json("/readyz");
    assert_eq!(code, 503);
    assert_eq!(
        body,
        json!({"status": "not_ready", "reasons": [{
            "service": "svc", "instance": "i-1", "state": "unhealthy",
            "reason": "lag 1.204 s >= 0.250 s"
        }]})
    );
    // Scoped to another service: ready.
    assert_eq!(
        agent.get_json("/readyz?service=other"),
        (200, json!({"status": "ready", "services": 0}))
    );

    // Lag drops below lag_leave: still unhealthy while the 5 s hold runs.
    assert_eq!(
        agent.post_metrics(&tokio_export("svc", "i-1", 0.01, 0.0, 0.5)),
        200
    );
    let (code, body) = agent.get_json("/readyz?service=svc");
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["reasons"][0]["state"], "unhealthy");
    let st = status_of(&agent, "svc", "i-1").expect("tracked");
    assert_eq!(st["state"], "unhealthy");
    assert_eq!(st["lag_seconds"], 0.01);

    // The hold expires on the agent's timer, without another export.
    assert!(
        eventually(BOUND, || agent.get("/readyz").0 == 200),
        "readiness must recover after the hold"
    );
    assert_eq!(
        agent.get_json("/readyz"),
        (200, json!({"status": "ready", "services": 1}))
    );
    assert_eq!(
        status_of(&agent, "svc", "i-1").expect("tracked")["state"],
        "ok"
    );
}

#[test]
fn between_thresholds_does_not_enter() {
    let agent = TestAgent::start(Config::builder().stale_after(Duration::from_secs(600)));
    // 0.2 s: above lag_leave (0.1) but below lag_enter (0.25): stays ready.
    assert_eq!(
        agent.post_metrics(&tokio_export("mid", "", 0.2, 0.0, 0.1)),
        200
    );
    assert_eq!(agent.get("/readyz").0, 200);
}

#[test]
fn current_stall_counts_as_lag() {
    let agent = TestAgent::start(Config::builder().stale_after(Duration::from_secs(600)));
    assert_eq!(
        agent.post_metrics(&tokio_export("stuck", "s-1", 0.001, 0.6, 1.0)),
        200
    );
    let (code, body) = agent.get_json("/readyz");
    assert_eq!(code, 503);
    assert_eq!(body["reasons"][0]["reason"], "lag 0.600 s >= 0.250 s");
    let st = status_of(&agent, "stuck", "s-1").expect("tracked");
    assert_eq!(st["stall_seconds"], 0.6);
    assert_eq!(st["delay_p99_seconds"], 0.001);
    assert_eq!(st["lag_seconds"], 0.6);
}

#[test]
fn no_data_becomes_stale_and_recovers_on_data() {
    let agent = TestAgent::start(Config::builder().stale_after(Duration::from_secs(1)));
    assert_eq!(
        agent.post_metrics(&tokio_export("quiet", "q-1", 0.001, 0.0, 0.1)),
        200
    );
    assert!(
        eventually(BOUND, || agent.get("/readyz").0 == 503),
        "must go stale without data"
    );
    let (_, body) = agent.get_json("/readyz");
    let reason = &body["reasons"][0];
    assert_eq!(reason["state"], "stale");
    assert!(
        reason["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("no data for ")),
        "{body}"
    );
    let text = agent.get("/metrics").1;
    assert!(
        text.lines()
            .any(|l| l
                == r#"loopwatch_service_stale{service_name="quiet",service_instance_id="q-1"} 1"#),
        "{text}"
    );
    assert_eq!(
        agent.post_metrics(&tokio_export("quiet", "q-1", 0.001, 0.0, 0.1)),
        200
    );
    assert!(eventually(BOUND, || agent.get("/readyz").0 == 200));
}

#[test]
fn pressure_endpoint_reports_each_service_and_max() {
    let agent = TestAgent::start(Config::builder().stale_after(Duration::from_secs(600)));
    // pressure = max(lag / 0.1, utilization / 0.8)
    assert_eq!(
        agent.post_metrics(&tokio_export("p", "a", 0.05, 0.0, 0.2)),
        200
    ); // 0.5
    assert_eq!(
        agent.post_metrics(&tokio_export("p", "b", 0.01, 0.0, 0.6)),
        200
    ); // 0.75
    let (code, body) = agent.get_json("/v1/pressure");
    assert_eq!(code, 200);
    let close =
        |v: &serde_json::Value, want: f64| v.as_f64().is_some_and(|x| (x - want).abs() < 1e-9);
    let services = body["services"].as_array().expect("services");
    assert_eq!(services.len(), 2, "{body}");
    assert_eq!(services[0]["instance"], "a");
    assert!(close(&services[0]["pressure"], 0.5), "{body}");
    assert_eq!(services[1]["instance"], "b");
    assert!(close(&services[1]["pressure"], 0.75), "{body}");
    assert!(close(&body["max"], 0.75), "{body}");
}

#[test]
fn history_endpoint_serves_samples_and_episodes_and_refuses_bad_queries() {
    let agent = TestAgent::start(Config::builder().hold(Duration::from_millis(200)));
    assert_eq!(
        agent.post_metrics(&tokio_export("hist", "a", 0.004, 0.0, 0.3)),
        200
    );
    assert_eq!(
        agent.post_metrics(&tokio_export("hist", "b", 0.9, 0.0, 0.9)),
        200
    );

    let (code, body) = agent.get_json("/v1/history?service=hist");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["service"], "hist");
    assert_eq!(body["step_seconds"], 1);
    let now = body["now"].as_f64().expect("now");
    let instances = body["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 2, "{body}");
    let b = instances.iter().find(|i| i["instance"] == "b").expect("b");
    let sample = b["samples"]
        .as_array()
        .and_then(|s| s.last())
        .expect("a sample");
    assert_eq!(sample["state"], "unhealthy", "{sample}");
    assert_eq!(sample["lag_seconds"], 0.9f32 as f64, "{sample}");
    assert!(
        (sample["time"].as_f64().expect("time") - now).abs() <= 1.0,
        "{sample}"
    );
    for key in [
        "utilization",
        "pressure",
        "error_ratio",
        "heap_growth_bytes_per_second",
        "stuck_workers",
    ] {
        assert!(sample.get(key).is_some(), "{key} missing: {sample}");
    }
    let episode = &b["episodes"][0];
    assert_eq!(episode["kind"], "unhealthy", "{b}");
    assert_eq!(episode["ongoing"], true);
    assert_eq!(episode["end"], serde_json::Value::Null);
    assert_eq!(episode["reasons"][0], "lag 0.900 s >= 0.250 s", "{episode}");

    let (code, body) = agent.get_json("/v1/history?service=hist&instance=a");
    assert_eq!(code, 200);
    assert_eq!(
        body["instances"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
    assert_eq!(body["instances"][0]["episodes"], serde_json::json!([]));

    let (code, body) = agent.get_json("/v1/history");
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("service"),
        "{body}"
    );
    let (code, body) = agent.get_json("/v1/history?service=nobody");
    assert_eq!(code, 404, "{body}");
}
