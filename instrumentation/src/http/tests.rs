use super::*;
use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use std::sync::Arc;
use tower::ServiceExt;

async fn get_path(app: &Router, path: &str) -> u16 {
    app.clone()
        .oneshot(Request::get(path).body(Body::empty()).expect("request"))
        .await
        .expect("infallible")
        .status()
        .as_u16()
}

#[test]
fn ring_push_pop_and_full() {
    let r = Ring::new(4);
    for i in 0..4 {
        assert!(r.push([i, i * 10, i, i]));
    }
    assert!(!r.push([9; 4]));
    for i in 0..4 {
        assert_eq!(r.pop(), Some([i, i * 10, i, i]));
    }
    assert_eq!(r.pop(), None);
    assert!(r.push([5, 50, 0, 0]));
    assert_eq!(r.pop(), Some([5, 50, 0, 0]));
}

#[tokio::test]
async fn full_rings_drop_and_count_every_record_they_cannot_hold() {
    // Spill ring of 2: past the 1024-record hot ring and the spill ring, records are
    // dropped until a drain; each request is then either recorded or counted as dropped.
    let m = RouteMetrics::builder().ring_capacity(2).build();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(m.layer());
    let n = 3000u64;
    for _ in 0..n {
        assert_eq!(get_path(&app, "/").await, 200);
    }
    let recorded: u64 = m.snapshot().iter().map(|s| s.total_requests).sum();
    assert_eq!(recorded + m.dropped(), n, "recorded {recorded}");
    assert!(recorded >= 1024 + 2, "recorded {recorded}");
    assert_eq!(m.active_requests(), 0);
}

#[test]
fn drain_period_follows_the_request_rate() {
    let ms = Duration::from_millis;
    assert_eq!(next_drain_pause(0, ms(100)), DRAIN_IDLE);
    // 120k requests/s: 512 records arrive in ~4.3 ms.
    assert_eq!(
        next_drain_pause(12_000, ms(100)),
        Duration::from_nanos(4_266_666)
    );
    // Faster than the floor allows, and slower than the ceiling.
    assert_eq!(next_drain_pause(1_000_000, ms(100)), DRAIN_BUSY);
    assert_eq!(next_drain_pause(10, ms(250)), DRAIN_EVERY);
    assert_eq!(next_drain_pause(usize::MAX, ms(250)), DRAIN_BUSY);
}

#[test]
fn ring_concurrent_producers_lose_nothing() {
    let r = Arc::new(Ring::new(1 << 12));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                for i in 0..500u64 {
                    assert!(r.push([t, i, 0, 0]));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("producer");
    }
    let mut per = [0u64; 4];
    while let Some([t, ..]) = r.pop() {
        per[t as usize] += 1;
    }
    assert_eq!(per, [500; 4]);
}

#[tokio::test]
async fn routes_statuses_unmatched_and_overflow() {
    let m = RouteMetrics::builder().max_routes(2).build();
    let app = Router::new()
        .route("/a/{id}", get(|| async { "a" }))
        .route("/b", get(|| async { "b" }))
        .route("/c", get(|| async { "c" }))
        .route(
            "/fail",
            get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "x") }),
        )
        .layer(m.layer());
    assert_eq!(get_path(&app, "/a/1").await, 200);
    assert_eq!(get_path(&app, "/a/2").await, 200);
    assert_eq!(get_path(&app, "/b").await, 200);
    assert_eq!(get_path(&app, "/c").await, 200); // third route: overflow
    assert_eq!(get_path(&app, "/fail").await, 500); // overflow too
    assert_eq!(get_path(&app, "/nope").await, 404);
    let a = m.route("/a/{id}").expect("templated route");
    assert_eq!((a.requests, a.errors), (2, 0));
    assert_eq!(a.polls, 2);
    assert_eq!(m.route("/b").expect("b").requests, 1);
    let o = m.route(OVERFLOW_ROUTE).expect("overflow series");
    assert_eq!((o.requests, o.errors), (2, 1));
    assert!((o.error_ratio - 0.5).abs() < 1e-9);
    assert_eq!(m.route(UNMATCHED_ROUTE).expect("unmatched").requests, 1);
    assert!(m.route("/c").is_none());
    assert_eq!(m.active_requests(), 0);
    assert_eq!(m.dropped(), 0);
}

