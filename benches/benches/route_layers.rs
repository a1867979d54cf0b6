//! Route layer cost (issue 6, item 1): ns per request that a per-route layer adds to a bare
//! axum router, all layers in one criterion group so they are measured in the same run.
//!
//! Cases (`route_layer/<case>`):
//! - `bare`: the router without any layer;
//! - `floor_passthrough`: an empty pass-through tower layer attached with `Router::layer` (what
//!   attaching any layer costs in axum itself: the floor);
//! - `loopwatch`: loopwatch's full route layer from a running loopwatch
//!   (`guard.route_metrics_builder()`: duration histogram, errors, active requests, task
//!   timing, runtime lateness), on the same SDK provider; its record ring is 2^20 so that the
//!   drain thread keeps up at bench rates (drops are printed: a dropped record would make it
//!   look cheaper than it is);
//! - `task_monitor`: a plain `tokio-metrics` `TaskMonitor` wrap of the response future;
//! - `otel_tower_metrics`: `opentelemetry-instrumentation-tower` 0.19, metrics only (tracing
//!   off), on an SDK meter provider with a manual reader;
//! - `axum_prometheus`: `axum-prometheus` 0.10 with its Prometheus recorder.
//!
//! Each iteration sends `GET /users/123` to a `/users/{id}` route whose handler returns a
//! static string, through `Router::clone().oneshot(..)` on a current-thread runtime.
//! Run: `cargo bench --manifest-path benches/Cargo.toml --bench route_layers`.

use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry_sdk::metrics::{ManualReader, SdkMeterProvider};
use tokio_metrics::TaskMonitor;
use tower::{Layer, Service, ServiceExt};

async fn user() -> &'static str {
    "user\n"
}

fn app() -> Router {
    Router::new()
        .route("/users/{id}", get(user))
        .route("/", get(|| async { "hello\n" }))
}

fn request() -> Request<Body> {
    Request::builder()
        .uri("/users/123")
        .body(Body::empty())
        .expect("static request")
}

/// A layer that does nothing: its service forwards `poll_ready` and `call` unchanged.
#[derive(Clone, Copy)]
struct PassThroughLayer;

#[derive(Clone)]
struct PassThrough<S>(S);

impl<S> Layer<S> for PassThroughLayer {
    type Service = PassThrough<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PassThrough(inner)
    }
}

impl<S: Service<R>, R> Service<R> for PassThrough<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, req: R) -> Self::Future {
        self.0.call(req)
    }
}

/// Wraps each request's future in one shared `TaskMonitor` (scheduled/poll timing).
#[derive(Clone)]
struct TaskMonitorLayer(TaskMonitor);

#[derive(Clone)]
struct TaskMonitorService<S> {
    inner: S,
    monitor: TaskMonitor,
}

impl<S> Layer<S> for TaskMonitorLayer {
    type Service = TaskMonitorService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TaskMonitorService {
            inner,
            monitor: self.0.clone(),
        }
    }
}

impl<S: Service<R>, R> Service<R> for TaskMonitorService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = tokio_metrics::Instrumented<S::Future>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: R) -> Self::Future {
        self.monitor.instrument(self.inner.call(req))
    }
}

fn cases(
    rt: &tokio::runtime::Runtime,
) -> (
    Vec<(&'static str, Router)>,
    loopwatch::LoopwatchGuard,
    loopwatch::RouteMetrics,
) {
    // OTel: metrics only, on a real SDK pipeline (manual reader: aggregation without export).
    let provider = SdkMeterProvider::builder()
        .with_reader(ManualReader::builder().build())
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());
    let guard = loopwatch::Loopwatch::builder()
        .meter_provider(provider)
        .export_interval(Duration::from_secs(3600))
        .start_with_handle(rt.handle().clone())
        .expect("loopwatch");
    let lw = guard.route_metrics_builder().ring_capacity(1 << 20).build();
    let otel = opentelemetry_instrumentation_tower::http::server::LayerBuilder::builder()
        .with_tracing(false)
        .build()
        .expect("otel layer");
    let (prom, _handle) = axum_prometheus::PrometheusMetricLayer::pair();

    let v = vec![
        ("bare", app()),
        ("floor_passthrough", app().layer(PassThroughLayer)),
        ("loopwatch", app().layer(lw.layer())),
        (
            "task_monitor",
            app().layer(TaskMonitorLayer(TaskMonitor::new())),
        ),
        ("otel_tower_metrics", app().layer(otel)),
        ("axum_prometheus", app().layer(prom)),
    ];
    (v, guard, lw)
}

fn route_layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("route_layer");
    // axum-prometheus spawns its upkeep task at construction: needs the runtime context.
    let (cases, guard, lw) = {
        let _ctx = rt.enter();
        cases(&rt)
    };
    for (name, router) in cases {
        // Warm up routing tables and metric series once.
        let _ = rt.block_on(router.clone().oneshot(request()));
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let r = router.clone();
                async move { black_box(r.oneshot(request()).await) }
            })
        });
    }
    g.finish();
    eprintln!("loopwatch ring drops (would flatter it): {}", lw.dropped());
    drop(guard);
}

criterion_group!(benches, route_layers);
criterion_main!(benches);
