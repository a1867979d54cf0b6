//! Per-route HTTP metrics: a tower layer for axum, labelled by the matched route template.
//!
//! Hot path (per request): a route lookup (by the address of axum's shared template string in
//! a small direct-mapped cache; else a constant-time hash into a fixed table and a string
//! compare), two clock reads per poll (the TSC through `quanta` where it is invariant: no
//! syscall), and a few plain stores into the calling thread's own bins ([`bins`]): requests
//! started by method, and per series (route, method, status, error type) the duration bucket,
//! sum, polls and times. The probe (runtime lateness) is read only for requests that needed
//! more than one poll: a request done in one poll spent no time outside it. With a probe, one
//! relaxed load tells whether the probe thread sleeps an idle tick (then one `unpark`, once per
//! quiet -> busy transition, the only syscall besides the clock). No lock, no allocation
//! (after a thread's first request and a series' first on that thread), no hop to another
//! thread. The collection ([`fold`]: every export, and every snapshot) sums the bins into the
//! SDK histogram and the per-route sliding windows. A request whose thread's table has no room
//! for a new series is dropped and counted (`loopwatch.http.dropped`). The state is reference
//! counted: it is freed once the last [`RouteMetrics`], layer, in-flight request and registered
//! instrument callback is gone.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::MatchedPath;
use axum::http::Method;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use tokio_metrics::TaskMonitor;

use crate::shed::Pressure;

mod bins;
mod fold;
mod layer;
mod metrics;
mod window;

pub use layer::{RouteLayer, RouteService};

/// The route layer's response future.
pub mod future {
    pub use super::layer::RouteFuture;
}
use bins::Bins;
use fold::FoldState;
pub(crate) use metrics::calibrate_clock;
pub use metrics::{RouteMetrics, RouteMetricsBuilder, RouteStats};
use window::*;

impl RouteMetricsBuilder {
    /// Default cap on distinct `http.route` values; later routes share [`OVERFLOW_ROUTE`].
    pub const DEFAULT_MAX_ROUTES: usize = 64;
    /// Default length of the per-route sliding window (error ratio, latency): 10 s, in 10 buckets.
    pub const DEFAULT_ROUTE_WINDOW: Duration = Duration::from_secs(10);
    /// Default poll duration from which a poll of a request future counts as slow: 1 ms.
    pub const DEFAULT_SLOW_POLL_THRESHOLD: Duration = Duration::from_millis(1);
    /// Default runtime lateness during a request from which the route layer logs a `tracing`
    /// warning on the request's span ("waited N ms behind a blocked runtime"): 100 ms.
    pub const DEFAULT_WAIT_EVENT_THRESHOLD: Duration = Duration::from_millis(100);
}

/// `http.route` of requests no route matched (no `MatchedPath`).
pub const UNMATCHED_ROUTE: &str = "(unmatched)";
/// `http.route` of routes past the [`RouteMetricsBuilder::DEFAULT_MAX_ROUTES`] cap.
pub const OVERFLOW_ROUTE: &str = "(overflow)";
/// Bucket boundaries of `http.server.request.duration`, seconds (OTel semantic conventions).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// [`DURATION_BUCKETS`] in nanoseconds, for the request path's integer compare (rounded to
/// the nanosecond: the bounds are whole microseconds).
const BOUNDS_NS: [u64; DURATION_BUCKETS.len()] = {
    let mut ns = [0; DURATION_BUCKETS.len()];
    let mut i = 0;
    while i < ns.len() {
        ns[i] = ((DURATION_BUCKETS[i] * 1e10) as u64 + 5) / 10;
        i += 1;
    }
    ns
};
const WINDOW_BUCKETS: usize = 10;
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
];
/// Record kinds (`error.type`).
const KIND_OK: u64 = 0;
const KIND_5XX: u64 = 1;
const KIND_SERVICE_ERROR: u64 = 2;
const KIND_CANCELLED: u64 = 3;
/// A response of the service's own load shedding ([`crate::shed::ShedLayer`]): not an error.
const KIND_SHED: u64 = 4;
/// `error.type` of a shed response; namespaced so another SDK's `"503"` never collides.
pub const SHED_ERROR_TYPE: &str = "loopwatch.shed";

