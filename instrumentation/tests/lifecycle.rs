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
    assert!(t.elapsed() < loopwatch::DEFAULT_SHUTDOWN_TIMEOUT);
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
    assert!(s.window_samples > 0, "{s:?}");
    assert!(
        s.delay_min <= s.delay_p50 && s.delay_p50 <= s.delay_p99,
        "{s:?}"
    );
    assert!(s.delay_p99 <= s.delay_max, "{s:?}");
    assert_eq!(s.runtime.workers, 2, "{s:?}");
    assert!((0.0..=1.0).contains(&s.runtime.utilization), "{s:?}");
    guard.shutdown();
}
