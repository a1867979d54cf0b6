//! The OTLP pipeline (exported from loopwatch's own `loopwatch-flush` thread, never the watched runtime),
//! instrument registration, and the `loopwatch-flush` thread that runs force-flushes.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

#[cfg(feature = "http-proto")]
use hyper_util::client::legacy::connect::HttpConnector;
#[cfg(feature = "http-proto")]
use opentelemetry_http::hyper::HyperClient;
#[cfg(any(feature = "grpc", feature = "http-proto"))]
pub(crate) use opentelemetry_otlp::MetricExporter;
#[cfg(feature = "http-proto")]
use opentelemetry_otlp::WithHttpConfig;
#[cfg(feature = "grpc")]
use opentelemetry_otlp::WithTonicConfig;
#[cfg(any(feature = "grpc", feature = "http-proto"))]
use opentelemetry_otlp::{Compression, RetryPolicy, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
};

use crate::config::{Protocol, Settings, TlsFiles};
use crate::error::StartError;
use crate::live::Shared;
#[cfg(any(feature = "grpc", feature = "http-proto"))]
pub(crate) use crate::tls::TlsMaterial;
#[cfg(not(any(feature = "grpc", feature = "http-proto")))]
/// No transport, no TLS.
pub(crate) type TlsMaterial = std::convert::Infallible;

/// The exporter type of a build without any transport: uninhabited (the start fails with
/// [`without_transport`] before one would be built).
#[cfg(not(any(feature = "grpc", feature = "http-proto")))]
#[derive(Debug)]
pub(crate) enum NoExporter {}

#[cfg(not(any(feature = "grpc", feature = "http-proto")))]
pub(crate) use NoExporter as MetricExporter;

#[cfg(not(any(feature = "grpc", feature = "http-proto")))]
impl PushMetricExporter for NoExporter {
    async fn export(&self, _: &ResourceMetrics) -> OTelSdkResult {
        match *self {}
    }
    fn force_flush(&self) -> OTelSdkResult {
        match *self {}
    }
    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        match *self {}
    }
    fn temporality(&self) -> Temporality {
        match *self {}
    }
}

#[cfg(not(any(feature = "grpc", feature = "http-proto")))]
impl opentelemetry_sdk::logs::LogExporter for NoExporter {
    async fn export(&self, _: opentelemetry_sdk::logs::LogBatch<'_>) -> OTelSdkResult {
        match *self {}
    }
}

/// Longest time between two exports of loopwatch's own pipeline while the watched runtime is
/// quiet (or the export interval, if longer). The `loopwatch-agent` marks a service stale after
/// 5 s without data (`health.stale_after`): 2.5 s leaves room for one lost export.
pub(crate) const IDLE_EXPORT_INTERVAL: Duration = Duration::from_millis(2500);
/// A provider built by loopwatch, read and exported by the `loopwatch-flush` thread itself: it
/// collects through a manual reader and runs the export to completion on its own thread (for
/// gRPC inside a current-thread runtime that owns the tonic channel and is driven only then).
/// One thread wakes per export, instead of a reader thread, an export runtime worker and the
/// flush thread handing the work to each other.
pub(crate) struct OwnedPipeline {
    pub(crate) provider: SdkMeterProvider,
    reader: Arc<ManualReader>,
    exporter: MetricExporter,
    /// The runtime of the exporter's connections; `None` once shut down.
    runtime: Option<tokio::runtime::Runtime>,
    /// Reused between collections.
    metrics: ResourceMetrics,
    /// Longest time without an export: `max(export_interval, IDLE_EXPORT_INTERVAL)`.
    pub(crate) heartbeat: Duration,
}

impl OwnedPipeline {
    /// Collects once and exports the result on this thread (bounded by the export timeout).
    pub(crate) fn export(&mut self) -> OTelSdkResult {
        self.reader.collect(&mut self.metrics)?;
        if self.metrics.scope_metrics().next().is_none() {
            return Ok(());
        }
        let export = self.exporter.export(&self.metrics);
        match &self.runtime {
            Some(rt) => rt.block_on(export),
            None => Err(OTelSdkError::AlreadyShutdown),
        }
    }

    /// The final export, then stops the provider, the exporter and the channel's runtime.
    fn shutdown(mut self, timeout: Duration) {
        if let Err(e) = self.export() {
            tracing::debug!(error = %e, "loopwatch final export failed");
        }
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "loopwatch meter provider shutdown failed");
        }
        let _ = self.exporter.shutdown_with_timeout(timeout);
        // The channel's tasks end with the exporter, before its runtime stops.
        #[allow(
            clippy::drop_non_drop,
            reason = "the uninhabited exporter of a build without transports"
        )]
        drop(self.exporter);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(timeout);
        }
    }
}

