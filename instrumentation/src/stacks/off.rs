//! Stall stacks where they are not supported (not Linux x86_64): nothing is captured.

#[path = "episode.rs"]
mod episode;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use episode::{Kind, decide, next_due};

/// Where the log records would go (unused here).
#[derive(Debug, Clone)]
pub(crate) struct LogTarget {
    pub(crate) endpoint: String,
    pub(crate) protocol: crate::config::Protocol,
    pub(crate) timeout: Duration,
    pub(crate) resource: Vec<opentelemetry::KeyValue>,
    pub(crate) runtime_name: String,
    /// Gzip request bodies, as for metrics.
    pub(crate) gzip: bool,
    /// TLS for an `https://` endpoint, as for metrics.
    pub(crate) tls: Option<Arc<crate::export::TlsMaterial>>,
}

/// Why stall stacks could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartStacksError {
    /// Not Linux x86_64.
    #[error("stall stacks need Linux on x86_64")]
    Unsupported,
}

use crate::threads::Threads;

/// Never started.
pub(crate) struct Stacks;

impl Stacks {
    pub(crate) fn start(
        _sig: Option<i32>,
        _threads: Option<Arc<Threads>>,
        _handle: tokio::runtime::Handle,
        _target: LogTarget,
    ) -> Result<Arc<Self>, StartStacksError> {
        Err(StartStacksError::Unsupported)
    }
    pub(crate) fn threads(&self) -> Arc<Threads> {
        Arc::new(Threads)
    }
    pub(crate) fn capture(&self, _: Kind, _: Duration, _: u8, _: Option<usize>) {}
    pub(crate) fn warm(&self, _budget: Duration) {}
}
