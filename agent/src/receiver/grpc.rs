//! OTLP/gRPC receiver (tonic): metrics, traces and logs services, gzip accepted.
//!
//! HTTP/2 limits per connection: [`MAX_CONCURRENT_STREAMS`] streams, header lists up to
//! [`MAX_HEADER_LIST_BYTES`], and at most [`MAX_PENDING_RESETS`] streams the client opened
//! and reset before the server accepted them (the rapid-reset defence: beyond it the
//! connection is closed with GOAWAY). Messages pass the decode budget of
//! [`crate::receiver::budget`] before prost decodes them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::conn::{GrpcConnInfo, GrpcIncoming};
use crate::state::AgentState;

/// Concurrent HTTP/2 streams per connection (the HTTP/2 spec's recommended minimum; an OTLP
/// exporter sends one export at a time).
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Largest request header list (16 KiB): OTLP requests carry a few short headers.
pub(crate) const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Streams opened and reset by the client before the server accepted them, per connection,
/// before the connection is closed.
pub(crate) const MAX_PENDING_RESETS: usize = 20;

/// Serves the OTLP/gRPC receiver on `incoming` until `stop` completes.
pub(crate) async fn serve(
    state: Arc<AgentState>,
    incoming: GrpcIncoming,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let routes = GrpcReceiver::new(state.clone()).router();
    tonic::transport::Server::builder()
        .timeout(crate::deadline::BODY_TIMEOUT)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .layer(CountRefusals::new(state.clone()))
        .layer(crate::receiver::grpc_budget::GrpcBudget::new(state))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop)
        .await
}

/// The gRPC service implementations, sharing the agent state.
#[derive(Debug, Clone)]
pub(crate) struct GrpcReceiver {
    state: Arc<AgentState>,
}

impl GrpcReceiver {
    /// A receiver over `state`.
    pub(crate) fn new(state: Arc<AgentState>) -> Self {
        GrpcReceiver { state }
    }

    /// Builds a tonic router with the metrics, trace and logs services.
    pub(crate) fn router(self) -> tonic::service::Routes {
        let limit = self.state.config().receiver.max_body_bytes;
        let metrics = MetricsServiceServer::new(self.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(limit);
        let traces = TraceServiceServer::new(self.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(limit);
        let logs = LogsServiceServer::new(self)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(limit);
        tonic::service::Routes::new(metrics)
            .add_service(traces)
            .add_service(logs)
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        match self.state.ingest_metrics(request.get_ref()) {
            Ok(_) => Ok(Response::new(ExportMetricsServiceResponse::default())),
            Err(e) => Err(Status::resource_exhausted(e.to_string())),
        }
    }
}

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let n = count_spans(request.get_ref());
        self.state
            .telemetry
            .spans_received
            .fetch_add(n, Ordering::Relaxed);
        self.state.export.add_traces(request.into_inner(), n);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let n = count_log_records(request.get_ref());
        self.state
            .telemetry
            .log_records_received
            .fetch_add(n, Ordering::Relaxed);
        self.state.stalls.ingest(request.get_ref());
        self.state.export.add_logs(request.into_inner(), n);
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

/// Number of spans in a trace export.
pub(crate) fn count_spans(req: &ExportTraceServiceRequest) -> u64 {
    req.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len() as u64)
        .sum()
}

/// Number of log records in a logs export.
pub(crate) fn count_log_records(req: &ExportLogsServiceRequest) -> u64 {
    req.resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len() as u64)
        .sum()
}

/// Tower layer for the gRPC server that marks a request in flight on its connection (see
/// [`crate::conn::Activity`]) and counts the requests tonic refuses before a handler runs, in `loopwatch_agent_requests_refused_total{reason}`: a message over
/// `receiver.max_body_bytes` (`OUT_OF_RANGE`, or `RESOURCE_EXHAUSTED` while decompressing)
/// -> `too_large`; an undecodable message (`INTERNAL`, which the handlers never return) ->
/// `malformed`; the request timeout (`CANCELLED` "Timeout expired") -> `timeout`.
#[derive(Debug, Clone)]
pub(crate) struct CountRefusals {
    state: Arc<AgentState>,
}

impl CountRefusals {
    /// A layer counting into `state`'s telemetry.
    pub(crate) fn new(state: Arc<AgentState>) -> Self {
        CountRefusals { state }
    }
}

impl<S> tower::Layer<S> for CountRefusals {
    type Service = CountRefusalsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CountRefusalsService {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service built by [`CountRefusals`].
#[derive(Debug, Clone)]
pub(crate) struct CountRefusalsService<S> {
    inner: S,
    state: Arc<AgentState>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<axum::http::Request<B>> for CountRefusalsService<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        // The connection is busy until the response is produced (its idle deadline waits).
        let busy = req
            .extensions()
            .get::<GrpcConnInfo>()
            .map(|c| c.activity.begin());
        let fut = self.inner.call(req);
        let state = self.state.clone();
        Box::pin(async move {
            let resp = fut.await;
            drop(busy);
            let resp = resp?;
            if let Some(reason) = refusal(resp.headers()) {
                state.telemetry.refuse(reason);
            }
            Ok(resp)
        })
    }
}

/// Classifies a trailers-only gRPC error response produced by tonic itself.
fn refusal(headers: &axum::http::HeaderMap) -> Option<crate::state::RefuseReason> {
    use crate::state::RefuseReason;
    let code = headers.get("grpc-status")?.to_str().ok()?.trim();
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match code {
        "11" => Some(RefuseReason::TooLarge),
        "8" if message.contains("decompressing") => Some(RefuseReason::TooLarge),
        "13" => Some(RefuseReason::Malformed),
        "1" if message.contains("Timeout") => Some(RefuseReason::Timeout),
        _ => None,
    }
}
