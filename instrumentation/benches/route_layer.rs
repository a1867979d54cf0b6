//! Route layer hot-path cost: ns per request that loopwatch's `RouteLayer` adds over an empty
//! pass-through layer attached the same way (`Router::layer`), measured in one criterion group
//! so every case runs on the same machine state. Budget (issue 3): <= floor + 100 ns.
//!
//! Cases (`route_layer/<case>`), each `GET /users/123` to a `/users/{id}` route returning a
//! static string, through `Router::clone().oneshot(..)` driven by `Runtime::block_on` on a
//! current-thread runtime (the same harness cost is in every case). Every router is finalized
//! with `with_state(())`, as `axum::serve` does per connection (see [`serve_ready`]): an
//! unfinalized router re-applies its layers on every request, which allocates a box per
//! request for any non-zero-sized layer and so charged loopwatch (not the zero-sized
//! pass-through) for axum's setup work.
//! - `floor_passthrough`: an empty pass-through tower layer (axum's own per-layer cost);
//! - `loopwatch_local`: `RouteMetrics::builder().build().layer()` (no meter, no pressure);
//! - `loopwatch_guard`: `guard.route_metrics_builder()` from a running loopwatch (SDK meter
//!   provider without a reader: the SDK is only called on the drain thread; requests done in
//!   one poll do not read the probe).
//!   Both use a 2^16-record ring (default 16384; `ROUTE_LAYER_RING` overrides) so that the
//!   drain, sharing 2 busy cores with the bench loop, keeps up at ~1M requests/s: drops are
//!   printed at the end and would make the layer look cheaper (a failed push skips the
//!   record). A 2^20 ring (40 MiB, far beyond the caches) costs another ~30–50 ns per request
//!   in cache misses, which is why the earlier runs used it no more.
//!   No tracing subscriber is installed, so the request span is disabled (as in a service
//!   whose subscriber filters `loopwatch::http` out).
//!
//! Machine: 2-core Intel Xeon VM (shared with other jobs), Rust 1.95, release profile (bench).
//!
//! ## Stable figure: instructions per request (callgrind)
//!
//! `ROUTE_LAYER_COUNT=floor|local|guard` skips criterion and sends `ROUTE_LAYER_N` (10000)
//! requests through that case after 100 warm-up requests; count only the request loop:
//!
//! ```text
//! cargo bench -p loopwatch --bench route_layer --no-run   # prints the binary's path
//! ROUTE_LAYER_COUNT=guard valgrind --tool=callgrind --collect-atstart=no \
//!     --toggle-collect='*measured_requests*' target/release/deps/route_layer-<hash>
//! callgrind_annotate callgrind.out.<pid>
//! ```
//!
//! Instructions per request on the request thread (total / 10000; identical between runs):
//!
//! | code | floor_passthrough | loopwatch_local | loopwatch_guard |
//! |---|---|---|---|
//! | before (d00843a) | 8838 | 9719 (+881) | 9923 (+1085) |
//! | after (this file's commit) | 8842 | 9548 (+706) | 9548 (+706) |
//! | before, unfinalized router (old harness) | 9211 | 10270 (+1059) | 10474 (+1263) |
//! | after, unfinalized router | 9217 | 10102 (+885) | 10102 (+885) |
//!
//! Where the +706 go (callgrind_annotate, floor vs guard): the service's `call` ~150 (route
//! id, span check, record setup, one `Arc` clone) plus ~140 of `memcpy` (the inner future
//! is returned by value into the wrapper, ~300 bytes, and the boxed future is larger), the
//! future's `poll` ~115, `finish` ~77 (record pack + ring push), route lookup ~40 (pointer
//! cache hit), clock reads and `Instant` arithmetic ~110, drops ~50. Not in these counts:
//! the clock itself (valgrind turns the vDSO `clock_gettime` into a syscall; natively two
//! reads cost ~39 ns here), cache misses and locked-instruction latency (per request: one
//! `fetch_add`, one ring CAS, and the `Arc` increment/decrement of the per-request service
//! clone axum makes and of the record), and the drain thread: ~295 instructions per record
//! without a meter, ~505 with the SDK histogram (`--toggle-collect='*Inner*drain*'`), spent
//! on the `loopwatch-http` thread, which on a 2-core machine competes with the request loop.
//!
//! ## Wall clock (noisy)
//!
//! Commands: `cargo bench -p loopwatch --bench route_layer -- --measurement-time 8`, and an
//! interleaved A/B mode, `ROUTE_LAYER_AB=40 target/release/deps/route_layer-<hash>`, which
//! times 40 rounds of 20000 requests per case back to back and keeps each case's fastest
//! round (rounds slowed by other jobs drop out).
//!
//! Before (d00843a, unfinalized router, 2^20 ring): +160…+200 ns on the quietest run (load
//! average ~2; floor 877 ns), +77…+535 ns on loaded runs.
//!
//! After, 2026-11-26, load average 7.5–8.5 on 2 cores (other engineers building):
//!
//! | run | floor_passthrough | loopwatch_local | loopwatch_guard |
//! |---|---|---|---|
//! | criterion 1 (load 7.8, 2^16 ring) | 1.423 µs [1.356, 1.503] | 1.528 µs (+105 ns) | 1.637 µs (+214 ns) |
//! | criterion 2 (load 8.2, 2^16 ring) | 1.228 µs [1.171, 1.293] | 1.352 µs (+124 ns) | 1.820 µs [1.462, 2.270] (+592 ns) |
//! | A/B best of 40 (load 7.7, 2^16 ring) | 832 ns | 979 ns (+147 ns) | 974 ns (+142 ns) |
//! | A/B best of 40 (load 7.9, 2^16 ring) | 856 ns | 1010 ns (+154 ns) | 1003 ns (+147 ns) |
//! | A/B best of 40 (load 7.7, 2^20 ring) | 851 ns | 1068 ns (+217 ns) | 1018 ns (+167 ns) |
//! | A/B best of 40 (load 7.8, 2^20 ring) | 911 ns | 1095 ns (+184 ns) | 1102 ns (+190 ns) |
//!
//! Ring drops: 0 in every A/B run; criterion run 1 dropped 37806 (local) and 15941 (guard)
//! records, run 2 1180572 and 121798 (the drain thread starved under load; the local figure
//! of run 2 is flattered by it). At this load the criterion intervals are wide and the floor
//! itself moves by 200 ns between runs; the A/B minima are the figure to compare.
//!
//! Verdict: the instruction overhead fell by 20–35 % (guard +1085 -> +706, local +881 ->
//! +706), but the wall-clock cost is still about +140…+160 ns over the floor on the best
//! interleaved rounds: the 100 ns budget is NOT met. The rest is not instructions; measured:
//! two clock reads ~39 ns, a ring beyond the caches +30–50 ns; not isolated (likely): locked
//! instructions, the transfer of each ring slot's cache line to the drain thread's core, and
//! the drain thread taking CPU from the request loop on 2 cores. Meeting the budget needs a
//! structural change: per-thread record batches pushed to the ring in blocks (one CAS and
//! one line transfer per batch, not per request), and no per-request `Arc` (e.g. a
//! process-lifetime `&'static` handle for the hot counters).

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

/// Ring capacity of the measured layers: `ROUTE_LAYER_RING` or 2^16 (see the header).
fn ring_capacity() -> usize {
    std::env::var("ROUTE_LAYER_RING")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 16)
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

/// Interleaved wall-clock mode (`ROUTE_LAYER_AB=rounds`): each round times 20000 requests of
/// every case back to back; prints each case's fastest round (ns/request). Taking the minimum
/// over interleaved rounds discards the rounds that other jobs on the machine slowed down.
fn ab_mode(rounds: u32) {
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
    let n = 20_000u32;
    let mut best = [f64::MAX; 3];
    for _ in 0..rounds {
        for (i, (_, router)) in cases.iter().enumerate() {
            let t = std::time::Instant::now();
            measured_requests(&rt, router, u64::from(n));
            best[i] = best[i].min(t.elapsed().as_nanos() as f64 / f64::from(n));
        }
    }
    for (i, (name, _)) in cases.iter().enumerate() {
        println!(
            "{name}: {:.0} ns/request (best of {rounds}), +{:.0} ns over the floor",
            best[i],
            best[i] - best[0]
        );
    }
    eprintln!(
        "ring drops: local {}, guard {}",
        local.dropped(),
        exported.dropped()
    );
    drop(guard);
}

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
