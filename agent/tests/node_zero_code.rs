//! A real express service under Node.js zero-code OpenTelemetry
//! (`node --require @opentelemetry/auto-instrumentations-node/register`), configured by
//! `OTEL_*` variables only, against the agent at its health defaults.
//!
//! - On the SDK's default 60 s export interval it is listed after its first export, is never
//!   stale between on-time exports, and carries the slow-exporter warning.
//! - At 1 s, one 3 s block in a handler turns `/readyz?service=` 503 while the block is still
//!   going on: the SDK exports from the blocked loop, so its export is overdue.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use loopwatch_agent::config::Config;
use loopwatch_e2e::{SLEEP_PLAN_MS, assert_percentiles_in_raw_buckets};

fn install_peer() -> std::path::PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/install.sh");
    let out = Command::new("bash")
        .args([script, "zerocode"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run agent/tests/peers/install.sh zerocode");
    assert!(
        out.status.success(),
        "installing the zero-code Node.js peer failed: run agent/tests/peers/install.sh zerocode (needs node + npm)"
    );
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The express service, exporting to `agent`; `interval_ms` `None` keeps the SDK default.
/// Returns the child and its HTTP port.
fn express(agent: &TestAgent, service: &str, interval_ms: Option<u64>) -> (Child, u16) {
    let dir = install_peer();
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .args([
            "--require",
            "@opentelemetry/auto-instrumentations-node/register",
            "app.js",
        ])
        .env("OTEL_SERVICE_NAME", service)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", agent.http(""))
        .env("OTEL_TRACES_EXPORTER", "none")
        .env("OTEL_LOGS_EXPORTER", "none")
        .env("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
        .env_remove("OTEL_METRIC_EXPORT_INTERVAL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(ms) = interval_ms {
        cmd.env("OTEL_METRIC_EXPORT_INTERVAL", ms.to_string());
    }
    let mut child = cmd.spawn().expect("spawn node");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read node's first line");
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("express did not start: {line:?}"));
    (child, port)
}

/// The `/v1/status` entry of `service` (the SDK generates its instance id).
fn status(agent: &TestAgent, service: &str) -> Option<serde_json::Value> {
    let (_, body) = agent.get_json("/v1/status");
    body["services"]
        .as_array()?
        .iter()
        .find(|s| s["service"] == service)
        .cloned()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn default_60s_interval_is_never_stale_between_exports_and_warned() {
    let agent = TestAgent::start(Config::builder());
    let (child, _port) = express(&agent, "zc-slow", None);
    let _child = Killed(child);
    // Bounded: the SDK exports at ~60, ~120 and ~180 s.
    let start = Instant::now();
    let mut listed_at = None;
    let mut exports = 0;
    let mut last_age = f64::INFINITY;
    let mut warning = None;
    while start.elapsed() < Duration::from_secs(215) && exports < 3 {
        if let Some(st) = status(&agent, "zc-slow") {
            listed_at.get_or_insert(start.elapsed());
            let age = st["last_seen_age_seconds"].as_f64().expect("age");
            if age < last_age {
                exports += 1;
            }
            last_age = age;
            let (code, body) = agent.get_json("/readyz?service=zc-slow");
            assert_eq!(
                code,
                200,
                "503 between on-time exports at {:?}: {body} {st}",
                start.elapsed()
            );
            if let Some(w) = st["warnings"].as_array().and_then(|w| w.first()) {
                warning = Some(w.as_str().unwrap_or_default().to_owned());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let listed_at = listed_at.expect("never listed");
    assert!(exports >= 3, "only {exports} exports seen");
    let st = status(&agent, "zc-slow").expect("listed");
    let every = st["export_interval_seconds"]
        .as_f64()
        .expect("interval known");
    assert!((55.0..65.0).contains(&every), "{st}");
    let warning = warning.expect("slow-exporter warning");
    assert!(
        warning.contains("OTEL_METRIC_EXPORT_INTERVAL=1000"),
        "{warning}"
    );
    eprintln!("listed after {listed_at:?}; interval {every} s; warning: {warning}");
}

#[test]
fn one_3s_block_turns_readyz_503_while_it_goes_on() {
    let agent = TestAgent::start(Config::builder());
    let (child, port) = express(&agent, "zc-block", Some(1000));
    let _child = Killed(child);
    // The cadence is confirmed after a few exports.
    assert!(
        eventually(Duration::from_secs(30), || {
            status(&agent, "zc-block")
                .is_some_and(|s| s["export_interval_seconds"].as_f64().is_some())
                && agent.get("/readyz?service=zc-block").0 == 200
        }),
        "never listed and ready"
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(agent.get("/readyz?service=zc-block").0, 200);

    let blocker = std::thread::spawn(move || {
        let started = Instant::now();
        let body = client()
            .get(format!("http://127.0.0.1:{port}/block?ms=3000"))
            .timeout(Duration::from_secs(20))
            .send()
            .and_then(|r| r.text());
        (started, Instant::now(), body)
    });
    let poll_start = Instant::now();
    let mut not_ready = None;
    while poll_start.elapsed() < Duration::from_secs(10) && !blocker.is_finished() {
        let (code, body) = agent.get_json("/readyz?service=zc-block");
        if code == 503 {
            not_ready = Some((Instant::now(), body));
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (started, ended, body) = blocker.join().expect("blocker");
    assert!(body.is_ok_and(|b| b.starts_with("blocked 3000")));
    let (at, reasons) = not_ready.expect("/readyz never turned 503 during the block");
    assert!(at < ended, "503 only after the block ended");
    let text = reasons.to_string();
    assert!(
        text.contains("no export for") && text.contains("event loop blocked"),
        "{text}"
    );
    eprintln!(
        "503 {:?} after the block started (block took {:?}): {text}",
        at.saturating_duration_since(started),
        ended - started
    );
    // And it recovers once the loop runs again (hold 3 s, then a calm window).
    assert!(
        eventually(Duration::from_secs(15), || agent
            .get("/readyz?service=zc-block")
            .0
            == 200),
        "did not recover after the block"
    );
}

#[test]
fn route_percentiles_land_in_the_buckets_of_the_raw_observations() {
    let agent = TestAgent::start(Config::builder());
    let (child, port) = express(&agent, "zc-routes", Some(1000));
    let _child = Killed(child);
    let base = format!("http://127.0.0.1:{port}");
    let c = reqwest::blocking::Client::new();
    // Warm the handlers' code paths on another route.
    for _ in 0..5 {
        assert_eq!(
            c.get(format!("{base}/")).send().expect("GET /").status(),
            200
        );
    }
    let mut raw = Vec::new();
    for (ms, n) in SLEEP_PLAN_MS {
        for _ in 0..n {
            let r = c
                .get(format!("{base}/sleep?ms={ms}"))
                .send()
                .expect("GET /sleep");
            assert_eq!(r.status(), 200);
            raw.push(ms as f64 / 1e3);
        }
    }
    for _ in 0..10 {
        let r = c.get(format!("{base}/fail")).send().expect("GET /fail");
        assert_eq!(r.status(), 500);
    }
    let sent = raw.len() as u64;
    // Bounded: the SDK exports every second.
    let start = Instant::now();
    let routes = loop {
        let routes = status(&agent, "zc-routes")
            .and_then(|s| s["routes"].as_array().cloned())
            .unwrap_or_default();
        let count = |route: &str| {
            routes
                .iter()
                .find(|r| r["route"] == route)
                .and_then(|r| r["requests"].as_u64())
        };
        if count("/sleep") == Some(sent) && count("/fail") == Some(10) {
            break routes;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the agent never counted {sent} /sleep and 10 /fail requests: {routes:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(routes[0]["route"], "/fail", "{routes:?}");
    assert_eq!(routes[0]["error_ratio"], 1.0);
    let sleep = routes
        .iter()
        .find(|r| r["route"] == "/sleep")
        .expect("/sleep");
    assert_eq!(sleep["method"], "GET", "{sleep}");
    assert_eq!(sleep["error_ratio"], 0.0, "{sleep}");
    assert_percentiles_in_raw_buckets(sleep, &raw);
    eprintln!("node /sleep: {sleep}");
}
