//! A multi_thread runtime with every worker blocked at once: same guarantees as current_thread.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{BlockState, PROBE, THRESHOLD};
use opentelemetry_sdk::metrics::SdkMeterProvider;

#[test]
fn multi_thread_all_workers_blocked_is_reported_during_and_after() {
    const WORKERS: usize = 3;
    let block = Duration::from_millis(500);
    // The runtime is quiet when the block starts (spawned from outside, no request to nudge
    // the probe): with the UnparkHook, as a service installs it, the probe thread wakes with
    // the workers and reads the block at most one probe interval low. (Without it, a quiet
    // runtime is looked at every 25 ms and such a block is read up to 25 ms low.)
    let hook = loopwatch::UnparkHook::new();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    hook.install(&mut builder)
        .worker_threads(WORKERS)
        .enable_all();
    let rt = builder.build().expect("runtime");
    let guard = loopwatch::Loopwatch::builder()
        .meter_provider(SdkMeterProvider::builder().build())
        .probe_interval(PROBE)
        .stall_threshold(THRESHOLD)
        .export_interval(Duration::from_secs(60))
        .runtime_name("mt")
        .unpark_hook(hook)
        .start_with_handle(rt.handle().clone())
        .expect("start");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(guard.snapshot().stalls, 0);

    let state = Arc::new(BlockState::default());
    let tasks: Vec<_> = (0..WORKERS)
        .map(|_| {
            let s = Arc::clone(&state);
            rt.spawn(async move { s.block(WORKERS, block) })
        })
        .collect();
    let observed = common::observe_block(&guard, &state);
    let after = common::wait_stall_end(&guard);
    let injected = state.injected().expect("block ended");
    assert!(injected >= block);
    common::assert_block_reported(&observed, &after, &state);
    assert_eq!(after.runtime.workers, WORKERS as u64, "{after:?}");

    guard.shutdown();
    rt.block_on(async {
        for t in tasks {
            t.await.expect("block task");
        }
    });
}
