//! The crate's exporter honours `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_EXPORTER_OTLP_COMPRESSION`
//! (and their `_METRICS_` forms, which win) on both transports: the real `example-service`
//! exports to capturing receivers on loopback (a tonic gRPC server accepting gzip and an axum
//! HTTP server) that record the request headers and bodies. TLS is in `otlp_env_tls.rs`.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use std::io::Read;

use axum::body::Bytes;
use axum::http::HeaderMap;
use loopwatch_e2e::capture::{self, Seen};
use loopwatch_e2e::{Proc, bin, wait_for};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;

/// The first export of an `example-service` with `env` to a capturing receiver of `kind`.
fn first_export(kind: &str, env: &[(&str, &str)]) -> (HeaderMap, Bytes) {
    let seen: Seen = Arc::default();
    let (_rt, addr) = capture::receiver(kind == "grpc", seen.clone());
    let mut cmd = Command::new(bin("example-service"));
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("OTEL_SERVICE_NAME", format!("headers-{kind}"))
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
        .env_remove("OTEL_EXPORTER_OTLP_HEADERS")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_HEADERS")
        .env_remove("OTEL_EXPORTER_OTLP_COMPRESSION")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION")
        .envs(env.iter().copied());
    if kind == "grpc" {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
    } else {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    }
    let mut proc = Proc::spawn(
        &format!("headers-{kind}"),
        cmd,
        "example-service listening on ",
    );
    let first = wait_for(
        &format!("{kind} export"),
        Duration::from_secs(20),
        Duration::from_millis(50),
        || seen.lock().expect("lock").first().cloned(),
    );
    proc.kill();
    first
}

fn exports_carry_headers(kind: &str, env: &[(&str, &str)], want: &[(&str, &str)]) {
    let (headers, _) = first_export(kind, env);
    for (k, v) in want {
        assert_eq!(
            headers.get(*k).and_then(|h| h.to_str().ok()),
            Some(*v),
            "{kind}: header {k} in {headers:?}"
        );
    }
}

#[test]
fn otel_exporter_otlp_headers_reach_the_receiver_over_grpc_and_http() {
    let env = [(
        "OTEL_EXPORTER_OTLP_HEADERS",
        "x-api-key=secret123,x-tenant=acme",
    )];
    let want = [("x-api-key", "secret123"), ("x-tenant", "acme")];
    exports_carry_headers("grpc", &env, &want);
    exports_carry_headers("http", &env, &want);
    let env = [
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=generic"),
        ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-tenant=metrics"),
    ];
    exports_carry_headers("grpc", &env, &[("x-tenant", "metrics")]);
    exports_carry_headers("http", &env, &[("x-tenant", "metrics")]);
}

/// The service names in an OTLP/HTTP protobuf body.
fn services(body: &[u8]) -> Vec<String> {
    let req = ExportMetricsServiceRequest::decode(body).expect("an OTLP metrics request");
    req.resource_metrics
        .iter()
        .filter_map(|rm| rm.resource.as_ref())
        .flat_map(|r| r.attributes.iter())
        .filter(|kv| kv.key == "service.name")
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => {
                Some(s.clone())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn otel_exporter_otlp_compression_gzips_grpc_and_http_and_the_metrics_form_wins() {
    let gzip = [("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")];
    let (headers, _) = first_export("grpc", &gzip);
    assert_eq!(
        headers.get("grpc-encoding").and_then(|h| h.to_str().ok()),
        Some("gzip"),
        "{headers:?}"
    );
    let (headers, body) = first_export("http", &gzip);
    assert_eq!(
        headers
            .get("content-encoding")
            .and_then(|h| h.to_str().ok()),
        Some("gzip"),
        "{headers:?}"
    );
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut plain)
        .expect("the body is gzip");
    assert_eq!(services(&plain), ["headers-http"]);

    // `none` in the _METRICS_ form beats the generic `gzip`: plain bodies.
    let none = [
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none"),
    ];
    let (headers, _) = first_export("grpc", &none);
    assert_eq!(headers.get("grpc-encoding"), None, "{headers:?}");
    let (headers, body) = first_export("http", &none);
    assert_eq!(headers.get("content-encoding"), None, "{headers:?}");
    assert_eq!(services(&body), ["headers-http"]);
}

#[test]
fn bad_compression_or_timeout_stops_the_service_naming_the_variable() {
    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli"),
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "5s"),
    ] {
        let out = Command::new(bin("example-service"))
            .args(["--listen", "127.0.0.1:0"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
            .env(var, value)
            .output()
            .expect("run example-service");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value}: {stderr}");
        assert!(
            stderr.contains(&format!("{var}: \"{value}\"")),
            "{var}={value}: {stderr}"
        );
    }
}
