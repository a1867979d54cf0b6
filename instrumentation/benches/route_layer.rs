//! Route layer hot-path cost: ns per request that loopwatch's `RouteLayer` adds over an empty
//! pass-through layer attached the same way (`Router::layer`), measured in one criterion group
//! so every case runs on the same machine state. Budget (issue 3): <= floor + 100 ns.
//!
//! Cases (`route_layer/<case>`), each `GET /users/123` to a `/users/{id}` route returning a
//! static string, through `Router::clone().oneshot(..)` driven by `Runtime::block_on` on a
//! current-thread runtime (the same harness cost is in every case):
//! - `floor_passthrough`: an empty pass-through tower layer (axum's own per-layer cost);
//! - `loopwatch_local`: `RouteMetrics::builder().build().layer()` (no meter, no pressure);
//! - `loopwatch_guard`: `guard.route_metrics_builder()` from a running loopwatch (SDK meter
//!   provider without a reader: the SDK is only called on the drain thread; per-request
//!   runtime-lateness reads from the probe).
//!   Both use a 2^20-record ring (default 16384) so that the drain, sharing 2 busy cores with
//!   the bench loop, keeps up at ~1M requests/s: drops are printed at the end and would make
//!   the layer look cheaper than it is (a failed push skips the record).
//!   No tracing subscriber is installed, so the request span is disabled (as in a service
//!   whose subscriber filters `loopwatch::http` out).
//!
//! Machine: 2-core Intel Xeon VM (shared with other jobs), Rust 1.95, release profile (bench).
//! Command: `cargo bench -p loopwatch --bench route_layer -- --measurement-time 8`
//!
//! Results, 2026-11-26, three runs in a row (criterion point estimate; ring drops 0 in all):
//!
//! | run | floor_passthrough | loopwatch_local | loopwatch_guard |
//! |---|---|---|---|
//! | 1 (5 s) | 1.214 µs | 1.136 µs (−78 ns) | 1.390 µs (+176 ns) |
//! | 2 (8 s) | 1.002 µs | 1.523 µs (+521 ns) | 1.537 µs (+535 ns) |
//! | 3 (8 s) | 1.243 µs | 1.603 µs (+360 ns) | 1.320 µs (+77 ns) |
//! | 4 (8 s, load avg ~2, after the record/clock rework) | 877 ns [870, 885] | 1.075 µs [1.066, 1.085] (+198 ns) | 1.039 µs [1.034, 1.046] (+162 ns) |
//!
//! Runs 1–3 were on a shared machine (load average 4–8 on 2 cores): the floor itself moved by
//! 25 % between runs. Run 4, on a quieter machine with tight intervals, is the one to trust:
//! the layer costs about +160…+200 ns over the floor, so the 100 ns budget is NOT met yet.
//! Not profiled; the likely costs are the two clock reads, the `Arc` clone, the active-request
//! atomics, and the cache-line transfer of each 40-byte ring slot to the drain thread's core.
//! (With the default 16384-record ring
//! the drain thread, starved on this machine, dropped up to half of the records at ~1M req/s,
//! which makes the layer look cheaper; hence the large ring here.)

use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use criterion::{Criterion, criterion_group};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use tower::{Layer, Service, ServiceExt};

async fn user() -> &'static str {
    "user\n"
}

fn app() -> Router {
    Router::new()
        .route("/users/{id}", get(user))
        .route("/", get(|| async { "hello\n" }))
}

/// Ring capacity of the measured layers: `ROUTE_LAYER_RING` or 2^20 (see the header).
fn ring_capacity() -> usize {
    std::env::var("ROUTE_LAYER_RING")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20)
}

