//! `loopwatch.heap.allocated` and `loopwatch.heap.growth_rate`, from the heap sampler's
//! [`HeapShared`].

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use super::{Spec, observe};
use crate::heap::HeapShared;
use crate::live::Shared;

/// Registers `loopwatch.heap.allocated` and `loopwatch.heap.growth_rate`.
pub(super) fn register(
    meter: &Meter,
    live: &Arc<Shared>,
    heap: &Arc<HeapShared>,
    attrs: &[KeyValue],
) {
    observe(
        meter,
        Spec::gauge(
            "loopwatch.heap.allocated",
            "Live heap bytes (allocated minus freed), from loopwatch::heap::CountingAllocator or jemalloc stats",
            "By",
        ),
        live,
        Arc::clone(heap),
        attrs,
        |h| h.snapshot().allocated,
    );
    observe(
        meter,
        Spec::gauge(
            "loopwatch.heap.growth_rate",
            "Growth of live heap bytes: least-squares slope over the heap window",
            "By/s",
        ),
        live,
        Arc::clone(heap),
        attrs,
        |h| h.snapshot().growth_rate,
    );
}
