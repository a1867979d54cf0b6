//! The crate's exporter honours `OTEL_EXPORTER_OTLP_HEADERS` (and the `_METRICS_` form, which
//! wins) on both transports: the real `example-service` exports to capturing receivers on
//! loopback (a tonic gRPC server and an axum HTTP server) that record the request headers.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use loopwatch_e2e::{Proc, bin, wait_for};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};

type Seen = Arc<Mutex<Vec<HeaderMap>>>;

#[derive(Clone)]
struct Grpc(Seen);

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        self.0.lock().expect("lock").push(headers);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Serves a capturing receiver of `kind` (`grpc` or `http`) on 127.0.0.1.
fn receiver(kind: &str, seen: Seen) -> (tokio::runtime::Runtime, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    if kind == "grpc" {
        rt.spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(MetricsServiceServer::new(Grpc(seen)))
                .serve_with_incoming(incoming)
                .await;
        });
    } else {
        let app = axum::Router::new().route(
            "/v1/metrics",
            axum::routing::post(move |headers: HeaderMap| {
                let seen = seen.clone();
                async move {
                    seen.lock().expect("lock").push(headers);
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }
    (rt, addr)
}

fn exports_carry_headers(kind: &str, env: &[(&str, &str)], want: &[(&str, &str)]) {
    let seen: Seen = Arc::default();
    let (_rt, addr) = receiver(kind, seen.clone());
    let mut cmd = Command::new(bin("example-service"));
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("OTEL_SERVICE_NAME", format!("headers-{kind}"))
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
        .env_remove("OTEL_EXPORTER_OTLP_HEADERS")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_HEADERS")
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
    let headers = wait_for(
        &format!("{kind} export"),
        Duration::from_secs(20),
        Duration::from_millis(50),
        || seen.lock().expect("lock").first().cloned(),
    );
    proc.kill();
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
