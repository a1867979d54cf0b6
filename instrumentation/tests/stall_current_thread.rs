//! A current_thread runtime blocked by `std::thread::sleep` inside a task: the stall is seen
//! while it happens and the window afterwards holds it (corrected), never more.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use common::{BlockState, PROBE, THRESHOLD};
use opentelemetry_sdk::metrics::SdkMeterProvider;

#[test]
fn current_thread_block_is_reported_during_and_after() {
    let block = Duration::from_millis(400);
    let state = Arc::new(BlockState::default());
    let (guard_tx, guard_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();

    let rt_state = Arc::clone(&state);
    let rt_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let guard = loopwatch::Loopwatch::builder()
                .meter_provider(SdkMeterProvider::builder().build())
                .probe_interval(PROBE)
                .stall_threshold(THRESHOLD)
                .export_interval(Duration::from_secs(60))
                .runtime_name("ct")
                .start()
                .expect("start");
            guard_tx.send(guard).expect("send guard");
            // Normal operation first, so the window has ordinary samples too.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = ready_rx.recv_timeout(Duration::from_secs(5));
            let s = Arc::clone(&rt_state);
            tokio::spawn(async move { s.block(1, block) })
                .await
                .expect("block task");
            // Keep driving the runtime until the test is done (bounded).
            for _ in 0..2000 {
                if rt_state.finish.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    });

    let guard = guard_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("guard");
    let before = guard.snapshot();
    assert_eq!(before.stalls, 0, "{before:?}");
    ready_tx.send(()).expect("ready");
    let observed = common::observe_block(&guard, &state);
    let after = common::wait_stall_end(&guard);
    let injected = state.injected().expect("block ended");
    assert!(injected >= block);
    common::assert_block_reported(&observed, &after, &state);
    assert!(
        after.probes + after.idle_skips > 5,
        "ticks before the block: {after:?}"
    );

    guard.shutdown();
    state.finish.store(true, Ordering::SeqCst);
    rt_thread.join().expect("runtime thread");
}
