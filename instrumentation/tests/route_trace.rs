//! Per-request truth on traces: a request that waits behind a blocked runtime carries how long
//! it waited (`loopwatch.waited_ms`) and its poll time on its `http.request` span, logs a
//! "waited N ms behind a blocked runtime" warning, and the span reaches a real OTLP/gRPC trace
//! receiver through `OtlpTracing`. Also: a task family times the tasks it instruments.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use tower::ServiceExt;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// The injected block.
const BLOCK: Duration = Duration::from_millis(400);

/// A received span: name and numeric attributes.
type ReceivedSpan = (String, HashMap<String, f64>);

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock().expect("lock");
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let mut attrs = HashMap::new();
                    for kv in s.attributes {
                        let v = match kv.value.and_then(|v| v.value) {
                            Some(any_value::Value::DoubleValue(d)) => d,
                            Some(any_value::Value::IntValue(i)) => i as f64,
                            _ => f64::NAN,
                        };
                        attrs.insert(kv.key, v);
                    }
                    out.push((s.name, attrs));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Captures the `loopwatch.*` fields recorded on `http.request` spans and warning messages.
#[derive(Clone, Default)]
struct Capture {
    fields: Arc<Mutex<HashMap<String, f64>>>,
    warnings: Arc<Mutex<Vec<String>>>,
}

struct NumVisitor<'a>(&'a mut HashMap<String, f64>);
impl Visit for NumVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value as f64);
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

struct MsgVisitor<'a>(&'a mut String);
impl Visit for MsgVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if ctx.span(id).is_some_and(|s| s.name() == "http.request") {
            values.record(&mut NumVisitor(&mut self.fields.lock().expect("lock")));
        }
    }
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut m = String::new();
            event.record(&mut MsgVisitor(&mut m));
            self.warnings.lock().expect("lock").push(m);
        }
    }
}

#[test]
fn waiting_behind_a_block_is_on_the_request_span_and_reaches_otlp() {
    let receiver = Receiver::default();
    let (_server_rt, addr) = common::serve_grpc(
        tonic::transport::Server::builder().add_service(TraceServiceServer::new(receiver.clone())),
    );

    let tracing_pipeline = loopwatch::trace::OtlpTracing::start(
        loopwatch::Loopwatch::builder()
            .service_name("trace-test")
            .endpoint(format!("http://{addr}"))
            .protocol(loopwatch::Protocol::Grpc),
    )
    .expect("tracing pipeline");
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_pipeline.layer())
        .with(capture.clone());
    let _default = tracing::subscriber::set_default(subscriber);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let guard = loopwatch::Loopwatch::builder()
        .meter_provider(SdkMeterProvider::builder().build())
        .probe_interval(Duration::from_millis(10))
        .start_with_handle(rt.handle().clone())
        .expect("loopwatch");
    let routes = guard.route_metrics();
    let app = Router::new()
        .route(
            "/sleep",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                "slept"
            }),
        )
        .layer(routes.layer());

    let started = Instant::now();
    let status = rt.block_on(async {
        // Another task blocks the (only) worker while the request sleeps.
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            std::thread::sleep(BLOCK);
        });
        app.oneshot(Request::get("/sleep").body(Body::empty()).expect("req"))
            .await
            .expect("infallible")
            .status()
    });
    let elapsed = started.elapsed();
    assert_eq!(status, 200);

    let fields = capture.fields.lock().expect("lock").clone();
    let waited = fields
        .get("loopwatch.waited_ms")
        .copied()
        .expect("waited_ms recorded");
    let poll = fields.get("loopwatch.poll_ms").copied().expect("poll_ms");
    assert!(fields.get("loopwatch.polls").copied().unwrap_or(0.0) >= 2.0);
    // The probe samples (it can read up to an interval plus a late wake-up low): half the
    // block is a generous floor; it can never exceed the request's own duration.
    assert!(
        waited >= BLOCK.as_secs_f64() * 1e3 / 2.0,
        "waited {waited} ms behind a {BLOCK:?} block"
    );
    assert!(
        waited <= elapsed.as_secs_f64() * 1e3,
        "{waited} <= {elapsed:?}"
    );
    assert!(
        poll < waited,
        "the request itself hardly ran: poll {poll} ms"
    );
    let warnings = capture.warnings.lock().expect("lock").clone();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("behind a blocked runtime")),
        "{warnings:?}"
    );
    let s = routes.route("/sleep").expect("route stats");
    assert!(s.waited >= BLOCK / 2, "{s:?}");

    // The span reaches the OTLP receiver with its loopwatch attributes.
    tracing_pipeline.force_flush();
    let deadline = Instant::now() + Duration::from_secs(15);
    let span = loop {
        let found = receiver
            .spans
            .lock()
            .expect("lock")
            .iter()
            .find(|(name, _)| name == "GET /sleep")
            .cloned();
        if let Some(s) = found {
            break s;
        }
        assert!(Instant::now() < deadline, "span not received");
        std::thread::sleep(Duration::from_millis(50));
        tracing_pipeline.force_flush();
    };
    let exported = span.1.get("loopwatch.waited_ms").copied().unwrap_or(0.0);
    assert!((exported - waited).abs() < 1e-6, "{span:?}");
    drop(_default);
    guard.shutdown();
    tracing_pipeline.shutdown();
    drop(rt);
}

