//! `guard.route_metrics()` hands out one shared set of route metrics: calling it for every
//! router (per test, per tenant) neither grows memory nor adds series to the export.

mod capture;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use loopwatch::heap::CountingAllocator;
use tower::ServiceExt;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::system();

const CALLS: usize = 2000;
const MIB: u64 = 1 << 20;

/// Resident set size of this process, bytes (`VmRSS` of /proc/self/status).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS");
    kb * 1024
}

fn router(routes: &loopwatch::http::RouteMetrics) -> Router {
    Router::new()
        .route("/x", get(|| async { "x" }))
        .layer(routes.layer())
}

async fn get_x(app: &Router) {
    let resp = app
        .clone()
        .oneshot(Request::get("/x").body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), 200);
}

#[test]
fn repeated_route_metrics_calls_share_one_state_and_one_series() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (provider, capture) = capture::provider();
    let guard = rt
        .block_on(async {
            loopwatch::Loopwatch::builder()
                .meter_provider(provider.clone())
                .export_interval(std::time::Duration::from_secs(60))
                .start()
        })
        .expect("start");

    let first = guard.route_metrics();
    let first_app = router(&first);
    rt.block_on(async {
        for _ in 0..3 {
            get_x(&first_app).await;
        }
    });

    let heap_before = loopwatch::heap::counted_heap_bytes().expect("CountingAllocator installed");
    let rss_before = rss_bytes();
    let mut last = None;
    for _ in 0..CALLS {
        // A router per call, as a test suite or a per-tenant setup builds them.
        let m = guard.route_metrics();
        drop(router(&m));
        last = Some(m);
    }
    let heap_growth = loopwatch::heap::counted_heap_bytes()
        .expect("counted")
        .saturating_sub(heap_before);
    let rss_growth = rss_bytes().saturating_sub(rss_before);
    assert!(
        heap_growth < MIB,
        "{CALLS} route_metrics() calls grew the heap by {heap_growth} bytes"
    );
    assert!(
        rss_growth < MIB,
        "{CALLS} route_metrics() calls grew RSS by {rss_growth} bytes"
    );

    // The last handle records into the same state as the first.
    let last = last.expect("called");
    let last_app = router(&last);
    rt.block_on(async {
        get_x(&last_app).await;
        get_x(&last_app).await;
    });
    assert_eq!(first.route("/x").expect("/x").total_requests, 5);
    assert_eq!(last.route("/x").expect("/x").total_requests, 5);

    // One exported series per route, carrying every request.
    provider.force_flush().expect("force_flush");
    let points = capture.0.lock().expect("capture").clone();
    let polls: Vec<f64> = points
        .iter()
        .filter(|(name, attrs, _)| {
            name == "loopwatch.http.route.polls" && attrs.iter().any(|a| a == "http.route=/x")
        })
        .map(|p| p.2)
        .collect();
    assert_eq!(polls, vec![5.0], "points: {points:?}");
    let active: Vec<_> = points
        .iter()
        .filter(|(name, _, _)| name == "http.server.active_requests")
        .collect();
    assert_eq!(active.len(), 1, "active_requests points: {active:?}");
    drop(guard);
}