#[tokio::test]
async fn routers_built_apart_share_series_and_the_pointer_cache_stays_exact() {
    // Two routers built separately hold different `Arc<str>` for the same template; the
    // table keeps the first one, the cache maps addresses it holds, and every template
    // still lands on its own series.
    let m = RouteMetrics::builder().build();
    let build = || {
        Router::new()
            .route("/items/{id}", get(|| async { "i" }))
            .route("/items/{id}/tags", get(|| async { "t" }))
            .route("/users/{id}", get(|| async { "u" }))
            .layer(m.layer())
            .with_state(())
    };
    let (a, b) = (build(), build());
    for _ in 0..3 {
        assert_eq!(get_path(&a, "/items/1").await, 200);
        assert_eq!(get_path(&b, "/items/2").await, 200);
        assert_eq!(get_path(&a, "/items/1/tags").await, 200);
        assert_eq!(get_path(&b, "/users/7").await, 200);
    }
    drop(a); // its templates may be freed; b's still resolve by comparison
    assert_eq!(get_path(&b, "/items/3").await, 200);
    assert_eq!(m.route("/items/{id}").expect("items").requests, 7);
    assert_eq!(m.route("/items/{id}/tags").expect("tags").requests, 3);
    assert_eq!(m.route("/users/{id}").expect("users").requests, 3);
    assert_eq!(m.active_requests(), 0);
}

#[tokio::test]
async fn route_layer_counts_matched_routes_only() {
    let m = RouteMetrics::builder().build();
    let app = Router::new()
        .route("/x", get(|| async { "x" }).post(|| async { "posted" }))
        .route_layer(m.layer());
    assert_eq!(get_path(&app, "/x").await, 200);
    assert_eq!(get_path(&app, "/nope").await, 404);
    let post = app
        .clone()
        .oneshot(Request::post("/x").body(Body::empty()).expect("req"))
        .await
        .expect("infallible");
    assert_eq!(post.status(), 200);
    let x = m.route("/x").expect("x");
    assert_eq!(x.requests, 2);
    assert_eq!(x.total_requests, 2);
    assert!(
        m.route(UNMATCHED_ROUTE).is_none(),
        "route_layer skips the fallback"
    );
}

#[tokio::test]
async fn cancelled_requests_count_as_errors_and_release_active() {
    let m = RouteMetrics::builder().build();
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        )
        .layer(m.layer());
    let fut = app.oneshot(Request::get("/slow").body(Body::empty()).expect("req"));
    let r = tokio::time::timeout(Duration::from_millis(20), fut).await;
    assert!(r.is_err(), "timed out");
    assert_eq!(m.active_requests(), 0);
    let s = m.route("/slow").expect("slow");
    assert_eq!((s.requests, s.errors), (1, 1));
}

#[test]
fn task_monitors_time_wake_to_poll_per_route() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let m = RouteMetrics::builder().task_monitors(true).build();
    let app = Router::new()
        .route(
            "/wait",
            get(|| async {
                // Woken from another thread while the worker is blocked for 50 ms.
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(5));
                    let _ = tx.send(());
                });
                let blocker = tokio::spawn(async {
                    std::thread::sleep(Duration::from_millis(50));
                });
                let _ = rx.await;
                let _ = blocker.await;
                "ok"
            }),
        )
        .layer(m.layer());
    let status = rt.block_on(async {
        tokio::spawn(app.oneshot(Request::get("/wait").body(Body::empty()).expect("req")))
            .await
            .expect("join")
            .expect("infallible")
            .status()
    });
    assert_eq!(status, 200);
    let s = m.route("/wait").expect("route");
    assert!(s.scheduled > Duration::ZERO, "{s:?}");
    assert!(s.polls >= 2, "{s:?}");
}

/// Counts the `http.request` spans a subscriber is asked to create.
#[derive(Clone, Default)]
struct SpanCount(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanCount {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == "http.request" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test]
async fn the_request_span_is_built_only_under_a_debug_filter() {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;
    let m = RouteMetrics::builder().build();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(m.layer());
    for (level, want) in [(LevelFilter::INFO, 0), (LevelFilter::DEBUG, 1)] {
        let count = SpanCount::default();
        let sub = tracing_subscriber::registry().with(count.clone().with_filter(level));
        let _default = tracing::subscriber::set_default(sub);
        assert_eq!(get_path(&app, "/").await, 200);
        assert_eq!(count.0.load(Ordering::SeqCst), want, "filter {level}");
    }
    assert_eq!(m.route("/").expect("/").total_requests, 2);
}

#[test]
fn window_quantiles_and_expiry() {
    let mut w = RouteWindow::default();
    for _ in 0..99 {
        w.record(5, 3_000_000, false); // 3 ms -> bucket 5 ms
    }
    w.record(5, 400_000_000, true); // 400 ms -> bucket 0.5 s
    let a = w.aggregate(5);
    assert_eq!((a.count, a.errors), (100, 1));
    assert_eq!(a.quantile(0.5), Duration::from_millis(5));
    assert_eq!(a.quantile(0.99), Duration::from_millis(5));
    assert_eq!(a.quantile(1.0), Duration::from_millis(400)); // clamped to the max
    assert_eq!(w.aggregate(5 + WINDOW_BUCKETS as u64).count, 0);
}
