//! `tokio.task.family.*`, from every [`TaskFamily`]'s `tokio-metrics` monitor.

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use super::{Observed as _, Spec};
use crate::tasks::TaskFamily;

/// Registers `tokio.task.family.*` observable counters (all families, read at export time).
pub(super) fn register(
    meter: &Meter,
    attrs: &[KeyValue],
    live: Arc<dyn Fn() -> bool + Send + Sync>,
) {
    type Read = fn(&tokio_metrics::TaskMetrics) -> f64;
    let counters: [(&'static str, &'static str, &'static str, Read); 6] = [
        (
            "tokio.task.family.instrumented",
            "Tasks instrumented in the family since start",
            "{task}",
            |m| m.instrumented_count as f64,
        ),
        (
            "tokio.task.family.polls",
            "Polls of the family's tasks since start",
            "{poll}",
            |m| m.total_poll_count as f64,
        ),
        (
            "tokio.task.family.poll.duration",
            "Time spent polling the family's tasks since start",
            "s",
            |m| m.total_poll_duration.as_secs_f64(),
        ),
        (
            "tokio.task.family.slow_polls",
            "Polls of the family's tasks at or over tokio-metrics' slow-poll threshold (50 µs)",
            "{poll}",
            |m| m.total_slow_poll_count as f64,
        ),
        (
            "tokio.task.family.scheduled.duration",
            "Time the family's tasks waited between being woken and being polled, since start",
            "s",
            |m| m.total_scheduled_duration.as_secs_f64(),
        ),
        (
            "tokio.task.family.scheduled",
            "Times the family's tasks were woken and then polled, since start",
            "{wake}",
            |m| m.total_scheduled_count as f64,
        ),
    ];
    for (name, desc, unit, read) in counters {
        let attrs = attrs.to_vec();
        let live = Arc::clone(&live);
        f64::register(meter, Spec::counter(name, desc, unit), move |obs| {
            if !live() {
                return;
            }
            for f in TaskFamily::all() {
                let mut a = attrs.clone();
                a.push(KeyValue::new("tokio.task.family", f.name().to_owned()));
                obs.observe(read(&f.stats()), &a);
            }
        });
    }
}
