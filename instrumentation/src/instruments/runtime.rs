//! The probe's and the runtime's instruments: `tokio.schedule.duration` (recorded by the probe
//! thread through [`ScheduleSink`]), the delay and stall gauges of the last window, the stall
//! count, and the stable runtime metrics, all read from [`Shared`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};

use super::{Observed, Spec, observe};
use crate::live::Shared;
use crate::probe::ScheduleSink;

/// Bucket boundaries of `tokio.schedule.duration`, seconds.
const SCHEDULE_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// (name, description, unit, reader) of a gauge read from [`Shared`].
type Gauge<T> = (&'static str, &'static str, &'static str, fn(&Shared) -> T);

/// Registers a table of gauges read from [`Shared`].
fn gauges<T: Observed>(
    meter: &Meter,
    shared: &Arc<Shared>,
    attrs: &[KeyValue],
    table: impl IntoIterator<Item = Gauge<T>>,
) {
    for (name, description, unit, read) in table {
        let spec = Spec::gauge(name, description, unit);
        observe(meter, spec, shared, Arc::clone(shared), attrs, move |s| {
            Some(read(s))
        });
    }
}

/// `tokio.schedule.duration`, recorded by the probe thread for each delay it measures.
pub(crate) struct ScheduleRecorder {
    histogram: Histogram<f64>,
    attrs: Vec<KeyValue>,
}

impl ScheduleSink for ScheduleRecorder {
    fn record(&self, seconds: f64) {
        self.histogram.record(seconds, &self.attrs);
    }
}

fn secs_us(v: u64) -> f64 {
    v as f64 / 1e6
}

/// Registers the probe's and the runtime's instruments.
pub(super) fn register(
    meter: &Meter,
    shared: &Arc<Shared>,
    attrs: &[KeyValue],
) -> ScheduleRecorder {
    let schedule = meter
        .f64_histogram("tokio.schedule.duration")
        .with_description(
            "Scheduling delay of probe tasks (spawn to first poll), coordinated-omission corrected",
        )
        .with_unit("s")
        .with_boundaries(SCHEDULE_BUCKETS.to_vec())
        .build();
    observe(
        meter,
        Spec::counter(
            "tokio.eventloop.stalls",
            "Stalls: probes outstanding longer than the stall threshold",
            "{stall}",
        ),
        shared,
        Arc::clone(shared),
        attrs,
        |s| Some(s.stalls.load(Ordering::Relaxed)),
    );

    let f64_gauges: [Gauge<f64>; 8] = [
        (
            "tokio.eventloop.delay.min",
            "Minimum scheduling delay in the last window",
            "s",
            |s| secs_us(s.window().min_us),
        ),
        (
            "tokio.eventloop.delay.max",
            "Maximum scheduling delay in the last window",
            "s",
            |s| secs_us(s.window().max_us),
        ),
        (
            "tokio.eventloop.delay.mean",
            "Mean scheduling delay in the last window",
            "s",
            |s| s.window().mean_us / 1e6,
        ),
        (
            "tokio.eventloop.delay.p50",
            "Median scheduling delay in the last window",
            "s",
            |s| secs_us(s.window().p50_us),
        ),
        (
            "tokio.eventloop.delay.p90",
            "90th percentile scheduling delay in the last window",
            "s",
            |s| secs_us(s.window().p90_us),
        ),
        (
            "tokio.eventloop.delay.p99",
            "99th percentile scheduling delay in the last window",
            "s",
            |s| secs_us(s.window().p99_us),
        ),
        (
            "tokio.eventloop.stall.duration",
            "Age of the outstanding probe (stall in progress), 0 when none",
            "s",
            |s| s.current_stall().as_secs_f64(),
        ),
        (
            "tokio.eventloop.utilization",
            "Busy ratio of the runtime's workers over the last window, averaged across workers",
            "1",
            |s| s.runtime().utilization,
        ),
    ];
    gauges(meter, shared, attrs, f64_gauges);

    let u64_gauges: [Gauge<u64>; 3] = [
        (
            "tokio.runtime.workers",
            "Worker threads of the runtime",
            "{thread}",
            |s| s.runtime().workers,
        ),
        (
            "tokio.runtime.tasks.alive",
            "Tasks alive in the runtime",
            "{task}",
            |s| s.runtime().tasks_alive,
        ),
        (
            "tokio.runtime.global_queue.depth",
            "Tasks waiting in the global queue",
            "{task}",
            |s| s.runtime().global_queue_depth,
        ),
    ];
    gauges(meter, shared, attrs, u64_gauges);
    observe(
        meter,
        Spec::counter(
            "tokio.worker.park.count",
            "Worker parks since start, summed over workers",
            "{park}",
        ),
        shared,
        Arc::clone(shared),
        attrs,
        |s| Some(s.runtime().park_count),
    );
    observe(
        meter,
        Spec::counter(
            "tokio.worker.busy.duration",
            "Busy time since start, summed over workers",
            "s",
        ),
        shared,
        Arc::clone(shared),
        attrs,
        |s| Some(s.runtime().busy.as_secs_f64()),
    );
    ScheduleRecorder {
        histogram: schedule,
        attrs: attrs.to_vec(),
    }
}
