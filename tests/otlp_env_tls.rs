//! The crate's exporter over TLS and mTLS on both transports, configured by the standard
//! `OTEL_EXPORTER_OTLP_{,METRICS_}{CERTIFICATE,CLIENT_CERTIFICATE,CLIENT_KEY}` variables: the
//! real `example-service` exports to the Python OTLP/TLS receiver (`loopwatch_e2e::tls`) with a
//! CA and certificates made here. A missing peer fails the test, it is never skipped.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use loopwatch_e2e::tls::{Receiver, make_certs};
use loopwatch_e2e::{Proc, TempDir, bin, http_get, wait_for};

/// Every variable that can change which certificates the service trusts or presents.
const TLS_VARS: [&str; 8] = [
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// `example-service` named `service`, exporting over `protocol` to `https://127.0.0.1:PORT`
/// with `env`; its failed exports are logged (debug level).
fn service(service: &str, protocol: &str, port: u16, env: &[(&str, String)]) -> Proc {
    let mut cmd = Command::new(bin("example-service"));
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("OTEL_SERVICE_NAME", service)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("https://127.0.0.1:{port}"),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
        .env("LOOPWATCH_LOG", "info,loopwatch=debug")
        .env_remove("OTEL_EXPORTER_OTLP_COMPRESSION")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION");
    for var in TLS_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    Proc::spawn(service, cmd, "example-service listening on ")
}

/// Waits (bounded) for a failed export in `proc`'s log; nothing of `name` reached `receiver`.
fn refused(proc: &Proc, receiver: &Receiver, name: &str) {
    wait_for(
        &format!("{name}: a failed export"),
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            proc.log_text()
                .contains("loopwatch export failed")
                .then_some(())
        },
    );
    assert!(receiver.received(name).is_empty(), "{name}");
}

/// Waits (bounded) until `receiver` has an export of `name` over `transport`; its headers.
fn accepted(receiver: &Receiver, name: &str, transport: &str) -> serde_json::Value {
    let got = wait_for(
        &format!("{name}: an export at the TLS receiver"),
        Duration::from_secs(20),
        Duration::from_millis(50),
        || receiver.received(name).into_iter().next(),
    );
    assert_eq!(got.0, transport, "{name}");
    got.1
}

/// The service's base URL, from its ready line.
fn url(p: &Proc) -> String {
    p.ready_line
        .trim_start_matches("example-service listening on ")
        .trim()
        .to_string()
}

