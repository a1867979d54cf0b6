//! The probe's and the runtime's instruments: `tokio.schedule.duration` (recorded by the probe
//! thread through [`ScheduleSink`]), the delay and stall gauges of the last window, the stall
//! count, and the stable runtime metrics, all read from [`Shared`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};

use crate::live::Shared;
use crate::probe::ScheduleSink;

/// Bucket boundaries of `tokio.schedule.duration`, seconds.
const SCHEDULE_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// (name, description, reader) of an f64 gauge.
type F64Gauge = (&'static str, &'static str, fn(&Shared) -> f64);
/// (name, description, unit, reader) of a u64 gauge.
type U64Gauge = (&'static str, &'static str, &'static str, fn(&Shared) -> u64);

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

fn gauge(
    meter: &Meter,
    shared: &Arc<Shared>,
    attrs: &[KeyValue],
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    read: fn(&Shared) -> f64,
) {
    let shared = Arc::clone(shared);
    let attrs = attrs.to_vec();
    let _ = meter
        .f64_observable_gauge(name)
        .with_description(description)
        .with_unit(unit)
        .with_callback(move |obs| {
            if shared.live() {
                obs.observe(read(&shared), &attrs);
            }
        })
        .build();
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
    {
        let shared = Arc::clone(shared);
        let attrs = attrs.to_vec();
        let _ = meter
            .u64_observable_counter("tokio.eventloop.stalls")
            .with_description("Stalls: probes outstanding longer than the stall threshold")
            .with_unit("{stall}")
            .with_callback(move |obs| {
                if shared.live() {
                    obs.observe(shared.stalls.load(Ordering::Relaxed), &attrs);
                }
            })
            .build();
    }

    let delay: [F64Gauge; 6] = [
        (
            "tokio.eventloop.delay.min",
            "Minimum scheduling delay in the last window",
            |s| secs_us(s.window().min_us),
        ),
        (
            "tokio.eventloop.delay.max",
            "Maximum scheduling delay in the last window",
            |s| secs_us(s.window().max_us),
        ),
        (
            "tokio.eventloop.delay.mean",
            "Mean scheduling delay in the last window",
            |s| s.window().mean_us / 1e6,
        ),
        (
            "tokio.eventloop.delay.p50",
            "Median scheduling delay in the last window",
            |s| secs_us(s.window().p50_us),
        ),
        (
            "tokio.eventloop.delay.p90",
            "90th percentile scheduling delay in the last window",
            |s| secs_us(s.window().p90_us),
        ),
        (
            "tokio.eventloop.delay.p99",
            "99th percentile scheduling delay in the last window",
            |s| secs_us(s.window().p99_us),
        ),
    ];
    for (name, description, read) in delay {
        gauge(meter, shared, attrs, name, description, "s", read);
    }
    gauge(
        meter,
        shared,
        attrs,
        "tokio.eventloop.stall.duration",
        "Age of the outstanding probe (stall in progress), 0 when none",
        "s",
        |s| s.current_stall().as_secs_f64(),
    );
    gauge(
        meter,
        shared,
        attrs,
        "tokio.eventloop.utilization",
        "Busy ratio of the runtime's workers over the last window, averaged across workers",
        "1",
        |s| s.runtime().utilization,
    );

    let u64_gauges: [U64Gauge; 3] = [
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
    for (name, description, unit, read) in u64_gauges {
        let shared = Arc::clone(shared);
        let attrs = attrs.to_vec();
        let _ = meter
            .u64_observable_gauge(name)
            .with_description(description)
            .with_unit(unit)
            .with_callback(move |obs| {
                if shared.live() {
                    obs.observe(read(&shared), &attrs);
                }
            })
            .build();
    }
    {
        let shared = Arc::clone(shared);
        let attrs = attrs.to_vec();
        let _ = meter
            .u64_observable_counter("tokio.worker.park.count")
            .with_description("Worker parks since start, summed over workers")
            .with_unit("{park}")
            .with_callback(move |obs| {
                if shared.live() {
                    obs.observe(shared.runtime().park_count, &attrs);
                }
            })
            .build();
    }
    {
        let shared = Arc::clone(shared);
        let attrs = attrs.to_vec();
        let _ = meter
            .f64_observable_counter("tokio.worker.busy.duration")
            .with_description("Busy time since start, summed over workers")
            .with_unit("s")
            .with_callback(move |obs| {
                if shared.live() {
                    obs.observe(shared.runtime().busy.as_secs_f64(), &attrs);
                }
            })
            .build();
    }
    ScheduleRecorder {
        histogram: schedule,
        attrs: attrs.to_vec(),
    }
}
