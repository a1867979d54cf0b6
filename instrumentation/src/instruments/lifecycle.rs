//! `loopwatch.lifecycle.state`, from the [`Lifecycle`].

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use crate::live::Shared;
use crate::shutdown::Lifecycle;

/// Registers `loopwatch.lifecycle.state` (observable gauge, attribute `tokio.runtime.name`).
pub(super) fn register(
    meter: &Meter,
    lifecycle: &Lifecycle,
    shared: &Arc<Shared>,
    attrs: &[KeyValue],
) {
    let lifecycle = lifecycle.clone();
    let shared = Arc::clone(shared);
    let attrs = attrs.to_vec();
    let _ = meter
        .u64_observable_gauge("loopwatch.lifecycle.state")
        .with_description("Service lifecycle: 0 running, 1 draining, 2 stopped (final export)")
        .with_unit("{state}")
        .with_callback(move |obs| {
            if shared.live() {
                obs.observe(u64::from(lifecycle.raw()), &attrs);
            }
        })
        .build();
}
