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

/// A provider whose histogram the test reads: (provider, reader).
fn sdk() -> (
    opentelemetry_sdk::metrics::SdkMeterProvider,
    Arc<opentelemetry_sdk::metrics::ManualReader>,
) {
    let reader = Arc::new(opentelemetry_sdk::metrics::ManualReader::builder().build());
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(crate::export::SharedReader(Arc::clone(&reader)))
        .build();
    (provider, reader)
}

/// `http.server.request.duration` points of one collection: (attributes `k=v` sorted,
/// bucket counts, count, sum, min, max).
type Point = (Vec<String>, Vec<u64>, u64, f64, Option<f64>, Option<f64>);

fn duration_points(reader: &opentelemetry_sdk::metrics::ManualReader) -> Vec<Point> {
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
    use opentelemetry_sdk::metrics::reader::MetricReader;
    let mut rm = ResourceMetrics::default();
    reader.collect(&mut rm).expect("collect");
    let mut out = Vec::new();
    for scope in rm.scope_metrics() {
        for m in scope.metrics() {
            if m.name() != "http.server.request.duration" {
                continue;
            }
            let AggregatedMetrics::F64(MetricData::Histogram(h)) = m.data() else {
                panic!("not an f64 histogram");
            };
            for p in h.data_points() {
                let mut attrs: Vec<String> = p
                    .attributes()
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect();
                attrs.sort();
                out.push((
                    attrs,
                    p.bucket_counts().collect(),
                    p.count(),
                    p.sum(),
                    p.min(),
                    p.max(),
                ));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Durations spread over every bucket, the overflow one included (ns): 1 ms to ~20 s, in
/// a shuffled order.
fn spread_ns(n: u64) -> Vec<u64> {
    (0..n)
        .map(|i| (1e6 * 1.02f64.powi((i * 37 % 520) as i32)) as u64)
        .collect()
}

fn counts_of(durs: &[u64]) -> [u64; bins::BUCKETS] {
    let mut c = [0; bins::BUCKETS];
    for &d in durs {
        c[bucket_of_ns(d)] += 1;
    }
    c
}

#[test]
fn replayed_values_keep_every_bucket_the_sum_the_min_and_the_max() {
    let durs = spread_ns(600);
    let counts = counts_of(&durs);
    assert!(
        counts.iter().all(|&c| c > 0),
        "every bucket used: {counts:?}"
    );
    let sum: f64 = durs.iter().map(|&d| d as f64 / 1e9).sum();
    let min = *durs.iter().min().expect("min") as f64 / 1e9;
    let max = *durs.iter().max().expect("max") as f64 / 1e9;
    let mut got = [0u64; bins::BUCKETS];
    let mut values = Vec::new();
    let (replayed, largest) = fold::replay(&counts, sum, Some(min), Some(max), |v, n| {
        // The SDK's own bucket rule: the first bound the value does not exceed.
        let b = DURATION_BUCKETS
            .iter()
            .position(|bound| v <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        got[b] += n;
        values.push((v, n));
    });
    assert_eq!(got, counts);
    assert!((replayed - sum).abs() < 1e-9 * sum, "{replayed} vs {sum}");
    let total: f64 = values.iter().map(|(v, n)| v * *n as f64).sum();
    assert!((total - sum).abs() < 1e-9 * sum);
    assert_eq!(largest, max);
    let lo = values.iter().map(|v| v.0).fold(f64::INFINITY, f64::min);
    assert_eq!(lo, min);
}

#[test]
fn a_sum_the_buckets_cannot_hold_is_made_up_by_the_next_replay() {
    // Two requests in the 5 ms bucket said to sum to 20 ms (a read that caught a sum before
    // its count): the replay stays in the bucket, and reports what it replayed.
    let mut counts = [0; bins::BUCKETS];
    counts[0] = 2;
    let mut values = Vec::new();
    let (replayed, _) = fold::replay(&counts, 0.020, None, None, |v, n| values.push((v, n)));
    assert_eq!(values, vec![(0.005, 2)]);
    assert!((replayed - 0.010).abs() < 1e-12);
    // No min or max known, the overflow bucket: values sit just above its lower bound.
    let mut counts = [0; bins::BUCKETS];
    counts[bins::BUCKETS - 1] = 1;
    let mut values = Vec::new();
    fold::replay(&counts, 12.0, None, None, |v, n| values.push((v, n)));
    assert_eq!(values.len(), 1);
    assert!(values[0].0 > 10.0 && values[0].0 < 10.001, "{values:?}");
}

#[tokio::test]
async fn the_sdk_histogram_matches_the_requests_exactly() {
    let (provider, reader) = sdk();
    let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "test");
    let m = RouteMetrics::builder().meter(meter).build();
    let app = Router::new()
        .route("/x", get(|| async { "x" }))
        .route(
            "/fail",
            get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "x") }),
        )
        .layer(m.layer());
    for _ in 0..40 {
        assert_eq!(get_path(&app, "/x").await, 200);
    }
    assert_eq!(get_path(&app, "/fail").await, 500);
    let first = duration_points(&reader);
    assert_eq!(first.len(), 2, "{first:?}");
    let (attrs, buckets, count, sum, min, max) = &first[1];
    assert!(attrs.contains(&"http.route=/x".to_owned()), "{attrs:?}");
    assert_eq!(*count, 40);
    assert_eq!(buckets.iter().sum::<u64>(), 40);
    let x = m.route("/x").expect("/x");
    assert_eq!(x.total_requests, 40);
    // The SDK's max is the route window's max (both the true largest duration).
    assert_eq!(*max, Some(x.latency_max.as_secs_f64()));
    let (min, sum) = (min.expect("min"), *sum);
    assert!(
        min > 0.0 && min <= sum / 40.0,
        "min {min} mean {}",
        sum / 40.0
    );
    let mean = x.latency_mean.as_secs_f64();
    assert!((sum / 40.0 - mean).abs() < 1e-6, "{sum} vs mean {mean}");
    let (fail_attrs, _, fail_count, ..) = &first[0];
    assert!(
        fail_attrs.contains(&"error.type=500".to_owned()),
        "{fail_attrs:?}"
    );
    assert_eq!(*fail_count, 1);
    // Cumulative: a second collection with no new requests reports the same, and new ones
    // add up.
    assert_eq!(duration_points(&reader), first);
    for _ in 0..10 {
        assert_eq!(get_path(&app, "/x").await, 200);
    }
    let second = duration_points(&reader);
    assert_eq!(second[1].2, 50);
    assert!(second[1].3 > sum);
}

/// A thread that serves `n` requests to `GET /t` through `m`'s layer on its own runtime.
fn serve_on_a_thread(m: &RouteMetrics, n: usize) -> std::thread::JoinHandle<()> {
    let m = m.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let app = Router::new()
            .route("/t", get(|| async { "t" }))
            .layer(m.layer());
        rt.block_on(async {
            for _ in 0..n {
                assert_eq!(get_path(&app, "/t").await, 200);
            }
        });
    })
}

