//! A capturing OTLP metrics receiver on loopback, over gRPC (tonic, accepting gzip) or HTTP
//! (axum, `POST /v1/metrics`): it records each export's headers and, over HTTP, its body as
//! sent. For tests of what an exporter puts on the wire (headers, compression).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::HeaderMap;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};

/// Each export received: its headers and, over HTTP, its body as sent (empty over gRPC).
pub type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

#[derive(Clone)]
struct Grpc(Seen);

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        self.0.lock().expect("lock").push((headers, Bytes::new()));
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Serves a capturing receiver (gRPC when `grpc`, else HTTP) on 127.0.0.1, on a runtime of its
/// own; keep the runtime alive as long as the receiver is needed.
pub fn receiver(grpc: bool, seen: Seen) -> (tokio::runtime::Runtime, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    if grpc {
        rt.spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(
                    MetricsServiceServer::new(Grpc(seen))
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
                )
                .serve_with_incoming(incoming)
                .await;
        });
    } else {
        let app = axum::Router::new().route(
            "/v1/metrics",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let seen = seen.clone();
                async move {
                    seen.lock().expect("lock").push((headers, body));
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
