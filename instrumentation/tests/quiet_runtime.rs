//! A quiet watched runtime (every worker parked, nothing waking it): loopwatch's own pipeline
//! keeps exporting on its heartbeat, exports again once the runtime is busy, and a stall that
//! starts from the quiet runtime is still detected and exported while it lasts.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{PROBE, THRESHOLD};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

/// Counts exports and keeps the largest `tokio.eventloop.stall.duration` seen, and per export
/// its `(tokio.eventloop.stall.duration, tokio.eventloop.delay.max)` in seconds.
#[derive(Default, Clone)]
struct Receiver {
    exports: Arc<AtomicUsize>,
    max_stall: Arc<Mutex<f64>>,
    seen: Arc<Mutex<Vec<(f64, f64)>>>,
}

/// The first value of a double gauge.
fn gauge_value(data: Option<&metric::Data>) -> Option<f64> {
    match data {
        Some(metric::Data::Gauge(g)) => g.data_points.iter().find_map(|p| match p.value {
            Some(number_data_point::Value::AsDouble(v)) => Some(v),
            _ => None,
        }),
        _ => None,
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let (mut stall, mut delay_max) = (None, None);
        for rm in request.into_inner().resource_metrics {
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    match m.name.as_str() {
                        "tokio.eventloop.stall.duration" => stall = gauge_value(m.data.as_ref()),
                        "tokio.eventloop.delay.max" => delay_max = gauge_value(m.data.as_ref()),
                        _ => {}
                    }
                }
            }
        }
        if let Some(v) = stall {
            let mut max = self.max_stall.lock().expect("lock");
            *max = max.max(v);
        }
        if let (Some(st), Some(dm)) = (stall, delay_max) {
            self.seen.lock().expect("lock").push((st, dm));
        }
        self.exports.fetch_add(1, Ordering::SeqCst);
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// Waits (bounded) until `cond` holds; returns whether it did.
fn wait_for(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// A runtime driven by a thread of its own (`current_thread` needs a `block_on`), with nothing
/// to do until [`Driven::stop`].
struct Driven {
    handle: tokio::runtime::Handle,
    stop: Arc<tokio::sync::Notify>,
    driver: std::thread::JoinHandle<()>,
}

impl Driven {
    fn new(rt: tokio::runtime::Runtime) -> Self {
        let handle = rt.handle().clone();
        let stop = Arc::new(tokio::sync::Notify::new());
        let stop2 = Arc::clone(&stop);
        let driver = std::thread::spawn(move || rt.block_on(async move { stop2.notified().await }));
        Driven {
            handle,
            stop,
            driver,
        }
    }

    fn stop(self) {
        self.stop.notify_one();
        self.driver.join().expect("driver");
    }
}

#[test]
fn quiet_runtime_heartbeat_busy_exports_and_stall_from_quiet() {
    let receiver = Receiver::default();
    let (_server_rt, addr) = common::serve_metrics(receiver.clone());

    // The watched runtime: driven by a thread of its own, with nothing to do (quiet).
    let runtime = Driven::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
    );
    let handle = runtime.handle.clone();

    let guard = loopwatch::Loopwatch::builder()
        .service_name("quiet-test")
        .endpoint(format!("http://{addr}"))
        .protocol(loopwatch::Protocol::Grpc)
        .export_interval(Duration::from_millis(100))
        .probe_interval(PROBE)
        .stall_threshold(THRESHOLD)
        .start_with_handle(handle.clone())
        .expect("start");

    // Quiet: no window has activity after the first ones, yet the heartbeat keeps exporting
    // (nothing else collects: the flush thread reads the provider's manual reader).
    let n0 = receiver.exports.load(Ordering::SeqCst);
    assert!(
        wait_for(Duration::from_secs(15), || receiver
            .exports
            .load(Ordering::SeqCst)
            >= n0 + 3),
        "heartbeat exports while quiet: {} after {n0}",
        receiver.exports.load(Ordering::SeqCst)
    );

    // Busy: a timer loop wakes the runtime; windows with activity are exported.
    let busy_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bs = Arc::clone(&busy_stop);
    let busy = handle.spawn(async move {
        for _ in 0..10_000 {
            if bs.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let n1 = receiver.exports.load(Ordering::SeqCst);
    assert!(
        wait_for(Duration::from_secs(15), || receiver
            .exports
            .load(Ordering::SeqCst)
            >= n1 + 3),
        "exports while busy: {} after {n1}",
        receiver.exports.load(Ordering::SeqCst)
    );
    busy_stop.store(true, Ordering::Relaxed);
    assert!(wait_for(Duration::from_secs(10), || busy.is_finished()));

    // Quiet again, then a block starting from the quiet runtime: still counted as a stall and
    // exported while it lasts (the probe thread's idle tick is shorter than the threshold).
    let before = guard.snapshot();
    assert!(
        wait_for(Duration::from_secs(10), || guard.snapshot().idle_skips
            >= before.idle_skips + 30),
        "the probe skips ticks of the quiet runtime"
    );
    let block = THRESHOLD * 3;
    let blocker = handle.spawn(async move { std::thread::sleep(block) });
    assert!(
        wait_for(Duration::from_secs(10), || guard.snapshot().stalls
            > before.stalls),
        "stall from a quiet runtime counted: {:?}",
        guard.snapshot()
    );
    assert!(
        wait_for(Duration::from_secs(10), || *receiver
            .max_stall
            .lock()
            .expect("lock")
            >= THRESHOLD.as_secs_f64()),
        "stall exported"
    );
    assert!(wait_for(Duration::from_secs(10), || blocker.is_finished()));

    guard.shutdown();
    runtime.stop();
}

#[test]
fn unpark_hook_lets_the_probe_sleep_and_still_probes_a_block_from_its_start() {
    let hook = loopwatch::UnparkHook::new();
    let mut b = tokio::runtime::Builder::new_current_thread();
    hook.install(&mut b).enable_all();
    let runtime = Driven::new(b.build().expect("runtime"));
    let handle = runtime.handle.clone();

    let provider = || opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
    let guard = loopwatch::Loopwatch::builder()
        .meter_provider(provider())
        .export_interval(Duration::from_secs(1))
        .probe_interval(PROBE)
        .stall_threshold(THRESHOLD)
        .unpark_hook(hook.clone())
        .start_with_handle(handle.clone())
        .expect("start");

    // One hook, one running loopwatch.
    match loopwatch::Loopwatch::builder()
        .meter_provider(provider())
        .unpark_hook(hook.clone())
        .start_with_handle(handle.clone())
    {
        Err(loopwatch::StartError::InvalidConfig { key, .. }) => assert_eq!(key, "unpark_hook"),
        other => panic!("second loopwatch with the same hook: {other:?}"),
    }

    // Quiet: the probe thread sleeps a window at a time instead of ticking every 25 ms (a
    // tick of the quiet runtime is one idle skip; without the hook 2 s hold ~80).
    assert!(
        wait_for(Duration::from_secs(10), || guard.snapshot().idle_skips >= 1),
        "the probe skips ticks of the quiet runtime"
    );
    std::thread::sleep(Duration::from_millis(500));
    let s0 = guard.snapshot().idle_skips;
    std::thread::sleep(Duration::from_secs(2));
    let ticks = guard.snapshot().idle_skips - s0;
    // With the hook the probe thread looks once per window (the export interval, 1 s, for a
    // provider of the application's): 2 looks in 2 s, 3 when the span straddles a boundary.
    assert!(ticks <= 3, "{ticks} idle ticks in 2 s with the hook");

    // A block starting from the quiet runtime (no request to nudge the probe): the spawn wakes
    // the worker, the hook wakes the probe thread, and the probe samples from the block's
    // start. Sleeping a whole window instead, it would see none or a small part of it.
    let before = guard.snapshot();
    let block = THRESHOLD * 4;
    let blocker = handle.spawn(async move { std::thread::sleep(block) });
    assert!(wait_for(Duration::from_secs(10), || blocker.is_finished()));
    assert!(
        wait_for(Duration::from_secs(10), || guard.snapshot().last_stall
            > Duration::ZERO),
        "stall from a quiet runtime counted: {:?}",
        guard.snapshot()
    );
    let after = guard.snapshot();
    assert_eq!(after.stalls, before.stalls + 1);
    // (Not bounded above here: on a loaded machine the OS may run the worker late after
    // the sleep, which is a real delay too.)
    assert!(
        after.last_stall >= block - THRESHOLD,
        "read {:?} of a {block:?} block",
        after.last_stall
    );

    guard.shutdown();
    // The hook is free again once that loopwatch stopped.
    let again = loopwatch::Loopwatch::builder()
        .meter_provider(provider())
        .unpark_hook(hook)
        .start_with_handle(handle.clone())
        .expect("hook reusable after shutdown");
    again.shutdown();
    runtime.stop();
}

/// After a stall, the window that follows it ends one export interval later even though the
/// runtime has gone quiet (only windows quiet throughout stretch to the 2.5 s heartbeat): the
/// export after the stall's own export already reads the calm runtime, so an agent's readiness
/// recovers one export interval after the stall, not one heartbeat. (Were the stall's window
/// kept, the next export, whichever of the heartbeat and the probe's roll came first, could
/// still read the stall.)
#[test]
fn the_export_after_a_stall_reads_the_calm_window() {
    let receiver = Receiver::default();
    let (_server_rt, addr) = common::serve_metrics(receiver.clone());
    let hook = loopwatch::UnparkHook::new();
    let mut b = tokio::runtime::Builder::new_current_thread();
    hook.install(&mut b).enable_all();
    let runtime = Driven::new(b.build().expect("runtime"));
    let handle = runtime.handle.clone();
    // The default 1 s export interval: longer than the 200 ms after which a quiet runtime's
    // probe thread sleeps long.
    let guard = loopwatch::Loopwatch::builder()
        .service_name("calm-after-stall")
        .endpoint(format!("http://{addr}"))
        .protocol(loopwatch::Protocol::Grpc)
        .probe_interval(PROBE)
        .stall_threshold(THRESHOLD)
        .unpark_hook(hook)
        .start_with_handle(handle.clone())
        .expect("start");

    let block = THRESHOLD * 3;
    let blocker = handle.spawn(async move { std::thread::sleep(block) });
    assert!(wait_for(Duration::from_secs(10), || blocker.is_finished()));
    // The stall's own export: no stall in progress any more, its window's max is the stall.
    let half = block.as_secs_f64() / 2.0;
    let stall_end = |seen: &[(f64, f64)]| {
        seen.iter()
            .position(|&(stall, max)| stall == 0.0 && max >= half)
    };
    assert!(
        wait_for(Duration::from_secs(10), || {
            let seen = receiver.seen.lock().expect("lock");
            stall_end(&seen).is_some_and(|i| seen.len() > i + 1)
        }),
        "the stall's export and one after it: {:?}",
        receiver.seen.lock().expect("lock")
    );
    let seen = receiver.seen.lock().expect("lock").clone();
    let i = stall_end(&seen).expect("found above");
    assert!(
        seen[i + 1].1 < half,
        "the export after the stall's reads a calm window, not the stall again: {seen:?}"
    );
    guard.shutdown();
    runtime.stop();
}