#[test]
fn a_request_queued_behind_a_block_sees_the_stall_before_it() {
    let capture = Capture::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let guard = loopwatch::Loopwatch::builder()
        .meter_provider(SdkMeterProvider::builder().build())
        .probe_interval(Duration::from_millis(10))
        .start_with_handle(rt.handle().clone())
        .expect("loopwatch");
    let routes = guard.route_metrics();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(routes.layer());
    let handle = rt.handle().clone();
    let status = rt.block_on(async move {
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        tokio::spawn(async move {
            let _ = started_tx.send(());
            std::thread::sleep(BLOCK);
        });
        // The request arrives while the runtime is blocked (spawned from another thread), so
        // its first poll comes only after the block: the layer never saw it wait.
        let req = std::thread::spawn(move || {
            let _ = started_rx.recv_timeout(Duration::from_secs(10));
            std::thread::sleep(BLOCK / 4);
            handle.spawn(app.oneshot(Request::get("/").body(Body::empty()).expect("req")))
        });
        tokio::task::yield_now().await; // lets the blocker run
        let join = req.join().expect("spawner thread");
        join.await.expect("join").expect("infallible").status()
    });
    assert_eq!(status, 200);
    let fields = capture.fields.lock().expect("lock").clone();
    let before = fields
        .get("loopwatch.stall_before_ms")
        .copied()
        .expect("stall_before_ms recorded");
    // An upper bound of the unseen wait: the stall the request was queued behind (the probe
    // samples, so it may read up to an interval plus a late wake-up low; half is generous).
    assert!(
        before >= BLOCK.as_secs_f64() * 1e3 / 2.0,
        "stall before the request: {before} ms ({fields:?})"
    );
    let warnings = capture.warnings.lock().expect("lock").clone();
    assert!(
        warnings.iter().any(|w| w.contains("started right after a")),
        "{warnings:?}"
    );
    drop(_default);
    guard.shutdown();
    drop(rt);
}

#[test]
fn task_family_times_spawned_tasks() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let fam = loopwatch::tasks::TaskFamily::new("route-trace-test-family");
    rt.block_on(async {
        for _ in 0..3 {
            tokio::spawn(fam.instrument(async {
                tokio::task::yield_now().await;
            }))
            .await
            .expect("join");
        }
    });
    let s = fam.stats();
    assert_eq!(s.instrumented_count, 3);
    assert!(s.total_poll_count >= 6, "{s:?}");
}
