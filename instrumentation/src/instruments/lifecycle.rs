//! `loopwatch.lifecycle.state`, from the [`Lifecycle`].

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use super::{Spec, observe};
use crate::live::Shared;
use crate::shutdown::Lifecycle;

/// Registers `loopwatch.lifecycle.state` (observable gauge, attribute `tokio.runtime.name`).
pub(super) fn register(
    meter: &Meter,
    lifecycle: &Lifecycle,
    shared: &Arc<Shared>,
    attrs: &[KeyValue],
) {
    observe(
        meter,
        Spec::gauge(
            "loopwatch.lifecycle.state",
            "Service lifecycle: 0 running, 1 draining, 2 stopped (final export)",
            "{state}",
        ),
        shared,
        lifecycle.clone(),
        attrs,
        |l| Some(u64::from(l.raw())),
    );
}
