//! Route layer cost (issues 3 and 6, item 1): ns per request that a per-route layer adds to a
//! bare axum router, every layer in one run. Budget: loopwatch <= floor + 100 ns, and <= 1/5 of
//! what `opentelemetry-instrumentation-tower` adds.
//!
//! Cases (`route_layer/<case>`), each `GET /users/123` to a `/users/{id}` route returning a
//! static string, through `Router::clone().oneshot(..)` driven by `Runtime::block_on` on a
//! current-thread runtime (the same harness cost in every case):
//! - `bare`: the router without any layer;
//! - `floor_passthrough`: an empty pass-through tower layer attached with `Router::layer`
//!   (what attaching any layer costs in axum itself: the floor);
//! - `loopwatch`: loopwatch's full route layer from a running loopwatch
//!   (`guard.route_metrics_builder()`: duration histogram, error kinds, active requests, poll
//!   timing, runtime lateness, on an SDK meter provider with a manual reader: requests go to
//!   per-thread bins, and the SDK is called only when a collection folds them, not timed here);
//! - `task_monitor`: a plain `tokio-metrics` `TaskMonitor` wrap of the response future;
//! - `otel_tower_metrics`: `opentelemetry-instrumentation-tower` 0.19, metrics only (tracing
//!   off), on the same SDK provider;
//! - `axum_prometheus`: `axum-prometheus` 0.10 with its Prometheus recorder.
//!
//! Every router is finalized with `with_state(())`, as `axum::serve` does per connection: an
//! unfinalized router re-applies its layers on every request, which allocates a box per
//! request for any layer that is not zero-sized, charging data-holding layers (all but the
//! pass-through) for axum's setup work. loopwatch's requests not recorded are printed at the
//! end (a dropped request would flatter the layer; one series here, so there are none).
//!
//! Modes:
//! - criterion (default): `cargo bench --manifest-path benches/Cargo.toml --bench route_layers`;
//! - interleaved A/B (`ROUTE_LAYER_AB=<rounds>`): each round times 20000 requests of every case
//!   back to back; prints each case's fastest round. The minimum over interleaved rounds drops
//!   the rounds other jobs slowed down: the figure to compare on a shared machine;
//! - instruction count (`ROUTE_LAYER_COUNT=<case>`): sends `ROUTE_LAYER_N` (10000) requests
//!   through one case inside `measured_requests`, for
//!   `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured_requests*'`
//!   (identical counts between runs, whatever the machine's load).
//!
//! Machine: 2-core Intel Xeon VM (shared), Rust 1.95, bench profile.
//! Results: see BENCHMARKS.md, section 1 (filled from the last full run).

use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use criterion::{Criterion, criterion_group};
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

/// Every case's router, finalized as `axum::serve` runs it, and what must outlive them.
struct Cases {
    routers: Vec<(&'static str, Router)>,
    guard: loopwatch::LoopwatchGuard,
    loopwatch: loopwatch::http::RouteMetrics,
}

impl Cases {
    fn new(rt: &tokio::runtime::Runtime) -> Cases {
        // axum-prometheus spawns its upkeep task at construction: needs the runtime context.
        let _ctx = rt.enter();
        // OTel: metrics only, on a real SDK pipeline (manual reader: aggregation, no export).
        let provider = SdkMeterProvider::builder()
            .with_reader(ManualReader::builder().build())
            .build();
        opentelemetry::global::set_meter_provider(provider.clone());
        let guard = loopwatch::Loopwatch::builder()
            .meter_provider(provider)
            .export_interval(Duration::from_secs(3600))
            .start_with_handle(rt.handle().clone())
            .expect("loopwatch");
        let lw = guard.route_metrics_builder().build();
        let otel = opentelemetry_instrumentation_tower::http::server::LayerBuilder::builder()
            .with_tracing(false)
            .build()
            .expect("otel layer");
        let (prom, _handle) = axum_prometheus::PrometheusMetricLayer::pair();
        // `with_state(())` turns every handler into a `Route` once, as `axum::serve` does per
        // connection ("rather than doing that per request").
        let ready = |r: Router| r.with_state(());
        let routers = vec![
            ("bare", ready(app())),
            ("floor_passthrough", ready(app().layer(PassThroughLayer))),
            ("loopwatch", ready(app().layer(lw.layer()))),
            (
                "task_monitor",
                ready(app().layer(TaskMonitorLayer(TaskMonitor::new()))),
            ),
            ("otel_tower_metrics", ready(app().layer(otel))),
            ("axum_prometheus", ready(app().layer(prom))),
        ];
        for (_, router) in &routers {
            // Warm up routing tables, route slots and metric series once.
            let _ = rt.block_on(router.clone().oneshot(request()));
        }
        Cases {
            routers,
            guard,
            loopwatch: lw,
        }
    }

