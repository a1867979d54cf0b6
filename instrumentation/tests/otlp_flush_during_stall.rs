//! A stall is exported to a real OTLP/gRPC receiver WHILE the watched runtime is completely
//! blocked, and the export right after the stall carries stall = 0 together with the big p99.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BlockState, PROBE, SAMPLING_SLACK, THRESHOLD};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

/// One received export: when, and the gauge values by metric name.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    gauges: Vec<(String, f64)>,
    service_name: Option<String>,
    runtime_names: Vec<String>,
}

impl Received {
    fn gauge(&self, name: &str) -> Option<f64> {
        self.gauges.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

/// stall.duration of this export is at most an ordinary in-flight probe (the next probe may
/// be outstanding for some µs when the export collects).
fn stall_over(r: &Received) -> bool {
    r.gauge("tokio.eventloop.stall.duration")
        .is_some_and(|s| s < PROBE.as_secs_f64())
}

/// The string value of `kv` if its key is `key`.
fn string_attr(kv: &KeyValue, key: &str) -> Option<String> {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) if kv.key == key => Some(s.clone()),
        _ => None,
    }
}

#[derive(Default, Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let at = Instant::now();
        let mut r = Received {
            at,
            gauges: Vec::new(),
            service_name: None,
            runtime_names: Vec::new(),
        };
        for rm in request.into_inner().resource_metrics {
            for kv in rm.resource.iter().flat_map(|res| res.attributes.iter()) {
                if let Some(s) = string_attr(kv, "service.name") {
                    r.service_name = Some(s);
                }
            }
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    if let Some(metric::Data::Gauge(g)) = m.data {
                        for p in g.data_points {
                            for kv in &p.attributes {
                                if let Some(s) = string_attr(kv, "tokio.runtime.name") {
                                    r.runtime_names.push(s);
                                }
                            }
                            if let Some(number_data_point::Value::AsDouble(v)) = p.value {
                                r.gauges.push((m.name.clone(), v));
                            }
                        }
                    }
                }
            }
        }
        self.got.lock().expect("lock").push(r);
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

#[test]
fn stall_reaches_receiver_while_current_thread_runtime_is_blocked() {
    run(1, false);
}

#[test]
fn stall_reaches_receiver_while_every_multi_thread_worker_is_blocked() {
    run(2, true);
}

/// Blocks every worker of the watched runtime (`workers` threads) for ~1 s.
fn run(workers: usize, multi_thread: bool) {
    // The receiver lives on its own runtime, never the watched one.
    let receiver = Receiver::default();
    let (server_rt, addr) = common::serve_metrics(receiver.clone());

    // The watched runtime, about to be blocked completely for ~1 s.
    let block = Duration::from_millis(1000);
    let rt = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .expect("runtime");
    let guard = loopwatch::Loopwatch::builder()
        .service_name("otlp-test")
        .endpoint(format!("http://{addr}"))
        .protocol(loopwatch::Protocol::Grpc)
        // Long interval: every export seen during the test is a stall-triggered flush.
        .export_interval(Duration::from_secs(60))
        .probe_interval(PROBE)
        .stall_threshold(THRESHOLD)
        .runtime_name("watched")
        .start_with_handle(rt.handle().clone())
        .expect("start");

    let state = Arc::new(BlockState::default());
    // Let ordinary probes run, then block every thread of the runtime.
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let s = Arc::clone(&state);
                tokio::spawn(async move { s.block(workers, block) })
            })
            .collect();
        for t in tasks {
            t.await.expect("block task");
        }
        // Drive the runtime a little longer so the probe sees the stall end.
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    let block_end = state.end().expect("block ended");
    let injected = state.injected().expect("block ended");

    // Wait (bounded) for the post-stall export.
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = receiver.got.lock().expect("lock").clone();
        let after = got.iter().any(|r| {
            stall_over(r)
                && r.gauge("tokio.eventloop.delay.p99").unwrap_or(0.0) > THRESHOLD.as_secs_f64()
        });
        if after || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("injected {injected:?}; received {} exports", got.len());
    for r in &got {
        eprintln!(
            "  +{:?} stall={:?} p99={:?}",
            r.at.saturating_duration_since(block_end - injected),
            r.gauge("tokio.eventloop.stall.duration"),
            r.gauge("tokio.eventloop.delay.p99")
        );
    }

    let during: Vec<_> = got
        .iter()
        .filter(|r| r.at < block_end)
        .filter(|r| {
            r.gauge("tokio.eventloop.stall.duration").unwrap_or(0.0) >= THRESHOLD.as_secs_f64()
        })
        .collect();
    assert!(
        !during.is_empty(),
        "no export with stall.duration >= threshold arrived during the block: {got:?}"
    );
    let first = during[0];
    assert_eq!(first.service_name.as_deref(), Some("otlp-test"));
    assert!(first.runtime_names.iter().all(|n| n == "watched"));
    assert!(!first.runtime_names.is_empty());

    // The runtime is blocked completely only until the *first* worker is released (the probe
    // task may then run on it), which can be a little before `block_end`, the last release.
    let last_during = during.last().map(|r| r.at).unwrap_or(block_end);
    let after = got
        .iter()
        .find(|r| r.at > last_during && stall_over(r))
        .expect("an export after the stall with stall.duration ~ 0");
    let p99 = after
        .gauge("tokio.eventloop.delay.p99")
        .expect("p99 exported");
    let max = after
        .gauge("tokio.eventloop.delay.max")
        .expect("max exported");
    // The exported window is the stall window (no periodic roll within 60 s).
    let snap = guard.snapshot();
    assert_eq!(snap.windows, 1, "{snap:?}");
    assert!(
        (p99 - snap.delay_p99.as_secs_f64()).abs() < 1e-6,
        "{snap:?}"
    );
    let fully = state.fully_blocked().expect("block ended");
    let floor = common::p99_floor(fully, snap.window_samples);
    assert!(
        p99 >= floor.as_secs_f64(),
        "post-stall export p99 {p99} < {floor:?} for block {injected:?} (fully blocked {fully:?})"
    );
    assert!(
        max + SAMPLING_SLACK.as_secs_f64() >= fully.as_secs_f64(),
        "post-stall export max {max} too low for block {injected:?} (fully blocked {fully:?})"
    );
    assert!(
        max <= (injected + common::OVER_READ_SLACK).as_secs_f64(),
        "max {max}"
    );

    let before_shutdown = receiver.got.lock().expect("lock").len();
    let t = Instant::now();
    guard.shutdown();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "shutdown not bounded"
    );
    // shutdown() made the final export before returning.
    assert!(
        receiver.got.lock().expect("lock").len() > before_shutdown,
        "no final export on shutdown"
    );
    state.finish.store(true, Ordering::SeqCst);
    drop(rt);
    server_rt.shutdown_timeout(Duration::from_secs(1));
}
