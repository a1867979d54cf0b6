//! Turns a stall report into its two outputs: a `tracing` warning carrying the stack, and one
//! OTLP log record exported at once over loopwatch's own logs exporter (built on first use, on
//! the `loopwatch-stacks` thread, on a current-thread runtime of its own, with the transport
//! settings of the metrics exporter).

use std::time::{Duration, SystemTime};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::{InstrumentationScope, Key, KeyValue};
#[cfg(any(feature = "grpc", feature = "http-proto"))]
use opentelemetry_otlp::LogExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, SdkLogger, SdkLoggerProvider};

use super::{Kind, StallReport, symbols};
use crate::config::Protocol;
use crate::error::StartError;
#[cfg(not(any(feature = "grpc", feature = "http-proto")))]
use crate::export::NoExporter as LogExporter;
use crate::export::{self, TlsMaterial};

/// Where and how the log records go: loopwatch's resolved OTLP settings.
#[derive(Debug, Clone)]
#[cfg_attr(
    not(any(feature = "grpc", feature = "http-proto")),
    allow(dead_code, reason = "transport settings without a transport")
)]
pub(crate) struct LogTarget {
    pub(crate) endpoint: String,
    pub(crate) protocol: Protocol,
    pub(crate) timeout: Duration,
    pub(crate) resource: Vec<KeyValue>,
    pub(crate) runtime_name: String,
    /// Gzip request bodies, as for metrics.
    pub(crate) gzip: bool,
    /// TLS for an `https://` endpoint: the metrics exporter's, loaded once at start.
    pub(crate) tls: Option<std::sync::Arc<TlsMaterial>>,
}

/// The logs exporter, built lazily.
pub(crate) struct LogSink {
    target: LogTarget,
    built: Option<Built>,
}

struct Built {
    exporter: LogExporter,
    runtime: tokio::runtime::Runtime,
    logger: SdkLogger,
    scope: InstrumentationScope,
    _provider: SdkLoggerProvider,
}

impl LogSink {
    pub(crate) fn new(target: LogTarget) -> Self {
        LogSink {
            target,
            built: None,
        }
    }

    fn build(&self) -> Result<Built, String> {
        let t = &self.target;
        let (runtime, mut exporter) =
            export::on_export_runtime(|| build_exporter(t)).map_err(|e| e.to_string())?;
        let resource = Resource::builder_empty()
            .with_attributes(t.resource.iter().cloned())
            .build();
        exporter.set_resource(&resource);
        let provider = SdkLoggerProvider::builder().with_resource(resource).build();
        let scope = InstrumentationScope::builder("loopwatch")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let logger = provider.logger_with_scope(scope.clone());
        Ok(Built {
            exporter,
            runtime,
            logger,
            scope,
            _provider: provider,
        })
    }

    /// Builds the exporter if not done yet; false when it cannot be built.
    pub(crate) fn prepare(&mut self) -> bool {
        if self.built.is_none() {
            match self.build() {
                Ok(b) => self.built = Some(b),
                Err(e) => {
                    tracing::debug!(error = %e, "loopwatch logs exporter could not be built");
                    return false;
                }
            }
        }
        true
    }

    /// Logs and exports `r`; failures are logged at debug level (the warning stays).
    pub(crate) fn emit(&mut self, r: &StallReport) {
        warn(r, &self.target.runtime_name);
        if !self.prepare() {
            return;
        }
        let Some(b) = &self.built else { return };
        let mut rec = b.logger.create_log_record();
        rec.set_event_name(r.kind.event_name());
        rec.set_severity_number(Severity::Warn);
        rec.set_severity_text("WARN");
        rec.set_timestamp(r.at);
        rec.set_observed_timestamp(SystemTime::now());
        rec.set_body(AnyValue::from(summary(r)));
        for (k, v) in attributes(r, &self.target.runtime_name) {
            rec.add_attribute(k, v);
        }
        let batch = [(&rec, &b.scope)];
        let export = b.exporter.export(LogBatch::new(&batch));
        let done = b.runtime.block_on(export);
        if let Err(e) = done {
            tracing::debug!(error = %e, "loopwatch stall log export failed");
        }
    }
}