    fn finish(self) {
        let folded: u64 = self
            .loopwatch
            .snapshot()
            .iter()
            .map(|s| s.total_requests)
            .sum();
        eprintln!(
            "loopwatch: {folded} requests recorded, {} not recorded (would flatter it)",
            self.loopwatch.dropped()
        );
        drop(self.guard);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[inline(never)]
fn measured_requests(rt: &tokio::runtime::Runtime, router: &Router, n: u64) {
    for _ in 0..n {
        let r = router.clone();
        black_box(rt.block_on(r.oneshot(request())).ok());
    }
}

fn route_layers(c: &mut Criterion) {
    let rt = runtime();
    let cases = Cases::new(&rt);
    let mut g = c.benchmark_group("route_layer");
    for (name, router) in &cases.routers {
        g.bench_function(*name, |b| {
            b.iter(|| black_box(rt.block_on(router.clone().oneshot(request())).ok()))
        });
    }
    g.finish();
    cases.finish();
}

/// `ROUTE_LAYER_AB=rounds`: the fastest of `rounds` interleaved rounds of 20000 requests per
/// case, in ns per request, with the cost added over the bare router and over the floor.
fn ab_mode(rounds: u32) {
    let rt = runtime();
    let cases = Cases::new(&rt);
    let n = 20_000u32;
    let mut best = vec![f64::MAX; cases.routers.len()];
    for _ in 0..rounds {
        for (i, (_, router)) in cases.routers.iter().enumerate() {
            let t = std::time::Instant::now();
            measured_requests(&rt, router, u64::from(n));
            best[i] = best[i].min(t.elapsed().as_nanos() as f64 / f64::from(n));
        }
    }
    let at = |case: &str| {
        cases
            .routers
            .iter()
            .position(|(n, _)| *n == case)
            .map_or(f64::NAN, |i| best[i])
    };
    let (bare, floor) = (at("bare"), at("floor_passthrough"));
    println!("| case | ns/request (best of {rounds}) | added over bare | added over floor |");
    println!("|---|---|---|---|");
    for (i, (name, _)) in cases.routers.iter().enumerate() {
        println!(
            "| {name} | {:.0} | {:+.0} | {:+.0} |",
            best[i],
            best[i] - bare,
            best[i] - floor
        );
    }
    let lw = at("loopwatch") - bare;
    let otel = at("otel_tower_metrics") - bare;
    println!(
        "\nloopwatch over floor: {:+.0} ns (budget 100); loopwatch / otel-tower added: {:.3} (budget 0.2)",
        at("loopwatch") - floor,
        lw / otel
    );
    cases.finish();
}

/// `ROUTE_LAYER_COUNT=case`: `ROUTE_LAYER_N` requests through one case in
/// [`measured_requests`], for callgrind (see the header).
fn count_mode(case: &str) {
    let n: u64 = std::env::var("ROUTE_LAYER_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rt = runtime();
    let cases = Cases::new(&rt);
    let Some((_, router)) = cases.routers.iter().find(|(name, _)| *name == case) else {
        let names: Vec<_> = cases.routers.iter().map(|(n, _)| *n).collect();
        eprintln!("ROUTE_LAYER_COUNT={case}: expected one of {names:?}");
        std::process::exit(2);
    };
    measured_requests(&rt, router, n);
    eprintln!("{case}: {n} requests");
    cases.finish();
}

criterion_group!(benches, route_layers);

fn main() {
    if let Some(rounds) = std::env::var("ROUTE_LAYER_AB")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        ab_mode(rounds);
        return;
    }
    if let Ok(case) = std::env::var("ROUTE_LAYER_COUNT") {
        count_mode(&case);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
