//! Runtime metrics from `tokio_metrics::RuntimeMonitor` (stable set), sampled once per window.

use std::time::Duration;

use tokio_metrics::{RuntimeIntervals, RuntimeMonitor};

/// Runtime metrics of the watched runtime, as of the last completed window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct RuntimeSnapshot {
    /// Worker threads (`tokio.runtime.workers`).
    pub workers: u64,
    /// Tasks alive (`tokio.runtime.tasks.alive`).
    pub tasks_alive: u64,
    /// Tasks waiting in the global (injection) queue (`tokio.runtime.global_queue.depth`).
    pub global_queue_depth: u64,
    /// Worker parks since start, summed over workers (`tokio.worker.park.count`).
    pub park_count: u64,
    /// Busy time since start, summed over workers (`tokio.worker.busy.duration`).
    pub busy: Duration,
    /// Busy ratio over the last window, averaged across workers, 0..=1
    /// (`tokio.eventloop.utilization`). Tokio accounts busy time when a worker parks, so a
    /// worker stuck in one long poll shows its busy time only after the poll returns.
    pub utilization: f64,
}

/// Keeps the `intervals()` iterator alive between reads (a fresh one reads a busy ratio of ~0).
pub(crate) struct RuntimeSampler {
    intervals: RuntimeIntervals,
    park_count: u64,
    busy: Duration,
}

impl RuntimeSampler {
    pub(crate) fn new(handle: &tokio::runtime::Handle) -> Self {
        RuntimeSampler {
            intervals: RuntimeMonitor::new(handle).intervals(),
            park_count: 0,
            busy: Duration::ZERO,
        }
    }

    /// Metrics since the previous call.
    pub(crate) fn sample(&mut self) -> RuntimeSnapshot {
        let Some(m) = self.intervals.next() else {
            return RuntimeSnapshot::default();
        };
        self.park_count = self.park_count.saturating_add(m.total_park_count);
        self.busy = self.busy.saturating_add(m.total_busy_duration);
        let workers = m.workers_count.max(1) as f64;
        let elapsed = m.elapsed.as_secs_f64();
        let utilization = if elapsed > 0.0 {
            (m.total_busy_duration.as_secs_f64() / elapsed / workers).clamp(0.0, 1.0)
        } else {
            0.0
        };
        RuntimeSnapshot {
            workers: m.workers_count as u64,
            tasks_alive: m.live_tasks_count as u64,
            global_queue_depth: m.global_queue_depth as u64,
            park_count: self.park_count,
            busy: self.busy,
            utilization,
        }
    }
}