/// The logs exporter, with the transport settings of the metrics exporter.
fn build_exporter(t: &LogTarget) -> Result<LogExporter, StartError> {
    export::otlp_exporter!(
        LogExporter,
        &export::Transport {
            protocol: t.protocol,
            endpoint: export::signal_endpoint(&t.endpoint, t.protocol, "logs"),
            timeout: t.timeout,
            gzip: t.gzip,
            tls: t.tls.as_deref(),
            retry: false,
        }
    )
}

fn summary(r: &StallReport) -> String {
    let what = match r.kind {
        Kind::Stall => "tokio runtime stalled",
        Kind::Stuck => "tokio worker stuck",
    };
    // The first frame of the application's code: the libc, std and runtime frames above it are
    // where it waits, not what blocks.
    let library = |n: &str| {
        [
            "std::", "core::", "alloc::", "__", "tokio::", "<std::", "<core::", "??",
        ]
        .iter()
        .any(|p| n.starts_with(p))
    };
    let top = r
        .frames
        .iter()
        .map(|f| f.function.as_str())
        .find(|n| !library(n))
        .or_else(|| r.frames.first().map(|f| f.function.as_str()))
        .unwrap_or("??");
    format!(
        "{what} for {:?}: thread {} ({}) in {top}",
        r.duration, r.thread_id, r.thread_name
    )
}

/// The log record's attributes.
pub(crate) fn attributes(r: &StallReport, runtime: &str) -> Vec<(Key, AnyValue)> {
    let mut a: Vec<(Key, AnyValue)> = vec![
        (
            Key::new("code.stacktrace"),
            AnyValue::from(symbols::render(&r.frames, r.truncated)),
        ),
        (
            Key::new("thread.id"),
            AnyValue::from(i64::from(r.thread_id)),
        ),
        (
            Key::new("thread.name"),
            AnyValue::from(r.thread_name.clone()),
        ),
        (
            Key::new("loopwatch.stall.duration"),
            AnyValue::from(r.duration.as_secs_f64()),
        ),
        (
            Key::new("loopwatch.stall.capture"),
            AnyValue::from(i64::from(r.nth)),
        ),
        (
            Key::new("loopwatch.stall.interruption"),
            AnyValue::from(r.interruption.as_secs_f64()),
        ),
        (
            Key::new("tokio.runtime.name"),
            AnyValue::from(runtime.to_owned()),
        ),
    ];
    if let Some(w) = r.worker {
        a.push((
            Key::new("tokio.worker.index"),
            AnyValue::from(i64::try_from(w).unwrap_or(i64::MAX)),
        ));
    }
    a
}

fn warn(r: &StallReport, runtime: &str) {
    let stack = symbols::render(&r.frames, r.truncated);
    let worker = r
        .worker
        .map_or(-1, |w| i64::try_from(w).unwrap_or(i64::MAX));
    tracing::warn!(
        event.name = r.kind.event_name(),
        runtime,
        thread.id = r.thread_id,
        thread.name = %r.thread_name,
        tokio.worker.index = worker,
        stall_ms = r.duration.as_millis() as u64,
        capture = r.nth,
        "{}; stack:\n{stack}",
        summary(r)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_logs_go_to_the_logs_path() {
        assert_eq!(
            export::signal_endpoint("http://a:4318/v1/metrics", Protocol::HttpProtobuf, "logs"),
            "http://a:4318/v1/logs"
        );
        assert_eq!(
            export::signal_endpoint("http://a:4317/v1/metrics", Protocol::Grpc, "logs"),
            "http://a:4317/v1/metrics"
        );
    }
}
