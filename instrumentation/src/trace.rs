//! tracing → tracing-opentelemetry → OTLP, on loopwatch's own export runtime (like metrics), so
//! request spans carrying the route layer's `loopwatch.waited_ms` / `loopwatch.poll_ms` reach
//! the sidecar even while the watched runtime is blocked.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::registry::LookupSpan;

use crate::config::{self, LoopwatchBuilder};
use crate::error::StartError;

/// A running tracing → OTLP pipeline: add [`OtlpTracing::layer`] to your subscriber; call
/// [`OtlpTracing::shutdown`] (or drop it) outside async code at exit to flush the last spans.
///
/// Service name, endpoint and protocol resolve like metrics (builder > `OTEL_*` environment >
/// default); for OTLP/HTTP the path `/v1/metrics` of a resolved endpoint becomes `/v1/traces`.
///
/// ```no_run
/// use tracing_subscriber::layer::SubscriberExt;
/// use tracing_subscriber::util::SubscriberInitExt;
///
/// let tracing = loopwatch::trace::OtlpTracing::start(
///     loopwatch::Loopwatch::builder().service_name("example-service"),
/// )?;
/// tracing_subscriber::registry().with(tracing.layer()).init();
/// // ... serve; RouteLayer spans now carry loopwatch.waited_ms / loopwatch.poll_ms ...
/// tracing.shutdown();
/// # Ok::<(), loopwatch::StartError>(())
/// ```
#[derive(Debug)]
pub struct OtlpTracing {
    provider: Option<SdkTracerProvider>,
    runtime: Option<tokio::runtime::Runtime>,
    tracer: Tracer,
}

impl OtlpTracing {
    /// Builds the span exporter on a 1-worker `loopwatch-trace-export` runtime (its
    /// connections, on either transport, with the TLS and gzip settings of metrics) and a batch
    /// span processor (its own thread). Works inside or outside a tokio runtime.
    ///
    /// # Errors
    /// Bad builder values or environment variables, or an exporter that cannot be built.
    pub fn start(builder: LoopwatchBuilder) -> Result<OtlpTracing, StartError> {
        let s = config::resolve(builder, &config::process_env)?;
        let tls = crate::export::tls_for(&s.endpoint, &s.tls)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("loopwatch-trace-export")
            .enable_all()
            .build()
            .map_err(|e| StartError::Exporter(format!("loopwatch-trace-export: {e}")))?;
        let built = {
            let _enter = rt.enter();
            build_exporter(&s, tls.as_ref())
        };
        let exporter = match built {
            Ok(inner) => OnRuntime {
                inner,
                handle: rt.handle().clone(),
            },
            Err(e) => {
                rt.shutdown_background();
                return Err(e);
            }
        };
        let runtime = Some(rt);
        let resource = Resource::builder_empty()
            .with_attributes(s.resource.iter().cloned())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("loopwatch");
        Ok(OtlpTracing {
            provider: Some(provider),
            runtime,
            tracer,
        })
    }

    /// A `tracing-subscriber` layer exporting spans through this pipeline.
    pub fn layer<S>(&self) -> OpenTelemetryLayer<S, Tracer>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.tracer.clone())
    }

    /// Exports pending spans now (blocking, bounded by the export timeout).
    pub fn force_flush(&self) {
        if let Some(p) = &self.provider
            && let Err(e) = p.force_flush()
        {
            tracing::debug!(error = %e, "loopwatch: span force_flush failed");
        }
    }

    /// Flushes and stops the pipeline. Call outside async code (it blocks).
    pub fn shutdown(mut self) {
        self.shutdown_inner();
    }

    fn shutdown_inner(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            tracing::debug!(error = %e, "loopwatch: tracer provider shutdown failed");
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The OTLP span exporter for `s`; built inside the trace runtime. Unlike metrics, spans keep
/// the exporter's retries: the batch processor's thread can wait for them.
fn build_exporter(
    s: &config::Settings,
    tls: Option<&crate::export::TlsMaterial>,
) -> Result<SpanExporter, StartError> {
    crate::export::otlp_exporter!(
        SpanExporter,
        &crate::export::Transport {
            protocol: s.protocol,
            endpoint: crate::export::signal_endpoint(&s.endpoint, s.protocol, "traces"),
            timeout: s.export_timeout,
            gzip: s.gzip,
            tls,
            retry: true,
        }
    )
}

/// The span exporter, polled inside the trace runtime: the HTTP client spawns its connection
/// tasks and registers its sockets and timers there, whichever thread the batch processor
/// exports from.
#[derive(Debug)]
struct OnRuntime {
    inner: SpanExporter,
    handle: tokio::runtime::Handle,
}

impl opentelemetry_sdk::trace::SpanExporter for OnRuntime {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        let handle = &self.handle;
        let mut export = Box::pin(self.inner.export(batch));
        std::future::poll_fn(move |cx| {
            let _enter = handle.enter();
            export.as_mut().poll(cx)
        })
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let _enter = self.handle.enter();
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        let _enter = self.handle.enter();
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl Drop for OtlpTracing {
    fn drop(&mut self) {
        self.shutdown_inner();
    }
}
