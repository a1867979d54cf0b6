//! Start/stop edge cases: dropping the guard inside async code, the watched runtime going away
//! before the guard.

mod common;

use std::time::{Duration, Instant};

use common::{PROBE, THRESHOLD};
use opentelemetry_sdk::metrics::SdkMeterProvider;

fn closed_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("http://{}", l.local_addr().expect("addr"))
}

#[test]
fn guard_dropped_inside_async_code_does_not_panic() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Owned gRPC pipeline: its export runtime must not be dropped in this async context.
        let guard = loopwatch::Loopwatch::builder()
            .endpoint(closed_endpoint())
            .probe_interval(PROBE)
            .start()
            .expect("start");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(guard.snapshot().probes > 0);
        drop(guard);
    });
}

#[test]
fn watched_runtime_dropped_first_is_not_a_stall() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let guard = loopwatch::Loopwatch::builder()
        .meter_provider(SdkMeterProvider::builder().build())
        .probe_interval(PROBE)
        .stall_threshold(THRESHOLD)
        .start_with_handle(rt.handle().clone())
        .expect("start");
    std::thread::sleep(Duration::from_millis(100));
    drop(rt);
    // Longer than the threshold: a probe stuck on a dead runtime would count as a stall.
    std::thread::sleep(THRESHOLD * 2);
    let s = guard.snapshot();
    assert_eq!(s.stalls, 0, "{s:?}");
    assert_eq!(s.current_stall, Duration::ZERO, "{s:?}");
    let t = Instant::now();
    guard.shutdown();
    assert!(t.elapsed() < loopwatch::LoopwatchBuilder::DEFAULT_SHUTDOWN_TIMEOUT);
}

#[test]
fn periodic_windows_roll_and_carry_runtime_metrics() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let guard = loopwatch::Loopwatch::builder()
        .meter_provider(SdkMeterProvider::builder().build())
        .probe_interval(PROBE)
        .export_interval(Duration::from_millis(100))
        .start_with_handle(rt.handle().clone())
        .expect("start");
    let deadline = Instant::now() + Duration::from_secs(10);
    while guard.snapshot().windows < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = guard.snapshot();
    assert!(s.windows >= 3, "{s:?}");
    assert!(s.probes > 0, "{s:?}");
    assert!(
        s.delay_min <= s.delay_p50 && s.delay_p50 <= s.delay_p99,
        "{s:?}"
    );
    assert!(s.delay_p99 <= s.delay_max, "{s:?}");
    assert_eq!(s.runtime.workers, 2, "{s:?}");
    assert!((0.0..=1.0).contains(&s.runtime.utilization), "{s:?}");
    guard.shutdown();
}

#[test]
fn idle_runtime_skips_probes_busy_runtime_is_probed() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let guard = loopwatch::Loopwatch::builder()
        .meter_provider(SdkMeterProvider::builder().build())
        .probe_interval(PROBE)
        .export_interval(Duration::from_secs(60))
        .start_with_handle(rt.handle().clone())
        .expect("start");
    // Idle: nothing runs, every worker parks; ticks are skipped (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(10);
    while guard.snapshot().idle_skips < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let idle = guard.snapshot();
    assert!(idle.idle_skips >= 10, "{idle:?}");
    // Busy: a task keeps one worker awake; probes run again.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = std::sync::Arc::clone(&stop);
    let busy = rt.spawn(async move {
        let end = Instant::now() + Duration::from_secs(10);
        while !s2.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
            tokio::task::yield_now().await;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while guard.snapshot().probes < idle.probes + 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let busy_snap = guard.snapshot();
    assert!(busy_snap.probes >= idle.probes + 10, "{busy_snap:?}");
    rt.block_on(busy).expect("busy task");
    guard.shutdown();
}
