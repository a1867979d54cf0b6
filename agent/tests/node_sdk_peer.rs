//! A real peer: the OpenTelemetry JS SDK (with `@opentelemetry/instrumentation-runtime-node`)
//! exports to the agent over OTLP/HTTP JSON (chunked, no Content-Length), OTLP/HTTP protobuf
//! and OTLP/gRPC. The agent must accept all three, recognise the Node.js runtime, and expose
//! everything in a `promtool`-clean `/metrics`.
//!
//! The SDK is installed by `agent/tests/peers/install.sh` (idempotent, into
//! `<repo>/.cache/agent/npm`). If it cannot be installed the test fails; it is never skipped.

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
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::path::PathBuf::from(dir)
}

fn run_node(dir: &std::path::Path, mode: &str, url: &str, instance: &str) {
    let mut child = Command::new("node")
        .current_dir(dir)
        .args(["export.mjs", mode, url, instance])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait node") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("node exporter ({mode}) did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("node output");
    assert!(
        status.success(),
        "node exporter ({mode}) failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn opentelemetry_js_exports_over_json_proto_and_grpc() {
    let dir = install_peer();
    let agent = TestAgent::start(Config::builder().stale_after(Duration::from_secs(600)));
    let metrics_url = agent.http("/v1/metrics");
    run_node(&dir, "json", &metrics_url, "json-1");
    run_node(&dir, "proto", &metrics_url, "proto-1");
    run_node(&dir, "grpc", &agent.grpc_endpoint(), "grpc-1");

    for instance in ["json-1", "proto-1", "grpc-1"] {
        let st = status_of(&agent, "node-peer", instance)
            .unwrap_or_else(|| panic!("{instance} not tracked"));
        assert_eq!(st["runtime"], "nodejs", "{st}");
        assert!(
            st["delay_p99_seconds"].as_f64().is_some_and(|d| d > 0.0),
            "{st}"
        );
        assert!(
            st["utilization"]
                .as_f64()
                .is_some_and(|u| (0.0..=1.0).contains(&u)),
            "{st}"
        );
    }

    let (status, text) = agent.get("/metrics");
    assert_eq!(status, 200);
    for instance in ["json-1", "proto-1", "grpc-1"] {
        let l = format!(r#"service_name="node-peer",service_instance_id="{instance}""#);
        for line in [
            format!(r#"peer_jobs_total{{{l},job_kind="a"}} 5"#),
            format!("peer_duration_seconds_count{{{l}}} 2"),
        ] {
            assert!(text.lines().any(|x| x == line), "missing {line}\n{text}");
        }
        assert!(
            text.contains(&format!("nodejs_eventloop_delay_p99_seconds{{{l}}} ")),
            "{text}"
        );
    }
    let mut child = Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/promtool missing: install prometheus (apt-get install -y prometheus)");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
