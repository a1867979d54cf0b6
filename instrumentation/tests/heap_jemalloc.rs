//! Feature `jemalloc`: with jemalloc as the global allocator (and no `CountingAllocator`),
//! `loopwatch.heap.allocated` comes from jemalloc's `stats.allocated` and follows a leak.
//! Run with `cargo test -p loopwatch --features jemalloc --test heap_jemalloc`.
#![cfg(feature = "jemalloc")]

use std::time::{Duration, Instant};

use loopwatch::heap::HeapSource;
use opentelemetry_sdk::metrics::SdkMeterProvider;

#[global_allocator]
static ALLOC: loopwatch::heap::Jemalloc = loopwatch::heap::Jemalloc;

#[test]
fn jemalloc_stats_feed_the_heap_metrics() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let guard = loopwatch::Loopwatch::builder()
        .meter_provider(SdkMeterProvider::builder().build())
        .heap_window(Duration::from_millis(600))
        .start_with_handle(rt.handle().clone())
        .expect("start");
    let wait_for = |pred: &dyn Fn(&loopwatch::heap::HeapSnapshot) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let h = guard.heap();
            if pred(&h) {
                return h;
            }
            assert!(Instant::now() < deadline, "heap never matched: {h:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let before = wait_for(&|h| h.allocated.is_some());
    assert_eq!(before.source, Some(HeapSource::Jemalloc), "{before:?}");
    let base = before.allocated.unwrap_or(0);

    const LEAK: usize = 16 << 20;
    let kept = vec![3u8; LEAK];
    let after = wait_for(&|h| h.allocated.is_some_and(|b| b >= base + LEAK as u64));
    eprintln!("before {before:?}; after {after:?}");
    drop(kept);
    wait_for(&|h| h.allocated.is_some_and(|b| b < base + LEAK as u64 / 2));
    guard.shutdown();
    rt.shutdown_timeout(Duration::from_secs(5));
}