/// The provider's reader: a [`ManualReader`] that the flush thread also holds.
#[derive(Debug)]
pub(crate) struct SharedReader(pub(crate) Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// Builds the OTLP exporter + manual reader + provider. The exporter's connections (a tonic
/// channel, or a hyper client pool for HTTP) live in loopwatch's own current-thread runtime,
/// driven by the `loopwatch-flush` thread during exports, so exports progress while the watched
/// runtime is completely blocked.
pub(crate) fn build_pipeline(
    s: &Settings,
    tls: Option<&TlsMaterial>,
) -> Result<OwnedPipeline, StartError> {
    let (rt, exporter) = on_export_runtime(|| build_exporter(s, tls))?;
    let reader = Arc::new(
        ManualReader::builder()
            .with_temporality(exporter.temporality())
            .build(),
    );
    let resource = Resource::builder_empty()
        .with_attributes(s.resource.iter().cloned())
        .build();
    let provider = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(SharedReader(Arc::clone(&reader)))
        .build();
    Ok(OwnedPipeline {
        provider,
        reader,
        exporter,
        runtime: Some(rt),
        metrics: ResourceMetrics::default(),
        heartbeat: s.export_interval.max(IDLE_EXPORT_INTERVAL),
    })
}

/// A new current-thread export runtime and `build`'s result, built inside it: the tonic channel
/// and the hyper client spawn their connection tasks there.
pub(crate) fn on_export_runtime<T>(
    build: impl FnOnce() -> Result<T, StartError>,
) -> Result<(tokio::runtime::Runtime, T), StartError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::Exporter(format!("loopwatch export runtime: {e}")))?;
    let built = {
        let _enter = rt.enter();
        build()
    };
    match built {
        Ok(v) => Ok((rt, v)),
        Err(e) => {
            // Never drop a runtime in an async context: it would panic.
            rt.shutdown_background();
            Err(e)
        }
    }
}

/// How an OTLP exporter of any signal reaches its endpoint.
#[cfg_attr(
    not(any(feature = "grpc", feature = "http-proto")),
    allow(dead_code, reason = "transport settings without a transport")
)]
pub(crate) struct Transport<'a> {
    pub(crate) protocol: Protocol,
    /// The signal's endpoint (for OTLP/HTTP, its own path: see [`signal_endpoint`]).
    pub(crate) endpoint: String,
    pub(crate) timeout: Duration,
    pub(crate) gzip: bool,
    pub(crate) tls: Option<&'a TlsMaterial>,
    /// The exporter's own retries; off where an export must not outlast its timeout (metrics
    /// during a stall, stall logs).
    pub(crate) retry: bool,
}

/// Builds an OTLP exporter of any signal (`MetricExporter`, `LogExporter`, `SpanExporter`) on a
/// [`Transport`]; a protocol whose transport feature is not compiled in is an error naming the
/// feature. Used inside a function returning `Result<_, StartError>`.
macro_rules! otlp_exporter {
    ($exporter:ident, $transport:expr) => {{
        let t: &$crate::export::Transport<'_> = $transport;
        match t.protocol {
            #[cfg(feature = "grpc")]
            $crate::config::Protocol::Grpc => {
                $crate::export::grpc_transport($exporter::builder().with_tonic(), t)
                    .build()
                    .map_err(|e| $crate::error::StartError::Exporter(e.to_string()))
            }
            #[cfg(feature = "http-proto")]
            $crate::config::Protocol::HttpProtobuf => {
                $crate::export::http_transport($exporter::builder().with_http(), t)?
                    .build()
                    .map_err(|e| $crate::error::StartError::Exporter(e.to_string()))
            }
            #[allow(unreachable_patterns)]
            p => Err($crate::export::without_transport(p)),
        }
    }};
}
pub(crate) use otlp_exporter;

/// The endpoint of `signal` (`"logs"`, `"traces"`) for the metrics endpoint: OTLP/HTTP paths
/// name the signal, gRPC serves them all on one address.
pub(crate) fn signal_endpoint(metrics: &str, protocol: Protocol, signal: &str) -> String {
    match (protocol, metrics.strip_suffix("/v1/metrics")) {
        (Protocol::HttpProtobuf, Some(base)) => format!("{base}/v1/{signal}"),
        _ => metrics.to_owned(),
    }
}

/// The OTLP metric exporter for `s`: endpoint, timeout, gzip and TLS as resolved by loopwatch
/// (headers come from the environment through opentelemetry-otlp).
fn build_exporter(s: &Settings, tls: Option<&TlsMaterial>) -> Result<MetricExporter, StartError> {
    otlp_exporter!(
        MetricExporter,
        &Transport {
            protocol: s.protocol,
            endpoint: s.endpoint.clone(),
            timeout: s.export_timeout,
            gzip: s.gzip,
            tls,
            retry: false,
        }
    )
}

