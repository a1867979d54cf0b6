//! The public handle: [`RouteMetrics`] and its builder, and the instruments registered on the
//! meter.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{AsyncInstrument, Meter};

use crate::observable::{Observed as _, Spec};
use crate::shed::Pressure;

use super::*;

/// Per-route statistics: sliding window values plus cumulative task timing. Routes appear once
/// a request on them has completed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RouteStats {
    /// `http.route` value: the route template, [`UNMATCHED_ROUTE`] or [`OVERFLOW_ROUTE`].
    pub route: String,
    /// Requests completed in the sliding window.
    pub requests: u64,
    /// Of those, errors (5xx, service errors, cancelled requests).
    pub errors: u64,
    /// `errors / requests` over the window, 0 when there were none.
    pub error_ratio: f64,
    /// Mean request duration over the window.
    pub latency_mean: Duration,
    /// Median request duration over the window (upper bound of its semconv bucket, at most the max).
    pub latency_p50: Duration,
    /// 99th percentile request duration over the window (bucket upper bound, at most the max).
    pub latency_p99: Duration,
    /// Largest request duration over the window.
    pub latency_max: Duration,
    /// Requests completed since start (collected so far).
    pub total_requests: u64,
    /// Polls of this route's request futures since start.
    pub polls: u64,
    /// Time spent inside those polls since start.
    pub poll_time: Duration,
    /// Polls that took at least the slow-poll threshold, since start.
    pub slow_polls: u64,
    /// Runtime lateness (scheduling delay measured by the probe) during this route's requests,
    /// summed since start: time they spent waiting behind a blocked runtime. Zero without a
    /// [`Pressure`] from a running loopwatch.
    pub waited: Duration,
    /// Wake→poll scheduling time of this route's request futures since start (tokio-metrics);
    /// zero unless [`RouteMetricsBuilder::task_monitors`] is on.
    pub scheduled: Duration,
}

/// Builder of [`RouteMetrics`].
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RouteMetricsBuilder {
    pub(super) max_routes: Option<usize>,
    pub(super) window: Option<Duration>,
    pub(super) slow_poll_threshold: Option<Duration>,
    pub(super) wait_event_threshold: Option<Duration>,
    pub(super) trace_spans: Option<bool>,
    pub(super) task_monitors: Option<bool>,
    pub(super) meter: Option<Meter>,
    pub(super) pressure: Option<Pressure>,
}