fn method_code(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::CONNECT => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::PATCH => 8,
        _ => 9,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Route template hash for the table: length and three 8-byte words (start, middle, end),
/// multiplied once. Constant time whatever the template's length; collisions only cost a
/// further probe (every candidate is compared in full).
fn route_hash(s: &str) -> u64 {
    let b = s.as_bytes();
    let n = b.len();
    let word = |at: usize| -> u64 {
        b.get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let (a, m, z) = if n >= 8 {
        (word(0), word(n / 2 - 4), word(n - 8))
    } else {
        let short = b.iter().fold(0u64, |h, &c| (h << 8) | u64::from(c));
        (short, 0, 0)
    };
    let h =
        (a ^ m.rotate_left(21) ^ z.rotate_left(42) ^ n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

// Route table and per-route counters.

/// Packs the identity of a series: route (16 bits), method (4), status (12), kind (4).
fn series_id(route: usize, method: usize, status: u16, kind: u64) -> u64 {
    (route as u64 & 0xffff)
        | ((method as u64 & 0xf) << 16)
        | ((u64::from(status) & 0xfff) << 20)
        | ((kind & 0xf) << 32)
}

/// The duration bucket of `dur_ns` (as the SDK bins the value in seconds).
fn bucket_of_ns(dur_ns: u64) -> usize {
    BOUNDS_NS
        .iter()
        .position(|b| dur_ns <= *b)
        .unwrap_or(BOUNDS_NS.len())
}

/// Route ids: 0 = unmatched, 1 = overflow, 2.. = table slots.
const ID_UNMATCHED: usize = 0;
const ID_OVERFLOW: usize = 1;

/// A route table slot: unset, dead (past the cap), or (hash, template).
/// The slot keeps the request's `MatchedPath` (axum's shared `Arc<str>` for that route), so
/// the template's address stays valid and unique for the table's lifetime: the pointer cache
/// below may then identify a route by address alone.
type RouteSlot = OnceLock<Option<(u64, MatchedPath)>>;

/// Entries of the route pointer cache (direct-mapped, by template address).
const PTR_CACHE: usize = 128;

struct Inner {
    table: Box<[RouteSlot]>,
    table_mask: usize,
    /// `address << 16 | route id` of templates held by the table (0 = empty). axum hands every
    /// request of a route the same `Arc<str>`, so a hit skips hashing and comparing.
    ptr_cache: Box<[AtomicU64]>,
    used: AtomicUsize,
    max_routes: usize,
    /// Requests finished whose thread's table had no room for their series (rare path), by
    /// method.
    unrecorded_by_method: [AtomicU64; 10],
    bins: Bins,
    fold: Mutex<FoldState>,
    histogram: Option<Histogram<f64>>,
    pressure: Option<Pressure>,
    slow_poll_ns: u64,
    wait_event_ns: u64,
    trace_spans: bool,
    monitors: Option<Box<[OnceLock<TaskMonitor>]>>,
    base: Instant,
    /// Per-poll timestamps: the TSC where it is invariant (no syscall), else the OS
    /// monotonic clock. Raw readings, scaled to ns only for differences.
    clock: quanta::Clock,
}

impl Inner {
    /// Lock-free lookup; the first request of a route claims a slot (one allocation).
    fn route_id(&self, path: Option<&MatchedPath>) -> usize {
        let Some(path) = path else {
            return ID_UNMATCHED;
        };
        let route = path.as_str();
        let addr = route.as_ptr() as usize as u64;
        let cache = &self.ptr_cache[((addr >> 3) ^ (addr >> 11)) as usize % PTR_CACHE];
        let cached = cache.load(Ordering::Relaxed);
        if cached != 0 && cached >> 16 == addr {
            return (cached & 0xffff) as usize;
        }
        let id = self.route_id_slow(path);
        // Cache only addresses the table itself holds (never freed or reused while cached).
        let held = self
            .table
            .get(id.wrapping_sub(2))
            .and_then(|s| s.get())
            .and_then(|o| o.as_ref())
            .is_some_and(|(_, p)| p.as_str().as_ptr() == route.as_ptr());
        if held && addr >> 48 == 0 {
            cache.store(addr << 16 | id as u64, Ordering::Relaxed);
        }
        id
    }

    /// Lock-free lookup; the first request of a route claims a slot (keeps its `MatchedPath`).
    fn route_id_slow(&self, path: &MatchedPath) -> usize {
        let route = path.as_str();
        let hash = route_hash(route);
        for i in 0..=self.table_mask {
            let idx = (hash as usize).wrapping_add(i) & self.table_mask;
            let slot = self.table[idx].get_or_init(|| {
                if self.used.fetch_add(1, Ordering::AcqRel) < self.max_routes {
                    Some((hash, path.clone()))
                } else {
                    // Past the cap: this slot stays dead; lookups probe past it.
                    self.used.fetch_sub(1, Ordering::AcqRel);
                    None
                }
            });
            if let Some((h, name)) = slot
                && *h == hash
                && name.as_str() == route
            {
                return 2 + idx;
            }
        }
        ID_OVERFLOW
    }

    fn route_name(&self, id: usize) -> Option<&str> {
        match id {
            ID_UNMATCHED => Some(UNMATCHED_ROUTE),
            ID_OVERFLOW => Some(OVERFLOW_ROUTE),
            _ => self
                .table
                .get(id - 2)
                .and_then(|s| s.get())
                .and_then(|o| o.as_ref())
                .map(|(_, n)| n.as_str()),
        }
    }

    /// Requests in progress by method: started minus finished (collects first). The finished
    /// ones are read before the started: a finished request's start is visible by then (its
    /// store precedes the release of its finish), so no negative values.
    fn active_by_method(&self) -> [i64; 10] {
        let finished = self.fold().finished_by_method;
        let started = self.bins.started();
        std::array::from_fn(|i| {
            let done =
                finished[i].saturating_add(self.unrecorded_by_method[i].load(Ordering::Acquire));
            i64::try_from(started[i].saturating_sub(done)).unwrap_or(i64::MAX)
        })
    }

    /// Requests not recorded because their thread's table was full, all methods.
    fn dropped(&self) -> u64 {
        self.unrecorded_by_method
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .fold(0, u64::saturating_add)
    }

    fn now_ns(&self) -> u64 {
        nanos(self.base.elapsed())
    }

    /// The attributes of a series (packed id, see [`series_id`]).
    fn attributes(&self, series: u64) -> Vec<KeyValue> {
        let route = (series & 0xffff) as usize;
        let method = ((series >> 16) & 0xf) as usize;
        let status = ((series >> 20) & 0xfff) as u16;
        let kind = (series >> 32) & 0xf;
        let mut v = vec![
            KeyValue::new(
                "http.route",
                self.route_name(route).unwrap_or(OVERFLOW_ROUTE).to_owned(),
            ),
            KeyValue::new("http.request.method", METHODS[method.min(9)]),
        ];
        if status != 0 {
            v.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        match kind {
            KIND_5XX => v.push(KeyValue::new("error.type", status.to_string())),
            KIND_SERVICE_ERROR => v.push(KeyValue::new("error.type", "_OTHER")),
            KIND_CANCELLED => v.push(KeyValue::new("error.type", "cancelled")),
            KIND_SHED => v.push(KeyValue::new("error.type", SHED_ERROR_TYPE)),
            _ => {}
        }
        v
    }

    fn stats(&self) -> Vec<RouteStats> {
        let st = self.fold();
        let now_bucket = self.now_ns() / st.bucket_ns;
        let mut out = Vec::new();
        let mut ids: Vec<usize> = st.windows.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(name) = self.route_name(id) else {
                continue;
            };
            let Some(w) = st.windows.get(&id) else {
                continue;
            };
            let agg = w.aggregate(now_bucket);
            let ratio = if agg.count > 0 {
                agg.errors as f64 / agg.count as f64
            } else {
                0.0
            };
            out.push(RouteStats {
                route: name.to_owned(),
                requests: agg.count,
                errors: agg.errors,
                error_ratio: ratio,
                latency_mean: Duration::from_nanos(agg.sum_ns.checked_div(agg.count).unwrap_or(0)),
                latency_p50: agg.quantile(0.50),
                latency_p99: agg.quantile(0.99),
                latency_max: Duration::from_nanos(agg.max_ns),
                total_requests: w.total,
                polls: w.polls,
                poll_time: Duration::from_nanos(w.poll_ns),
                slow_polls: w.slow_polls,
                waited: Duration::from_nanos(w.waited_ns),
                scheduled: self
                    .monitors
                    .as_ref()
                    .and_then(|m| m.get(id)?.get())
                    .map(|m| m.cumulative().total_scheduled_duration)
                    .unwrap_or_default(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests;
