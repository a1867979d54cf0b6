//! `exporter.headers` and `exporter.compression` on the upstream exporter: capturing OTLP
//! receivers on loopback (tonic gRPC, axum HTTP) see the configured headers and gzip on both
//! transports; `--print-config` shows the headers as `<redacted>`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use common::{TestAgent, gauge, request};
use loopwatch_agent::config::{Config, ExportProtocol};
use loopwatch_e2e::capture::{self, Seen};

fn headers_arrive(protocol: ExportProtocol) -> HeaderMap {
    let seen: Seen = Arc::default();
    let (_rt, addr) = capture::receiver(protocol == ExportProtocol::Grpc, seen.clone());
    let builder = Config::builder()
        .exporter(format!("http://{addr}"), protocol)
        .exporter_interval(Duration::from_millis(100))
        .set(
            "exporter.headers",
            "authorization=Bearer%20tok123,X-Tenant=acme",
        )
        .and_then(|b| b.set("exporter.compression", "gzip"))
        .expect("valid keys");
    let agent = TestAgent::start(builder);
    let status = agent.post_metrics(&request("up", "i1", vec![gauge("g", "1", 1.0, &[])]));
    assert_eq!(status, 200);
    let got = common::eventually(Duration::from_secs(10), || {
        !seen.lock().expect("lock").is_empty()
    });
    assert!(got, "{protocol:?}: nothing reached the capturing receiver");
    let h = seen.lock().expect("lock")[0].0.clone();
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(
        get("authorization").as_deref(),
        Some("Bearer tok123"),
        "{h:?}"
    );
    assert_eq!(get("x-tenant").as_deref(), Some("acme"), "{h:?}");
    h
}

#[test]
fn headers_and_gzip_reach_grpc_and_http_receivers() {
    let grpc = headers_arrive(ExportProtocol::Grpc);
    assert_eq!(
        grpc.get("grpc-encoding").and_then(|v| v.to_str().ok()),
        Some("gzip"),
        "{grpc:?}"
    );
    let http = headers_arrive(ExportProtocol::HttpProtobuf);
    assert_eq!(
        http.get("content-encoding").and_then(|v| v.to_str().ok()),
        Some("gzip"),
        "{http:?}"
    );
}

#[test]
fn print_config_redacts_headers_and_bad_values_name_the_key() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loopwatch-agent"))
        .args([
            "--set",
            "exporter.headers=x-api-key=hunter2",
            "--print-config",
        ])
        .output()
        .expect("run agent");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("headers = \"<redacted>\""), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    for (key, value) in [
        ("exporter.headers", "no-equals-sign"),
        ("exporter.headers", "bad name=v"),
        ("exporter.compression", "zstd"),
    ] {
        let e = Config::builder().set(key, value).expect_err("invalid");
        let e = e.to_string();
        assert!(e.starts_with(key), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