/// The TLS material for `endpoint`: loaded for `https://`, `None` otherwise; once per start,
/// shared by the metrics and logs exporters. The rustls config is built here on either
/// transport, so a CA that is no CA or a key that does not fit its certificate fails the start
/// (tonic would find out only when it connects).
pub(crate) fn tls_for(endpoint: &str, files: &TlsFiles) -> Result<Option<TlsMaterial>, StartError> {
    if !endpoint.starts_with("https://") {
        return Ok(None);
    }
    #[cfg(any(feature = "grpc", feature = "http-proto"))]
    {
        TlsMaterial::load(files).map(Some)
    }
    #[cfg(not(any(feature = "grpc", feature = "http-proto")))]
    {
        let _ = files;
        Ok(None)
    }
}

/// The error of a protocol whose transport feature is not compiled in.
pub(crate) fn without_transport(protocol: Protocol) -> StartError {
    let (name, feature) = match protocol {
        Protocol::Grpc => ("grpc", "grpc"),
        Protocol::HttpProtobuf => ("http/protobuf", "http-proto"),
    };
    StartError::Exporter(format!(
        "OTLP protocol {name} needs loopwatch's `{feature}` cargo feature (or give loopwatch your own provider with meter_provider)"
    ))
}

/// A gRPC exporter builder on `t`: endpoint, timeout, retries, TLS and gzip.
#[cfg(feature = "grpc")]
pub(crate) fn grpc_transport<B: WithTonicConfig + WithExportConfig>(
    mut b: B,
    t: &Transport<'_>,
) -> B {
    b = b.with_endpoint(t.endpoint.clone()).with_timeout(t.timeout);
    if !t.retry {
        b = b.with_retry_policy(RetryPolicy::disabled());
    }
    if let Some(tls) = t.tls {
        b = b.with_tls_config(tls.grpc());
    }
    if t.gzip {
        b = b.with_compression(Compression::Gzip);
    }
    b
}

/// An HTTP exporter builder on `t`: endpoint, timeout, retries, gzip and the HTTP client: hyper on loopwatch's
/// export runtime (the builder must run inside it), with rustls (ring) for `https://` on
/// loopwatch's own TLS config, which needs no process-wide crypto provider. The client bounds
/// the whole request, body included, by `timeout`.
#[cfg(feature = "http-proto")]
pub(crate) fn http_transport<B: WithHttpConfig + WithExportConfig>(
    mut b: B,
    t: &Transport<'_>,
) -> Result<B, StartError> {
    let timeout = t.timeout;
    b = b
        .with_endpoint(t.endpoint.clone())
        .with_timeout(timeout)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
    if !t.retry {
        b = b.with_retry_policy(RetryPolicy::disabled());
    }
    let tls_config = match t.tls {
        Some(material) => material.http(),
        // An `http://` endpoint never uses TLS: trust nothing.
        None => crate::tls::config_builder()?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(timeout));
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    b = b.with_http_client(HyperClient::new(connector, timeout, None));
    if t.gzip {
        b = b.with_compression(Compression::Gzip);
    }
    Ok(b)
}

/// Which provider the flush thread flushes, and whether it owns it.
pub(crate) enum FlushTarget {
    Owned(Box<OwnedPipeline>),
    Borrowed(SdkMeterProvider),
}

/// Body of the `loopwatch-flush` thread: exports on request (a stall, a completed window of an
/// active runtime, a lifecycle change) and, for loopwatch's own pipeline, when no export
/// happened for the heartbeat interval (an idle runtime). Ends when `shared.stop` is set (after
/// a request wakes it) or every trigger is dropped; then does the final export and tears the
/// pipeline down.
pub(crate) fn run_flush(
    rx: Receiver<()>,
    shared: &Shared,
    mut target: FlushTarget,
    export_timeout: Duration,
) {
    let heartbeat = match &target {
        FlushTarget::Owned(p) => Some(p.heartbeat),
        FlushTarget::Borrowed(_) => None,
    };
    let mut last = Instant::now();
    loop {
        let go = match heartbeat {
            Some(h) => !matches!(
                rx.recv_timeout((last + h).saturating_duration_since(Instant::now())),
                Err(RecvTimeoutError::Disconnected)
            ),
            None => rx.recv().is_ok(),
        };
        if !go || shared.stop.load(std::sync::atomic::Ordering::Acquire) {
            break;
        }
        let done = match &mut target {
            FlushTarget::Owned(p) => p.export(),
            FlushTarget::Borrowed(p) => p.force_flush(),
        };
        if let Err(e) = done {
            tracing::debug!(error = %e, "loopwatch export failed");
        }
        last = Instant::now();
    }
    match target {
        // Final export with the final values, then teardown.
        FlushTarget::Owned(p) => p.shutdown(export_timeout),
        FlushTarget::Borrowed(p) => {
            if let Err(e) = p.force_flush() {
                tracing::debug!(error = %e, "loopwatch final force_flush failed");
            }
        }
    }
    shared.silence();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_protocol_without_its_transport_names_the_feature() {
        let e = without_transport(Protocol::HttpProtobuf).to_string();
        assert!(
            e.contains("http/protobuf") && e.contains("`http-proto`"),
            "{e}"
        );
        let e = without_transport(Protocol::Grpc).to_string();
        assert!(e.contains("`grpc` cargo feature"), "{e}");
    }
}
