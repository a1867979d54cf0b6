//! The stuck-worker instruments (`tokio.worker.stuck.*`, from [`WorkerShared`]) and, with
//! `--cfg tokio_unstable`, the unstable runtime metrics read from `Handle::metrics()`.

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use super::{Observed as _, Spec, observe};
use crate::live::Shared;
#[cfg(tokio_unstable)]
use crate::observable::Kind;
use crate::workers::WorkerShared;

/// Registers `tokio.worker.stuck.duration` and `tokio.worker.stuck.episodes`.
pub(super) fn register(
    meter: &Meter,
    live: &Arc<Shared>,
    workers: &Arc<WorkerShared>,
    attrs: &[KeyValue],
) {
    observe(
        meter,
        Spec::counter(
            "tokio.worker.stuck.episodes",
            "Times a worker passed the stuck threshold (one long poll, or awake without progress)",
            "{episode}",
        ),
        live,
        Arc::clone(workers),
        attrs,
        |w| Some(w.episodes()),
    );
    let live = Arc::clone(live);
    let workers = Arc::clone(workers);
    let attrs = attrs.to_vec();
    let spec = Spec::gauge(
        "tokio.worker.stuck.duration",
        "How long each worker has been stuck (in one poll, or awake without progress); 0 when not stuck",
        "s",
    );
    f64::register(meter, spec, move |obs| {
        if !live.live() {
            return;
        }
        workers.each(|i, stuck, loc| {
            let mut a = attrs.clone();
            a.push(KeyValue::new("tokio.worker.index", i as i64));
            if let Some(l) = loc {
                a.push(KeyValue::new("code.file.path", l.file()));
                a.push(KeyValue::new("code.line.number", i64::from(l.line())));
                a.push(KeyValue::new("code.column.number", i64::from(l.column())));
            }
            obs.observe(stuck.as_secs_f64(), &a);
        });
    });
}

/// Registers the unstable runtime metrics (`--cfg tokio_unstable`), read from
/// `Handle::metrics()` at collection time.
#[cfg(tokio_unstable)]
pub(super) fn register_unstable(
    meter: &Meter,
    live: &Arc<Shared>,
    handle: &tokio::runtime::Handle,
    attrs: &[KeyValue],
) {
    use tokio::runtime::RuntimeMetrics;
    type U64Read = fn(&RuntimeMetrics) -> u64;
    /// `per_worker` summed over the runtime's workers.
    fn all_workers(m: &RuntimeMetrics, per_worker: impl Fn(usize) -> u64) -> u64 {
        (0..m.num_workers())
            .map(per_worker)
            .fold(0, u64::saturating_add)
    }
    let counters: [(&'static str, &'static str, &'static str, U64Read); 4] = [
        (
            "tokio.worker.poll.count",
            "Task polls since start, all workers",
            "{poll}",
            |m| all_workers(m, |w| m.worker_poll_count(w)),
        ),
        (
            "tokio.worker.steal.count",
            "Tasks stolen from other workers since start, all workers",
            "{task}",
            |m| all_workers(m, |w| m.worker_steal_count(w)),
        ),
        (
            "tokio.worker.overflow.count",
            "Times a worker's local queue overflowed into the global queue, all workers",
            "{overflow}",
            |m| all_workers(m, |w| m.worker_overflow_count(w)),
        ),
        (
            "tokio.runtime.forced_yield.count",
            "Tasks forced to yield after exhausting their coop budget, since start",
            "{yield}",
            |m| m.budget_forced_yield_count(),
        ),
    ];
    let gauges: [(&'static str, &'static str, &'static str, U64Read); 3] = [
        (
            "tokio.runtime.blocking.threads",
            "Threads of the blocking pool",
            "{thread}",
            |m| m.num_blocking_threads() as u64,
        ),
        (
            "tokio.runtime.blocking.idle_threads",
            "Idle threads of the blocking pool",
            "{thread}",
            |m| m.num_idle_blocking_threads() as u64,
        ),
        (
            "tokio.runtime.blocking.queue.depth",
            "Tasks waiting for a blocking-pool thread",
            "{task}",
            |m| m.blocking_queue_depth() as u64,
        ),
    ];
    let both = counters
        .map(|c| (Kind::Counter, c))
        .into_iter()
        .chain(gauges.map(|g| (Kind::Gauge, g)));
    for (kind, (name, description, unit, read)) in both {
        let spec = Spec {
            kind,
            name,
            description,
            unit,
        };
        observe(meter, spec, live, handle.clone(), attrs, move |h| {
            Some(read(&h.metrics()))
        });
    }
    {
        let (live, handle, attrs) = (Arc::clone(live), handle.clone(), attrs.to_vec());
        let spec = Spec::gauge(
            "tokio.worker.local_queue.depth",
            "Tasks in each worker's local run queue",
            "{task}",
        );
        u64::register(meter, spec, move |obs| {
            if !live.live() {
                return;
            }
            let m = handle.metrics();
            for w in 0..m.num_workers() {
                let mut a = attrs.clone();
                a.push(KeyValue::new("tokio.worker.index", w as i64));
                obs.observe(m.worker_local_queue_depth(w) as u64, &a);
            }
        });
    }
    observe(
        meter,
        Spec::gauge(
            "tokio.worker.poll.time.mean",
            "Mean poll duration (tokio's moving average), averaged across workers",
            "s",
        ),
        live,
        handle.clone(),
        attrs,
        |h| {
            let m = h.metrics();
            let total: f64 = (0..m.num_workers())
                .map(|w| m.worker_mean_poll_time(w).as_secs_f64())
                .sum();
            Some(total / m.num_workers().max(1) as f64)
        },
    );
    let (live, handle, attrs) = (Arc::clone(live), handle.clone(), attrs.to_vec());
    let spec = Spec::counter(
        "tokio.worker.poll.time.bucket",
        "Polls per poll-duration bucket since start, all workers (tokio's poll-time histogram; needs install_poll_hooks or enable_metrics_poll_time_histogram); attribute tokio.poll.time.le is the bucket's upper bound in seconds",
        "{poll}",
    );
    u64::register(meter, spec, move |obs| {
        if !live.live() {
            return;
        }
        let m = handle.metrics();
        if !m.poll_time_histogram_enabled() {
            return;
        }
        let buckets = m.poll_time_histogram_num_buckets();
        for b in 0..buckets {
            let le = if b + 1 == buckets {
                "+Inf".to_owned()
            } else {
                format!(
                    "{}",
                    m.poll_time_histogram_bucket_range(b).end.as_secs_f64()
                )
            };
            let count = all_workers(&m, |w| m.poll_time_histogram_bucket_count(w, b));
            let mut a = attrs.clone();
            a.push(KeyValue::new("tokio.poll.time.le", le));
            obs.observe(count, &a);
        }
    });
}