impl RouteMetricsBuilder {
    /// Cap on distinct routes; default [`RouteMetricsBuilder::DEFAULT_MAX_ROUTES`] (at least 1).
    pub fn max_routes(mut self, n: usize) -> Self {
        self.max_routes = Some(n);
        self
    }
    /// Sliding window length; default [`RouteMetricsBuilder::DEFAULT_ROUTE_WINDOW`] (at least 10 ms).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = Some(window);
        self
    }
    /// Slow-poll threshold; default [`RouteMetricsBuilder::DEFAULT_SLOW_POLL_THRESHOLD`].
    pub fn slow_poll_threshold(mut self, d: Duration) -> Self {
        self.slow_poll_threshold = Some(d);
        self
    }
    /// Lateness from which a request logs a warning; default [`RouteMetricsBuilder::DEFAULT_WAIT_EVENT_THRESHOLD`].
    pub fn wait_event_threshold(mut self, d: Duration) -> Self {
        self.wait_event_threshold = Some(d);
        self
    }
    /// Opt-in: wrap each request future in its route's `tokio_metrics::TaskMonitor`, adding
    /// wake→poll scheduling time per route ([`RouteStats::scheduled`],
    /// `loopwatch.http.route.scheduled.duration`). Costs tokio-metrics' per-task allocation on
    /// every request, so it is off by default. Wakes that go through a blocked runtime's own
    /// driver (timers, sockets on a `current_thread` runtime) happen only after the block, so
    /// they are not seen here; [`RouteStats::waited`] (from the probe) covers that case.
    pub fn task_monitors(mut self, on: bool) -> Self {
        self.task_monitors = Some(on);
        self
    }
    /// Whether the layer opens an `http.request` `tracing` span per request; default true. The
    /// span is at DEBUG level (target `loopwatch::http`), so it is built only when a
    /// subscriber enables that, e.g. `RUST_LOG=info,loopwatch::http=debug` for OTLP traces;
    /// under a plain `info` filter it costs one level check per request.
    pub fn trace_spans(mut self, on: bool) -> Self {
        self.trace_spans = Some(on);
        self
    }
    /// Meter to export on; [`crate::LoopwatchGuard::route_metrics`] sets loopwatch's own.
    pub fn meter(mut self, meter: Meter) -> Self {
        self.meter = Some(meter);
        self
    }
    /// Pressure source for per-request runtime lateness; set by
    /// [`crate::LoopwatchGuard::route_metrics`].
    pub fn pressure(mut self, pressure: Pressure) -> Self {
        self.pressure = Some(pressure);
        self
    }

    /// Builds the metrics and registers their instruments on the meter (if any).
    ///
    /// The state is one per build (a few KiB, plus a table of ~47 KiB with the default route
    /// cap for each thread that serves a request): build one per service and clone it, not one
    /// per router, connection or request.
    /// With a meter, the instruments' callbacks keep the state until the provider shuts down.
    pub fn build(self) -> RouteMetrics {
        let max_routes = self
            .max_routes
            .unwrap_or(RouteMetricsBuilder::DEFAULT_MAX_ROUTES)
            .clamp(1, 1 << 14);
        let table_size = (max_routes * 2).next_power_of_two();
        let window = self
            .window
            .unwrap_or(RouteMetricsBuilder::DEFAULT_ROUTE_WINDOW)
            .max(Duration::from_millis(10));
        let histogram = self.meter.as_ref().map(|m| {
            m.f64_histogram("http.server.request.duration")
                .with_description("Duration of HTTP server requests")
                .with_unit("s")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build()
        });
        let inner = Arc::new(Inner {
            table: (0..table_size).map(|_| OnceLock::new()).collect(),
            ptr_cache: (0..PTR_CACHE).map(|_| AtomicU64::new(0)).collect(),
            table_mask: table_size - 1,
            used: AtomicUsize::new(0),
            max_routes,
            unrecorded_by_method: Default::default(),
            bins: Bins::new(series_capacity(max_routes)),
            fold: Mutex::new(FoldState::new(
                (nanos(window) / WINDOW_BUCKETS as u64).max(1),
            )),
            histogram,
            pressure: self.pressure,
            slow_poll_ns: nanos(
                self.slow_poll_threshold
                    .unwrap_or(RouteMetricsBuilder::DEFAULT_SLOW_POLL_THRESHOLD),
            ),
            wait_event_ns: nanos(
                self.wait_event_threshold
                    .unwrap_or(RouteMetricsBuilder::DEFAULT_WAIT_EVENT_THRESHOLD),
            ),
            trace_spans: self.trace_spans.unwrap_or(true),
            monitors: self
                .task_monitors
                .unwrap_or(false)
                .then(|| (0..table_size + 2).map(|_| OnceLock::new()).collect()),
            base: Instant::now(),
            // Calibrated once per process (bounded by quanta at 200 ms); `start` begins it on a
            // thread of its own (see `calibrate_clock`), so this waits for the rest at most.
            clock: quanta::Clock::new(),
        });
        if let Some(meter) = &self.meter {
            register(meter, &inner);
        }
        RouteMetrics { inner }
    }
}

/// Starts the per-process calibration of the request clock (the TSC against the OS clock:
/// 0.5 ms to 200 ms of busy looping) on a short-lived thread, so that a [`RouteMetrics`] built
/// later does not run it on the caller's thread, which is often the watched runtime's.
pub(crate) fn calibrate_clock() {
    let spawned = std::thread::Builder::new()
        .name("loopwatch-clock".into())
        .spawn(|| {
            let _calibrated = quanta::Clock::new();
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "loopwatch: clock calibration runs at the first RouteMetrics");
    }
}

/// Series entries of each thread's table: four per route (method, status and error type
/// vary), at least 64.
fn series_capacity(max_routes: usize) -> usize {
    (max_routes.saturating_add(2) * 4).clamp(64, 1 << 16)
}

