//! A real Node.js process with the OpenTelemetry JS SDK and
//! `@opentelemetry/instrumentation-runtime-node` busy-loops for 1.5 s: its `/readyz` entry
//! turns 503 (lag from `nodejs.eventloop.delay.p99`) and it recovers afterwards.
//!
//! Node exports on its own event loop, so its exports stop during the block: the agent
//! learns the 200 ms cadence and reads the overdue export as lag while the block goes on.
//! The test polls `/v1/status` and `/readyz?service=` over a bounded time and records what it
//! saw, instead of timing anything. The script blocks exactly once.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use loopwatch_agent::config::Config;

fn install_peer() -> std::path::PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/install.sh");
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run agent/tests/peers/install.sh");
    assert!(
        out.status.success(),
        "installing the OpenTelemetry JS peer failed: run agent/tests/peers/install.sh (needs node + npm)"
    );
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn node_busy_loop_turns_readyz_503_then_recovers() {
    let dir = install_peer();
    let agent = TestAgent::start(
        Config::builder()
            .hold(Duration::from_secs(1))
            .stale_after(Duration::from_secs(600)),
    );
    let mut child = Command::new("node")
        .current_dir(&dir)
        .args(["busy.mjs", &agent.http("/v1/metrics"), "node-busy", "8000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");

    let ready = |agent: &TestAgent| agent.get("/readyz?service=node-busy").0;
    let mut seen_ok_before = false;
    let mut seen_unhealthy = false;
    let mut max_lag = 0.0_f64;
    let mut reasons = serde_json::Value::Null;
    let mut recovered = false;
    let start = Instant::now();
    // Bounded: the script runs ~11 s; 60 s is a generous protocol bound.
    while start.elapsed() < Duration::from_secs(60) {
        if let Some(st) = status_of(&agent, "node-busy", "") {
            assert_eq!(st["runtime"], "nodejs", "{st}");
            let lag = st["lag_seconds"].as_f64().unwrap_or(0.0);
            max_lag = max_lag.max(lag);
            match st["state"].as_str() {
                Some("ok") if !seen_unhealthy => seen_ok_before = true,
                Some("unhealthy") => {
                    if !seen_unhealthy {
                        let (code, body) = agent.get_json("/readyz?service=node-busy");
                        assert_eq!(code, 503, "{body}");
                        reasons = body["reasons"].clone();
                    }
                    seen_unhealthy = true;
                }
                Some("ok") if seen_unhealthy && ready(&agent) == 200 => {
                    recovered = true;
                    break;
                }
                _ => {}
            }
        }
        if child.try_wait().expect("wait").is_some() && !seen_unhealthy {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("node output");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(seen_ok_before, "never ok before the busy loop; node: {log}");
    assert!(
        seen_unhealthy,
        "never unhealthy (max lag {max_lag} s); node: {log}"
    );
    assert!(
        max_lag >= 0.25,
        "lag {max_lag} s below lag_enter while unhealthy"
    );
    assert!(
        reasons.as_array().is_some_and(|r| r
            .iter()
            .any(|x| x["reason"].as_str().is_some_and(|s| s.contains("lag ")))),
        "{reasons}"
    );
    assert!(recovered, "did not recover; node: {log}");
    eprintln!("node: {log}");
}
