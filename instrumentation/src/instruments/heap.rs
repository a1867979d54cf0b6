//! `loopwatch.heap.allocated` and `loopwatch.heap.growth_rate`, from the heap sampler's
//! [`HeapShared`].

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use crate::heap::HeapShared;
use crate::live::Shared;

/// Registers `loopwatch.heap.allocated` and `loopwatch.heap.growth_rate`.
pub(super) fn register(
    meter: &Meter,
    live: &Arc<Shared>,
    heap: &Arc<HeapShared>,
    attrs: &[KeyValue],
) {
    {
        let (live, heap, attrs) = (Arc::clone(live), Arc::clone(heap), attrs.to_vec());
        let _ = meter
            .u64_observable_gauge("loopwatch.heap.allocated")
            .with_description("Live heap bytes (allocated minus freed), from loopwatch::heap::CountingAllocator or jemalloc stats")
            .with_unit("By")
            .with_callback(move |obs| {
                if let Some(b) = heap.snapshot().allocated.filter(|_| live.live()) {
                    obs.observe(b, &attrs);
                }
            })
            .build();
    }
    let (live, heap, attrs) = (Arc::clone(live), Arc::clone(heap), attrs.to_vec());
    let _ = meter
        .f64_observable_gauge("loopwatch.heap.growth_rate")
        .with_description("Growth of live heap bytes: least-squares slope over the heap window")
        .with_unit("By/s")
        .with_callback(move |obs| {
            if let Some(r) = heap.snapshot().growth_rate.filter(|_| live.live()) {
                obs.observe(r, &attrs);
            }
        })
        .build();
}
