//! The one registry of loopwatch's instruments. Each submodule registers the instruments of
//! one subsystem and reads what that subsystem produces (atomics and snapshots); the
//! subsystems know nothing of OpenTelemetry. [`register`] is called once, by `start`.
//!
//! Instrument names and units are those of the crate docs' metric tables.

use std::sync::Arc;

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::heap::HeapShared;
use crate::live::Shared;
use crate::shutdown::Lifecycle;
use crate::workers::WorkerShared;

mod heap;
mod lifecycle;
mod process;
mod runtime;
mod tasks;
mod workers;

pub(crate) use crate::observable::{Observed, Spec};
pub(crate) use runtime::ScheduleRecorder;

/// What the instruments read.
pub(crate) struct Sources<'a> {
    pub(crate) shared: &'a Arc<Shared>,
    pub(crate) workers: &'a Arc<WorkerShared>,
    pub(crate) heap: &'a Arc<HeapShared>,
    pub(crate) lifecycle: &'a Lifecycle,
    #[cfg_attr(
        not(tokio_unstable),
        allow(dead_code, reason = "read by the unstable metrics")
    )]
    pub(crate) handle: &'a tokio::runtime::Handle,
    /// Attributes of every point (`tokio.runtime.name`).
    pub(crate) attrs: &'a [KeyValue],
}

/// Registers every loopwatch instrument on `meter`; returns the one the probe thread records.
pub(crate) fn register(meter: &Meter, s: &Sources<'_>) -> ScheduleRecorder {
    let schedule = runtime::register(meter, s.shared, s.attrs);
    workers::register(meter, s.shared, s.workers, s.attrs);
    #[cfg(tokio_unstable)]
    workers::register_unstable(meter, s.shared, s.handle, s.attrs);
    heap::register(meter, s.shared, s.heap, s.attrs);
    process::register(meter, s.shared);
    {
        let shared = Arc::clone(s.shared);
        tasks::register(meter, s.attrs, Arc::new(move || shared.live()));
    }
    lifecycle::register(meter, s.lifecycle, s.shared, s.attrs);
    schedule
}

/// Registers `spec`, reporting `read(&source)` with `attrs` at each collection while loopwatch
/// is live (`None`: no point this time).
pub(super) fn observe<S, T>(
    meter: &Meter,
    spec: Spec,
    live: &Arc<Shared>,
    source: S,
    attrs: &[KeyValue],
    read: impl Fn(&S) -> Option<T> + Send + Sync + 'static,
) where
    S: Send + Sync + 'static,
    T: Observed,
{
    let (live, attrs) = (Arc::clone(live), attrs.to_vec());
    T::register(meter, spec, move |obs| {
        if live.live()
            && let Some(v) = read(&source)
        {
            obs.observe(v, &attrs);
        }
    });
}

/// loopwatch's meter on `provider` (scope `loopwatch`, crate version).
pub(crate) fn loopwatch_meter(provider: &SdkMeterProvider) -> Meter {
    let scope = InstrumentationScope::builder("loopwatch")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    provider.meter_with_scope(scope)
}
