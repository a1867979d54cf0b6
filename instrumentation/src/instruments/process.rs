//! `process.memory.usage` and `process.cpu.utilization`, from the [`ProcessReader`].

use std::sync::{Arc, Mutex};

use opentelemetry::metrics::Meter;

use super::{Spec, observe};
use crate::live::Shared;
use crate::process::ProcessReader;

/// Registers `process.memory.usage` and `process.cpu.utilization` (skipped when the process
/// cannot be read, e.g. no /proc).
pub(super) fn register(meter: &Meter, live: &Arc<Shared>) {
    let Some(reader) = ProcessReader::new() else {
        tracing::debug!("loopwatch: process metrics unavailable on this system");
        return;
    };
    let reader = Arc::new(Mutex::new((reader, None::<(u64, f64)>)));
    // One refresh per collection: the memory callback reads, the CPU callback reuses it.
    {
        let (live, reader) = (Arc::clone(live), Arc::clone(&reader));
        let _ = meter
            .i64_observable_up_down_counter("process.memory.usage")
            .with_description("Resident set size of the process")
            .with_unit("By")
            .with_callback(move |obs| {
                if !live.live() {
                    return;
                }
                let mut g = reader.lock().unwrap_or_else(|e| e.into_inner());
                let v = g.0.read();
                g.1 = v;
                if let Some((rss, _)) = v {
                    obs.observe(i64::try_from(rss).unwrap_or(i64::MAX), &[]);
                }
            })
            .build();
    }
    observe(
        meter,
        Spec::gauge(
            "process.cpu.utilization",
            "CPU time of the process since the previous collection divided by elapsed time and by the CPUs available to it",
            "1",
        ),
        live,
        reader,
        &[],
        |r| {
            let mut g = r.lock().unwrap_or_else(|e| e.into_inner());
            let v = match g.1.take() {
                Some(v) => Some(v),
                None => g.0.read(),
            };
            v.map(|(_, cpu)| cpu)
        },
    );
}
