//! Errors returned by [`crate::LoopwatchBuilder::start`].

/// Why [`crate::LoopwatchBuilder::start`] (or `start_with_handle`) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// `start()` was called outside a tokio runtime; use `start_with_handle` instead.
    #[error(
        "no tokio runtime is running on this thread; call start() inside the runtime or use start_with_handle(handle)"
    )]
    NoRuntime,
    /// A builder value is out of range.
    #[error("{key}: {reason}")]
    InvalidConfig {
        /// The builder method / setting name, e.g. `probe_interval`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An environment variable holds a value loopwatch cannot use.
    #[error("{var}: {value:?} {reason}")]
    InvalidEnv {
        /// The environment variable name, e.g. `OTEL_METRIC_EXPORT_INTERVAL`.
        var: &'static str,
        /// The value found.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The OTLP endpoint is not an `http://` or `https://` URL with a host.
    #[error(
        "invalid OTLP endpoint {value:?} (from {source_key}): expected http://host[:port][/path] or https://..."
    )]
    InvalidEndpoint {
        /// The endpoint value.
        value: String,
        /// Where it came from: `endpoint` (builder) or the environment variable name.
        source_key: &'static str,
    },
    /// The OTLP exporter or loopwatch's own export runtime could not be built.
    #[error("could not build the OTLP metrics exporter: {0}")]
    Exporter(String),
    /// An OS thread (`loopwatch-probe`, `loopwatch-flush`) could not be spawned.
    #[error("could not spawn the {name} thread: {source}")]
    Thread {
        /// Thread name.
        name: &'static str,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}
