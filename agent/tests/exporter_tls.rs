//! The agent's upstream exporter over TLS and mTLS, against a real OTLP receiver: a Python
//! server (grpcio + opentelemetry-proto over gRPC, `http.server` + `ssl` over HTTP;
//! `agent/tests/peers/otlp_tls_server.py`, installed by `scripts/peers.d/35-python-otlp.sh`)
//! with a CA, server and client certificate made here with the openssl CLI. Rotel has no TLS
//! receiver. A missing peer fails the test, it is never skipped.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{eventually, gauge, request};
use loopwatch_agent::config::Config;
use loopwatch_e2e::tls::{Receiver, make_certs};
use loopwatch_e2e::{Agent, TempDir, http_post};
use prost::Message;

/// An agent exporting to `endpoint` with `protocol` and the extra `--set` values; it has
/// received one export from `service`.
fn agent_exporting(endpoint: &str, protocol: &str, sets: &[String], service: &str) -> Agent {
    let mut args: Vec<String> = [
        format!("exporter.endpoint={endpoint}"),
        format!("exporter.protocol={protocol}"),
        "exporter.interval=200ms".into(),
        "exporter.timeout=5s".into(),
        "exporter.headers=authorization=Bearer%20tls-tok,x-tenant=acme".into(),
    ]
    .into_iter()
    .chain(sets.iter().cloned())
    .flat_map(|s| ["--set".to_string(), s])
    .collect();
    args.extend(["--set".into(), "shutdown.grace=0s".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&args);
    let body = request(service, "i1", vec![gauge("tls.probe", "1", 1.0, &[])]).encode_to_vec();
    let (code, text) = http_post(
        &format!("{}/v1/metrics", agent.http),
        "application/x-protobuf",
        None,
        body,
    );
    assert_eq!(code, 200, "{text}");
    agent
}

/// Waits (bounded) until `receiver` has an export of `service`; returns its headers.
fn wait_received(receiver: &Receiver, service: &str, transport: &str) -> serde_json::Value {
    let mut got = Vec::new();
    let arrived = eventually(Duration::from_secs(30), || {
        got = receiver.received(service);
        !got.is_empty()
    });
    assert!(arrived, "{service}: nothing reached the TLS receiver");
    assert_eq!(got[0].0, transport, "{got:?}");
    got[0].1.clone()
}

fn file(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// Over gRPC and HTTP: the system roots do not trust the test CA; `exporter.tls_ca_file` does,
/// and the export arrives with `exporter.headers`.
#[test]
fn tls_export_carries_headers_over_grpc_and_http() {
    let dir = TempDir::new("exporter-tls");
    make_certs(&dir.path);
    let receiver = Receiver::start(&dir.path, false);
    let ca = vec![format!(
        "exporter.tls_ca_file={}",
        file(&dir.path, "ca.pem")
    )];
    for (protocol, port, transport) in [
        ("grpc", receiver.grpc, "grpc"),
        ("http/protobuf", receiver.http, "http"),
    ] {
        let endpoint = format!("https://127.0.0.1:{port}");
        // On the system roots alone the test CA is unknown: the server is not trusted.
        let untrusting = format!("roots-{transport}");
        let agent = agent_exporting(&endpoint, protocol, &[], &untrusting);
        let failed = eventually(Duration::from_secs(30), || {
            agent.counter("loopwatch_agent_export_errors_total", "") >= 1.0
        });
        assert!(
            failed,
            "{transport}: no failed export counted on system roots"
        );
        assert!(receiver.received(&untrusting).is_empty(), "{transport}");
        drop(agent);

        let service = format!("tls-{transport}");
        let agent = agent_exporting(&endpoint, protocol, &ca, &service);
        let headers = wait_received(&receiver, &service, transport);
        assert_eq!(headers["authorization"], "Bearer tls-tok", "{headers}");
        assert_eq!(headers["x-tenant"], "acme", "{headers}");
        drop(agent);
    }
}

#[test]
fn mtls_refuses_an_agent_without_a_client_cert_and_accepts_one_with() {
    let dir = TempDir::new("exporter-mtls");
    make_certs(&dir.path);
    let receiver = Receiver::start(&dir.path, true);
    let ca = format!("exporter.tls_ca_file={}", file(&dir.path, "ca.pem"));
    let identity = [
        ca.clone(),
        format!("exporter.tls_cert_file={}", file(&dir.path, "client.pem")),
        format!("exporter.tls_key_file={}", file(&dir.path, "client.key")),
    ];
    for (protocol, port, transport) in [
        ("grpc", receiver.grpc, "grpc"),
        ("http/protobuf", receiver.http, "http"),
    ] {
        let endpoint = format!("https://127.0.0.1:{port}");
        let anonymous = format!("anon-{transport}");
        let agent = agent_exporting(&endpoint, protocol, std::slice::from_ref(&ca), &anonymous);
        let failed = eventually(Duration::from_secs(30), || {
            agent.counter("loopwatch_agent_export_errors_total", "") >= 1.0
        });
        assert!(
            failed,
            "{transport}: no failed export counted without a client cert"
        );
        assert!(
            receiver.received(&anonymous).is_empty(),
            "{transport}: the mTLS receiver accepted an agent without a client cert"
        );
        drop(agent);

        let service = format!("mtls-{transport}");
        let agent = agent_exporting(&endpoint, protocol, &identity, &service);
        let headers = wait_received(&receiver, &service, transport);
        assert_eq!(headers["x-tenant"], "acme", "{headers}");
        assert_eq!(
            agent.counter("loopwatch_agent_export_errors_total", ""),
            0.0
        );
    }
}

#[test]
fn tls_files_are_checked_at_startup_naming_the_key() {
    let dir = TempDir::new("exporter-tls-config");
    std::fs::write(dir.path.join("junk.pem"), "not a certificate\n").expect("write");
    let junk = file(&dir.path, "junk.pem");
    let missing = file(&dir.path, "missing.pem");
    let https = ("exporter.endpoint", "https://127.0.0.1:4317");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[https, ("exporter.tls_ca_file", &missing)],
            "exporter.tls_ca_file",
        ),
        (
            &[https, ("exporter.tls_ca_file", &junk)],
            "exporter.tls_ca_file",
        ),
        (
            &[https, ("exporter.tls_cert_file", &junk)],
            "exporter.tls_key_file",
        ),
        (
            &[https, ("exporter.tls_key_file", &junk)],
            "exporter.tls_cert_file",
        ),
        (
            &[
                https,
                ("exporter.tls_cert_file", &junk),
                ("exporter.tls_key_file", &junk),
            ],
            "exporter.tls_cert_file",
        ),
        (
            &[
                ("exporter.endpoint", "http://127.0.0.1:4317"),
                ("exporter.tls_ca_file", &junk),
            ],
            "exporter.tls_ca_file",
        ),
    ];
    for (sets, key) in cases {
        let mut b = Config::builder();
        for (k, v) in *sets {
            b = b.set(k, v).expect("parses");
        }
        let e = b.build().expect_err("invalid TLS settings").to_string();
        assert!(e.starts_with(key), "{sets:?}: {e}");
    }
    // The binary refuses to start: exit code 2, the key on stderr.
    let out = Command::new(env!("CARGO_BIN_EXE_loopwatch-agent"))
        .args(["--set", "exporter.endpoint=https://127.0.0.1:4317"])
        .args([
            "--set",
            &format!("exporter.tls_ca_file={missing}"),
            "--print-config",
        ])
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("exporter.tls_ca_file"), "{stderr}");
}