/// Registers the observable instruments. Callbacks hold the metrics (so the final export,
/// after the server and its layers are gone, still collects and reports them). The SDK runs
/// them before it reads its histograms, so their collection feeds this export's histogram.
pub(super) fn register(meter: &Meter, inner: &Arc<Inner>) {
    let w = Arc::clone(inner);
    let _ = meter
        .i64_observable_up_down_counter("http.server.active_requests")
        .with_description("Number of active HTTP server requests")
        .with_unit("{request}")
        .with_callback(move |obs| {
            let active = w.active_by_method();
            for (i, m) in METHODS.iter().enumerate() {
                let v = active[i];
                if v != 0 || i == 0 {
                    obs.observe(v, &[KeyValue::new("http.request.method", *m)]);
                }
            }
        })
        .build();
    type Read = fn(&RouteStats) -> f64;
    let gauges: [(&'static str, &'static str, &'static str, Read); 3] = [
        (
            "loopwatch.http.route.error_ratio",
            "Share of requests that failed (5xx, errors, cancelled) over the route's sliding window",
            "1",
            |s| s.error_ratio,
        ),
        (
            "loopwatch.http.route.latency.p50",
            "Median request duration over the route's sliding window (bucket upper bound)",
            "s",
            |s| s.latency_p50.as_secs_f64(),
        ),
        (
            "loopwatch.http.route.latency.p99",
            "99th percentile request duration over the route's sliding window (bucket upper bound)",
            "s",
            |s| s.latency_p99.as_secs_f64(),
        ),
    ];
    let counters: [(&'static str, &'static str, &'static str, Read); 5] = [
        (
            "loopwatch.http.route.polls",
            "Polls of the route's request futures since start",
            "{poll}",
            |s| s.polls as f64,
        ),
        (
            "loopwatch.http.route.poll.duration",
            "Time spent polling the route's request futures since start",
            "s",
            |s| s.poll_time.as_secs_f64(),
        ),
        (
            "loopwatch.http.route.slow_polls",
            "Polls of the route's request futures at or over the slow-poll threshold",
            "{poll}",
            |s| s.slow_polls as f64,
        ),
        (
            "loopwatch.http.route.waited.duration",
            "Scheduling delay measured by the probe while the route's requests were in progress",
            "s",
            |s| s.waited.as_secs_f64(),
        ),
        (
            "loopwatch.http.route.scheduled.duration",
            "Wake-to-poll time of the route's request futures (only with task monitors on)",
            "s",
            |s| s.scheduled.as_secs_f64(),
        ),
    ];
    let per_route = |read: Read| {
        let inner = Arc::clone(inner);
        move |obs: &dyn AsyncInstrument<f64>| {
            for s in inner.stats() {
                obs.observe(read(&s), &[KeyValue::new("http.route", s.route.clone())]);
            }
        }
    };
    let specs = gauges
        .map(|(name, desc, unit, read)| (Spec::gauge(name, desc, unit), read))
        .into_iter()
        .chain(counters.map(|(name, desc, unit, read)| (Spec::counter(name, desc, unit), read)));
    for (spec, read) in specs {
        f64::register(meter, spec, per_route(read));
    }
    let w = Arc::clone(inner);
    let spec = Spec::counter(
        "loopwatch.http.dropped",
        "Requests not recorded because their thread's series table was full",
        "{record}",
    );
    u64::register(meter, spec, move |obs| {
        obs.observe(w.dropped(), &[]);
    });
}

/// Per-route HTTP metrics shared by every [`RouteLayer`] made from it (cheap to clone: a
/// reference count). The state is allocated once by [`RouteMetricsBuilder::build`] and freed
/// when the last clone, layer, in-flight request and instrument callback holding it is gone.
///
/// ```
/// use axum::{Router, routing::get};
/// let routes = loopwatch::http::RouteMetrics::builder().build(); // or guard.route_metrics()
/// let app: Router = Router::new()
///     .route("/items/{id}", get(|| async { "item" }))
///     .layer(routes.layer());
/// for s in routes.snapshot() {
///     println!("{} error ratio {:.3} p99 {:?}", s.route, s.error_ratio, s.latency_p99);
/// }
/// ```
#[derive(Clone)]
pub struct RouteMetrics {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("max_routes", &self.inner.max_routes)
            .field("active", &self.active_requests())
            .finish()
    }
}

impl RouteMetrics {
    /// A builder with the defaults (no meter: local statistics only).
    pub fn builder() -> RouteMetricsBuilder {
        RouteMetricsBuilder::default()
    }

    /// A tower layer recording into these metrics; use with axum's `Router::layer` (unmatched
    /// requests counted as [`UNMATCHED_ROUTE`]) or `Router::route_layer` (matched only).
    pub fn layer(&self) -> RouteLayer {
        RouteLayer {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Per-route statistics (collects the threads' bins first). Routes with no request in the
    /// window and none in progress are left out unless they were ever polled.
    pub fn snapshot(&self) -> Vec<RouteStats> {
        self.inner.stats()
    }

    /// Statistics of one route (`http.route` value).
    pub fn route(&self, route: &str) -> Option<RouteStats> {
        self.snapshot().into_iter().find(|s| s.route == route)
    }

    /// Requests in progress, all routes.
    pub fn active_requests(&self) -> i64 {
        self.inner.active_by_method().iter().sum()
    }

    /// Requests not recorded because their thread's series table was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped()
    }
}