fn file(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// Over gRPC and HTTP: the system roots do not know the test CA; the system roots with
/// `SSL_CERT_FILE` (the trust store the system-roots loader reads) do; and the
/// `OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE` CA file does, winning over a generic
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` (a missing file, which would stop the service if read),
/// with headers and gzip on the same connection.
#[test]
fn certificate_variables_over_grpc_and_http() {
    let dir = TempDir::new("otlp-env-tls");
    make_certs(&dir.path);
    let receiver = Receiver::start(&dir.path, false);
    let ca = file(&dir.path, "ca.pem");
    for (protocol, port, transport) in [
        ("grpc", receiver.grpc, "grpc"),
        ("http/protobuf", receiver.http, "http"),
    ] {
        let name = format!("roots-{transport}");
        let mut p = service(&name, protocol, port, &[]);
        refused(&p, &receiver, &name);
        p.kill();

        let name = format!("ssl-cert-file-{transport}");
        let mut p = service(&name, protocol, port, &[("SSL_CERT_FILE", ca.clone())]);
        accepted(&receiver, &name, transport);
        p.kill();

        let name = format!("ca-file-{transport}");
        let env = [
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                file(&dir.path, "missing.pem"),
            ),
            ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", ca.clone()),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()),
        ];
        let mut p = service(&name, protocol, port, &env);
        let headers = accepted(&receiver, &name, transport);
        assert_eq!(headers["x-tenant"], "acme", "{headers}");
        if transport == "http" {
            assert_eq!(headers["content-encoding"], "gzip", "{headers}");
        }
        p.kill();
    }
}

/// A receiver requiring client certificates refuses the service without
/// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` / `_CLIENT_KEY` and accepts it with them.
#[test]
fn client_certificate_variables_do_mtls_over_grpc_and_http() {
    let dir = TempDir::new("otlp-env-mtls");
    make_certs(&dir.path);
    let receiver = Receiver::start(&dir.path, true);
    let ca = ("OTEL_EXPORTER_OTLP_CERTIFICATE", file(&dir.path, "ca.pem"));
    for (protocol, port, transport) in [
        ("grpc", receiver.grpc, "grpc"),
        ("http/protobuf", receiver.http, "http"),
    ] {
        let name = format!("anon-{transport}");
        let mut p = service(&name, protocol, port, std::slice::from_ref(&ca));
        refused(&p, &receiver, &name);
        p.kill();

        let name = format!("mtls-{transport}");
        let env = [
            ca.clone(),
            (
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                file(&dir.path, "client.pem"),
            ),
            (
                "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
                file(&dir.path, "client.key"),
            ),
        ];
        let mut p = service(&name, protocol, port, &env);
        let headers = accepted(&receiver, &name, transport);
        assert_eq!(headers["x-tenant"], "acme", "{headers}");
        p.kill();
    }
}

/// `OtlpTracing` (the service's `--otlp-traces`) exports request spans over TLS on both
/// transports, with the CA file, the headers and gzip of the metrics exporter.
#[test]
fn spans_reach_a_tls_receiver_over_grpc_and_http() {
    let dir = TempDir::new("otlp-env-tls-traces");
    make_certs(&dir.path);
    let receiver = Receiver::start(&dir.path, false);
    for (protocol, port, transport) in [
        ("grpc", receiver.grpc, "grpc"),
        ("http/protobuf", receiver.http, "http"),
    ] {
        let name = format!("traces-{transport}");
        let env = [
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", file(&dir.path, "ca.pem")),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()),
            ("EXAMPLE_OTLP_TRACES", "true".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ];
        let mut p = service(&name, protocol, port, &env);
        let (code, _) = http_get(&format!("{}/", url(&p)));
        assert_eq!(code, 200, "{name}");
        let got = wait_for(
            &format!("{name}: spans at the TLS receiver"),
            Duration::from_secs(20),
            Duration::from_millis(50),
            || receiver.received_traces(&name).into_iter().next(),
        );
        assert_eq!(got.0, transport, "{name}");
        assert_eq!(got.1["x-tenant"], "acme", "{}", got.1);
        if transport == "http" {
            assert_eq!(got.1["content-encoding"], "gzip", "{}", got.1);
        }
        p.kill();
    }
}

/// A stall's log record (its stacks) reaches a TLS receiver on both transports, on the TLS
/// material loaded once at start for metrics and logs alike.
#[test]
fn a_stall_log_record_reaches_a_tls_receiver_over_grpc_and_http() {
    let dir = TempDir::new("otlp-env-tls-logs");
    make_certs(&dir.path);
    let receiver = Receiver::start(&dir.path, false);
    for (protocol, port, transport) in [
        ("grpc", receiver.grpc, "grpc"),
        ("http/protobuf", receiver.http, "http"),
    ] {
        let name = format!("logs-{transport}");
        let env = [("OTEL_EXPORTER_OTLP_CERTIFICATE", file(&dir.path, "ca.pem"))];
        let mut p = service(&name, protocol, port, &env);
        accepted(&receiver, &name, transport);
        let (code, _) = http_get(&format!("{}/block?ms=800", url(&p)));
        assert_eq!(code, 200, "{name}");
        let got = wait_for(
            &format!("{name}: a stall log record at the TLS receiver"),
            Duration::from_secs(20),
            Duration::from_millis(50),
            || receiver.received_logs(&name).into_iter().next(),
        );
        assert_eq!(got.0, transport, "{name}");
        assert_eq!(got.1, serde_json::json!(["loopwatch.stall"]), "{name}");
        p.kill();
    }
}

/// An unusable certificate file stops the service at start with the variable named.
#[test]
fn unusable_certificate_files_stop_the_service_naming_the_variable() {
    let dir = TempDir::new("otlp-env-tls-bad");
    std::fs::write(dir.path.join("junk.pem"), "not a certificate\n").expect("write");
    let cases = [
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            file(&dir.path, "missing.pem"),
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
            file(&dir.path, "junk.pem"),
        ),
    ];
    for protocol in ["grpc", "http/protobuf"] {
        for (var, value) in &cases {
            let mut cmd = Command::new(bin("example-service"));
            cmd.args(["--listen", "127.0.0.1:0"])
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:9")
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol);
            for v in TLS_VARS {
                cmd.env_remove(v);
            }
            let out = cmd.env(var, value).output().expect("run example-service");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{protocol} {var}: {stderr}");
            assert!(
                stderr.contains(&format!("{var}: {value:?}")),
                "{protocol} {var}: {stderr}"
            );
        }
    }
}