/// The router as `axum::serve` runs it: `with_state(())` turns every handler into a `Route`
/// once (axum does this per connection "rather than doing that per request"). Without it, an
/// unfinalized `Router` re-applies its layers to the handler on every request, which clones
/// each layer into a fresh box: an allocation per request for any layer that is not
/// zero-sized (the pass-through is; loopwatch's layer holds an `Arc`), and not what a served
/// router does.
fn serve_ready(router: Router) -> Router {
    router.with_state(())
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

fn route_layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // No reader: the SDK side runs only on the drain thread, never on the request path.
    let provider = SdkMeterProvider::builder().build();
    let guard = loopwatch::Loopwatch::builder()
        .meter_provider(provider)
        .export_interval(Duration::from_secs(3600))
        .start_with_handle(rt.handle().clone())
        .expect("loopwatch");
    // A ring big enough that the drain thread (which competes for the same 2 cores) keeps up
    // with a million requests a second, so every measured request really pushes its record.
    let ring = ring_capacity();
    let local = loopwatch::RouteMetrics::builder()
        .ring_capacity(ring)
        .build();
    let exported = guard.route_metrics_builder().ring_capacity(ring).build();
    let cases = [
        (
            "floor_passthrough",
            serve_ready(app().layer(PassThroughLayer)),
        ),
        ("loopwatch_local", serve_ready(app().layer(local.layer()))),
        (
            "loopwatch_guard",
            serve_ready(app().layer(exported.layer())),
        ),
    ];
    let mut g = c.benchmark_group("route_layer");
    for (name, router) in cases {
        // Warm up: the route's slot and series exist before measuring.
        let _ = rt.block_on(router.clone().oneshot(request()));
        g.bench_function(name, |b| {
            b.iter(|| {
                let r = router.clone();
                black_box(rt.block_on(r.oneshot(request())))
            })
        });
    }
    g.finish();
    eprintln!(
        "ring drops (records the drain could not keep up with): local {}, guard {}",
        local.dropped(),
        exported.dropped()
    );
    drop(guard);
}

/// Instruction-count mode for callgrind (not a criterion run): with `ROUTE_LAYER_COUNT` set to
/// `floor`, `local` or `guard`, sends `ROUTE_LAYER_N` (default 10000) requests through that case
/// inside [`measured_requests`] and exits. Run under
/// `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured_requests*'`
/// so only the request loop on the calling thread is counted (not setup, not the drain thread).
fn count_mode(case: &str) {
    let n: u64 = std::env::var("ROUTE_LAYER_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let provider = SdkMeterProvider::builder().build();
    let guard = loopwatch::Loopwatch::builder()
        .meter_provider(provider)
        .export_interval(Duration::from_secs(3600))
        .start_with_handle(rt.handle().clone())
        .expect("loopwatch");
    let ring = ring_capacity();
    let local = loopwatch::RouteMetrics::builder()
        .ring_capacity(ring)
        .build();
    let exported = guard.route_metrics_builder().ring_capacity(ring).build();
    let unfinalized = std::env::var_os("ROUTE_LAYER_UNFINALIZED").is_some();
    let ready = |r: Router| if unfinalized { r } else { serve_ready(r) };
    let router = match case {
        "floor" => ready(app().layer(PassThroughLayer)),
        "local" => ready(app().layer(local.layer())),
        "guard" => ready(app().layer(exported.layer())),
        other => panic!("ROUTE_LAYER_COUNT={other}: expected floor, local or guard"),
    };
    // Warm up (route slot, series, lazy statics), then the counted loop.
    for _ in 0..100 {
        let _ = rt.block_on(router.clone().oneshot(request()));
    }
    measured_requests(&rt, &router, n);
    eprintln!(
        "{case}: {n} requests; ring drops local {}, guard {}",
        local.dropped(),
        exported.dropped()
    );
    drop(guard);
}

#[inline(never)]
fn measured_requests(rt: &tokio::runtime::Runtime, router: &Router, n: u64) {
    for _ in 0..n {
        let r = router.clone();
        black_box(rt.block_on(r.oneshot(request())).ok());
    }
}

criterion_group!(benches, route_layer);

fn main() {
    if let Ok(case) = std::env::var("ROUTE_LAYER_COUNT") {
        count_mode(&case);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