#[test]
fn requests_on_many_threads_are_all_counted() {
    let m = RouteMetrics::builder().build();
    let threads: Vec<_> = (0..4).map(|_| serve_on_a_thread(&m, 500)).collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let t = m.route("/t").expect("/t");
    assert_eq!((t.total_requests, t.requests, t.polls), (2000, 2000, 2000));
    assert_eq!(m.active_requests(), 0);
    assert_eq!(m.dropped(), 0);
}

#[test]
fn a_thread_slot_outlives_its_thread_and_is_reused() {
    let m = RouteMetrics::builder().build();
    // Threads one after another: each ends before the next starts, so they can take the
    // same slot, and no count of the earlier one is lost to the later.
    for _ in 0..3 {
        serve_on_a_thread(&m, 100).join().expect("thread");
    }
    assert_eq!(m.route("/t").expect("/t").total_requests, 300);
}

#[tokio::test]
async fn a_full_series_table_drops_and_counts_every_request_it_cannot_hold() {
    // One route, 100 status codes: 100 series, on one thread whose table holds 64.
    let m = RouteMetrics::builder().max_routes(1).build();
    let app = Router::new()
        .route(
            "/s/{code}",
            get(
                |axum::extract::Path(code): axum::extract::Path<u16>| async move {
                    axum::http::StatusCode::from_u16(code).expect("status")
                },
            ),
        )
        .layer(m.layer());
    for code in 200..300u16 {
        assert_eq!(get_path(&app, &format!("/s/{code}")).await, code);
    }
    let recorded = m.route("/s/{code}").expect("route").total_requests;
    assert_eq!((recorded, m.dropped()), (64, 36));
    assert_eq!(m.active_requests(), 0);
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
    let fast = [3_000_000u64; 99]; // 3 ms -> bucket 5 ms
    let ok = bins::Totals {
        buckets: counts_of(&fast),
        sum_ns: fast.iter().sum(),
        ..Default::default()
    };
    w.record(5, &ok, 3_000_000, false);
    let slow = bins::Totals {
        buckets: counts_of(&[400_000_000]), // 400 ms -> bucket 0.5 s
        sum_ns: 400_000_000,
        ..Default::default()
    };
    w.record(5, &slow, 400_000_000, true);
    let a = w.aggregate(5);
    assert_eq!((a.count, a.errors), (100, 1));
    assert_eq!(a.quantile(0.5), Duration::from_millis(5));
    assert_eq!(a.quantile(0.99), Duration::from_millis(5));
    assert_eq!(a.quantile(1.0), Duration::from_millis(400)); // clamped to the max
    assert_eq!(w.aggregate(5 + WINDOW_BUCKETS as u64).count, 0);
}
