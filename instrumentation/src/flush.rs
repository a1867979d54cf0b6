//! How any thread asks the `loopwatch-flush` thread for an export: a leaf, so that the probe,
//! the stuck-worker check and the shutdown can ask without depending on the pipeline.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

/// Asks the `loopwatch-flush` thread for an immediate export; never blocks, coalesces requests
/// (at most one pending).
#[derive(Debug, Clone)]
pub(crate) struct FlushTrigger {
    tx: SyncSender<()>,
}

impl FlushTrigger {
    pub(crate) fn request(&self) {
        match self.tx.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }
}

/// A trigger and the receiving end the flush thread waits on (at most one request pending).
pub(crate) fn flush_channel() -> (FlushTrigger, Receiver<()>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    (FlushTrigger { tx }, rx)
}
