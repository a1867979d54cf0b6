//! Per-route HTTP metrics: a tower layer for axum, labelled by the matched route template.
//!
//! Hot path (per request): a route lookup (by the address of axum's shared template string in
//! a small direct-mapped cache; else a constant-time hash into a fixed table and a string
//! compare), one relaxed atomic add (requests started; finished ones are counted by the drain
//! from the records, so active = started - finished), two clock reads per poll (the TSC
//! through `quanta` where it is invariant: ~8 ns a read, no syscall), and one push of a
//! 32-byte record into a small lock-free ring that stays in the cache (a larger spill ring
//! takes bursts). The probe (runtime lateness) is read only for requests that needed more
//! than one poll: a request done in one poll spent no time outside it. With a probe, one
//! relaxed load tells whether the probe thread sleeps an idle tick (then one `unpark`, once per
//! quiet -> busy transition, the only syscall besides the clock). No lock, no allocation
//! (after a route's first request). One background `loopwatch-http` thread per
//! [`RouteMetrics`] (every 2–100 ms, following the request rate so that the hot ring never
//! fills; parked while no requests arrive, until the next request wakes it; and at every
//! export) drains the rings into the SDK histogram and the per-route sliding windows; when both
//! rings are full the record is dropped and counted (`loopwatch.http.dropped`). The state is
//! reference counted: it is freed, and its thread ends, once the last [`RouteMetrics`], layer,
//! in-flight request and registered instrument callback is gone.

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::MatchedPath;
use axum::http::{Method, Request, Response};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{AsyncInstrument, BoundHistogram, Histogram, Meter};
use tokio_metrics::{Instrumented, TaskMonitor};
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;

use crate::shed::Pressure;

/// Default cap on distinct `http.route` values; later routes share [`OVERFLOW_ROUTE`].
pub const DEFAULT_MAX_ROUTES: usize = 64;
/// Default length of the per-route sliding window (error ratio, latency): 10 s, in 10 buckets.
pub const DEFAULT_ROUTE_WINDOW: Duration = Duration::from_secs(10);
/// Default capacity of the spill ring between requests and the drain thread: 16384 records
/// (640 KiB), used only while the small hot ring (1024 records, 40 KiB: it stays in the
/// cache) is full. The drain runs every 100 ms down to 2 ms under load (parked while idle):
/// both rings absorb a burst of ~70k requests/s before the drain speeds up, and far more
/// after; beyond that a record is dropped and counted.
pub const DEFAULT_RING_CAPACITY: usize = 16_384;
/// Records of the hot ring that every request writes to first (see [`DEFAULT_RING_CAPACITY`]).
/// A single large ring cost a cache miss per record: positions cycle through all of it.
const HOT_RING: usize = 1024;
/// Default poll duration from which a poll of a request future counts as slow: 1 ms.
pub const DEFAULT_SLOW_POLL_THRESHOLD: Duration = Duration::from_millis(1);
/// Default runtime lateness during a request from which the route layer logs a `tracing`
/// warning on the request's span ("waited N ms behind a blocked runtime"): 100 ms.
pub const DEFAULT_WAIT_EVENT_THRESHOLD: Duration = Duration::from_millis(100);
/// `http.route` of requests no route matched (no `MatchedPath`).
pub const UNMATCHED_ROUTE: &str = "(unmatched)";
/// `http.route` of routes past the [`DEFAULT_MAX_ROUTES`] cap.
pub const OVERFLOW_ROUTE: &str = "(overflow)";
/// Bucket boundaries of `http.server.request.duration`, seconds (OTel semantic conventions).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Longest drain period while requests arrive.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// Longest park of the drain thread while no requests arrive (the last drain moved nothing):
/// the next request wakes it ([`Inner::wake_drain`]); every read of the metrics drains first anyway,
/// so the bound only matters for a wake-up lost to the race with parking (a lone request's
/// record then waits for the next request or export). Long: on a VM every wake-up of an idle
/// process touches cold memory (~0.1 ms of CPU or more).
const DRAIN_IDLE: Duration = Duration::from_secs(60);
/// Shortest drain period (fast request rates).
const DRAIN_BUSY: Duration = Duration::from_millis(2);
const WINDOW_BUCKETS: usize = 10;
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
];
/// Record kinds (`error.type`).
const KIND_OK: u64 = 0;
const KIND_5XX: u64 = 1;
const KIND_SERVICE_ERROR: u64 = 2;
const KIND_CANCELLED: u64 = 3;
/// A response of the service's own load shedding ([`crate::ShedLayer`]): not an error.
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

// ---------------------------------------------------------------------------------------------
// Lock-free bounded ring (Vyukov MPMC queue with atomic payloads; one consumer at a time).

struct RingSlot {
    seq: AtomicUsize,
    words: [AtomicU64; 4],
}

/// One request record: duration, packed ids (see [`pack`]), poll time, waited time (ns).
type Record = [u64; 4];

struct Ring {
    slots: Box<[RingSlot]>,
    mask: usize,
    tail: AtomicUsize,
    head: AtomicUsize,
}

impl Ring {
    fn new(capacity: usize) -> Ring {
        let cap = capacity.clamp(2, 1 << 24).next_power_of_two();
        let slots = (0..cap)
            .map(|i| RingSlot {
                seq: AtomicUsize::new(i),
                words: Default::default(),
            })
            .collect();
        Ring {
            slots,
            mask: cap - 1,
            tail: AtomicUsize::new(0),
            head: AtomicUsize::new(0),
        }
    }

    /// Lock-free push; false when full.
    fn push(&self, rec: Record) -> bool {
        let mut pos = self.tail.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[pos & self.mask];
            let seq = slot.seq.load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos) as isize;
            if diff == 0 {
                match self.tail.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        for (w, v) in slot.words.iter().zip(rec) {
                            w.store(v, Ordering::Relaxed);
                        }
                        slot.seq.store(pos.wrapping_add(1), Ordering::Release);
                        return true;
                    }
                    Err(p) => pos = p,
                }
            } else if diff < 0 {
                return false;
            } else {
                pos = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Pops one record. Callers serialize consumers (the drain state mutex).
    fn pop(&self) -> Option<Record> {
        let pos = self.head.load(Ordering::Relaxed);
        let slot = &self.slots[pos & self.mask];
        let seq = slot.seq.load(Ordering::Acquire);
        if seq != pos.wrapping_add(1) {
            return None;
        }
        let rec = [0, 1, 2, 3].map(|i| slot.words[i].load(Ordering::Relaxed));
        slot.seq
            .store(pos.wrapping_add(self.mask + 1), Ordering::Release);
        self.head.store(pos.wrapping_add(1), Ordering::Relaxed);
        Some(rec)
    }
}

// ---------------------------------------------------------------------------------------------
// Route table and per-route counters.

/// Packs the identity of a record: route (16 bits), method (4), status (12), kind (4), then
/// polls (14, saturating) and slow polls (14, saturating). The low 36 bits name the series.
fn pack(route: usize, method: usize, status: u16, kind: u64, polls: u64, slow: u64) -> u64 {
    const SAT: u64 = (1 << 14) - 1;
    (route as u64 & 0xffff)
        | ((method as u64 & 0xf) << 16)
        | ((u64::from(status) & 0xfff) << 20)
        | ((kind & 0xf) << 32)
        | (polls.min(SAT) << 36)
        | (slow.min(SAT) << 50)
}

const SERIES_MASK: u64 = (1 << 36) - 1;

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
    /// Requests started, by method (one relaxed add per request). Active requests are
    /// `started - finished`: finished ones are counted by the drain from the records it moves,
    /// plus [`Inner::unrecorded_by_method`]; no second atomic per request.
    started_by_method: [AtomicU64; 10],
    /// Requests finished whose record the full ring dropped (rare path), by method.
    unrecorded_by_method: [AtomicU64; 10],
    /// Small ring every record tries first (stays in the cache).
    hot: Ring,
    /// Large ring for bursts the hot ring cannot hold until the next drain.
    spill: Ring,
    /// Records dropped because both rings were full.
    dropped: AtomicU64,
    drain: Mutex<DrainState>,
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
    /// Set while the drain thread parks with nothing to drain; [`Inner::wake_drain`] takes it.
    drain_parked: AtomicBool,
    /// This state's `loopwatch-http` thread, once started.
    drain_thread: OnceLock<std::thread::Thread>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The drain thread holds only a weak reference: woken, it finds the state gone and ends.
        if let Some(t) = self.drain_thread.get() {
            t.unpark();
        }
    }
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

    /// Requests in progress by method: started minus finished (drains the ring first).
    /// `finished` is read before `started`: a finished request's start is visible by then
    /// (its increment precedes its record's release into the ring), so no negative values.
    fn active_by_method(&self) -> [i64; 10] {
        let finished = self.drain().finished_by_method;
        std::array::from_fn(|i| {
            let done =
                finished[i].saturating_add(self.unrecorded_by_method[i].load(Ordering::Acquire));
            let started = self.started_by_method[i].load(Ordering::Acquire);
            i64::try_from(started.saturating_sub(done)).unwrap_or(i64::MAX)
        })
    }

    fn now_ns(&self) -> u64 {
        nanos(self.base.elapsed())
    }

    /// Drains the ring into the histogram and the windows.
    fn drain(&self) -> MutexGuard<'_, DrainState> {
        let mut st = lock(&self.drain);
        let now = self.now_ns();
        let mut drained = 0usize;
        while let Some([dur_ns, b, poll_ns, waited_ns]) =
            self.hot.pop().or_else(|| self.spill.pop())
        {
            drained += 1;
            let route = (b & 0xffff) as usize;
            let method = ((b >> 16) & 0xf) as usize;
            if let Some(f) = st.finished_by_method.get_mut(method) {
                *f += 1;
            }
            let status = ((b >> 20) & 0xfff) as u16;
            let kind = (b >> 32) & 0xf;
            if let Some(h) = &self.histogram {
                // Bound once per series: recording then skips the SDK's attribute lookup
                // (hashing four attributes per record).
                st.series
                    .entry(b & SERIES_MASK)
                    .or_insert_with(|| h.bind(&self.attributes(route, method, status, kind)))
                    .record(dur_ns as f64 / 1e9);
            }
            let bucket_ns = st.bucket_ns;
            let w = st.windows.entry(route).or_default();
            w.record(
                now / bucket_ns,
                dur_ns,
                kind != KIND_OK && kind != KIND_SHED,
            );
            w.polls += (b >> 36) & 0x3fff;
            w.slow_polls += (b >> 50) & 0x3fff;
            w.poll_ns = w.poll_ns.saturating_add(poll_ns);
            w.waited_ns = w.waited_ns.saturating_add(waited_ns);
        }
        st.last_drained = drained;
        st
    }

    fn attributes(&self, route: usize, method: usize, status: u16, kind: u64) -> Vec<KeyValue> {
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
        let st = self.drain();
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

struct DrainState {
    /// Records moved by the last drain (paces the drain thread).
    last_drained: usize,
    /// Requests finished by method, counted from drained records.
    finished_by_method: [u64; 10],
    /// `http.server.request.duration` bound to each series (packed id, see [`pack`]).
    series: IdMap<u64, BoundHistogram<f64>>,
    windows: IdMap<usize, RouteWindow>,
    bucket_ns: u64,
}

/// Hasher for the drain's integer keys (route ids, packed series ids): a multiply and a fold
/// instead of SipHash, on the drain thread's per-record path.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[derive(Default, Clone, Copy)]
struct WindowBucket {
    epoch: u64,
    count: u64,
    errors: u64,
    sum_ns: u64,
    max_ns: u64,
    hist: [u64; 15],
}

/// A route's sliding window plus its cumulative totals (owned by the drain).
#[derive(Default)]
struct RouteWindow {
    buckets: [WindowBucket; WINDOW_BUCKETS],
    total: u64,
    polls: u64,
    slow_polls: u64,
    poll_ns: u64,
    waited_ns: u64,
}

#[derive(Default)]
struct Aggregate {
    count: u64,
    errors: u64,
    sum_ns: u64,
    max_ns: u64,
    hist: [u64; 15],
}

impl Aggregate {
    /// Upper bound of the bucket holding quantile `q`, clamped to the exact max.
    fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.hist.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let bound = DURATION_BUCKETS
                    .get(i)
                    .map(|s| Duration::from_secs_f64(*s))
                    .unwrap_or(Duration::MAX);
                return bound.min(Duration::from_nanos(self.max_ns));
            }
        }
        Duration::from_nanos(self.max_ns)
    }
}

impl RouteWindow {
    fn record(&mut self, epoch: u64, dur_ns: u64, error: bool) {
        let b = &mut self.buckets[(epoch % WINDOW_BUCKETS as u64) as usize];
        if b.epoch != epoch || b.count == 0 {
            *b = WindowBucket {
                epoch,
                ..WindowBucket::default()
            };
        }
        b.count += 1;
        self.total += 1;
        b.errors += u64::from(error);
        b.sum_ns = b.sum_ns.saturating_add(dur_ns);
        b.max_ns = b.max_ns.max(dur_ns);
        let secs = dur_ns as f64 / 1e9;
        let i = DURATION_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        b.hist[i] += 1;
    }

    fn aggregate(&self, now_epoch: u64) -> Aggregate {
        let mut a = Aggregate::default();
        for b in &self.buckets {
            if b.count == 0 || b.epoch + WINDOW_BUCKETS as u64 <= now_epoch || b.epoch > now_epoch {
                continue;
            }
            a.count += b.count;
            a.errors += b.errors;
            a.sum_ns = a.sum_ns.saturating_add(b.sum_ns);
            a.max_ns = a.max_ns.max(b.max_ns);
            for (x, y) in a.hist.iter_mut().zip(b.hist.iter()) {
                *x += y;
            }
        }
        a
    }
}

// ---------------------------------------------------------------------------------------------
// Public API.

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
    /// Requests completed since start (drained so far).
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
    max_routes: Option<usize>,
    window: Option<Duration>,
    ring_capacity: Option<usize>,
    slow_poll_threshold: Option<Duration>,
    wait_event_threshold: Option<Duration>,
    trace_spans: Option<bool>,
    task_monitors: Option<bool>,
    meter: Option<Meter>,
    pressure: Option<Pressure>,
}

impl RouteMetricsBuilder {
    /// Cap on distinct routes; default [`DEFAULT_MAX_ROUTES`] (at least 1).
    pub fn max_routes(mut self, n: usize) -> Self {
        self.max_routes = Some(n);
        self
    }
    /// Sliding window length; default [`DEFAULT_ROUTE_WINDOW`] (at least 10 ms).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = Some(window);
        self
    }
    /// Spill ring capacity (rounded up to a power of two), used when the 1024-record hot ring
    /// is full; default [`DEFAULT_RING_CAPACITY`].
    pub fn ring_capacity(mut self, n: usize) -> Self {
        self.ring_capacity = Some(n);
        self
    }
    /// Slow-poll threshold; default [`DEFAULT_SLOW_POLL_THRESHOLD`].
    pub fn slow_poll_threshold(mut self, d: Duration) -> Self {
        self.slow_poll_threshold = Some(d);
        self
    }
    /// Lateness from which a request logs a warning; default [`DEFAULT_WAIT_EVENT_THRESHOLD`].
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
    /// The state (~700 KiB with the default ring) and its `loopwatch-http` thread are one per
    /// build: build one per service and clone it, not one per router, connection or request.
    /// With a meter, the instruments' callbacks keep the state until the provider shuts down.
    pub fn build(self) -> RouteMetrics {
        let max_routes = self
            .max_routes
            .unwrap_or(DEFAULT_MAX_ROUTES)
            .clamp(1, 1 << 14);
        let table_size = (max_routes * 2).next_power_of_two();
        let window = self
            .window
            .unwrap_or(DEFAULT_ROUTE_WINDOW)
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
            started_by_method: Default::default(),
            unrecorded_by_method: Default::default(),
            hot: Ring::new(HOT_RING),
            spill: Ring::new(self.ring_capacity.unwrap_or(DEFAULT_RING_CAPACITY)),
            dropped: AtomicU64::new(0),
            drain: Mutex::new(DrainState {
                last_drained: 0,
                finished_by_method: [0; 10],
                series: IdMap::default(),
                windows: IdMap::default(),
                bucket_ns: (nanos(window) / WINDOW_BUCKETS as u64).max(1),
            }),
            histogram,
            pressure: self.pressure,
            slow_poll_ns: nanos(
                self.slow_poll_threshold
                    .unwrap_or(DEFAULT_SLOW_POLL_THRESHOLD),
            ),
            wait_event_ns: nanos(
                self.wait_event_threshold
                    .unwrap_or(DEFAULT_WAIT_EVENT_THRESHOLD),
            ),
            trace_spans: self.trace_spans.unwrap_or(true),
            monitors: self
                .task_monitors
                .unwrap_or(false)
                .then(|| (0..table_size + 2).map(|_| OnceLock::new()).collect()),
            base: Instant::now(),
            // Calibrated once per process (under 1 ms here, at most 200 ms by quanta's bound).
            clock: quanta::Clock::new(),
            drain_parked: AtomicBool::new(false),
            drain_thread: OnceLock::new(),
        });
        if let Some(meter) = &self.meter {
            register(meter, &inner);
        }
        drain_in_background(&inner);
        RouteMetrics { inner }
    }
}

impl Inner {
    /// A request starts: if the drain thread parks idle, wakes it (once per idle -> busy
    /// transition); otherwise one relaxed load. A wake-up lost to the race with the thread
    /// parking costs nothing but latency: reads drain first, and the park is bounded.
    fn wake_drain(&self) {
        if self.drain_parked.load(Ordering::Relaxed)
            && self.drain_parked.swap(false, Ordering::AcqRel)
            && let Some(t) = self.drain_thread.get()
        {
            t.unpark();
        }
    }
}

/// Starts the `loopwatch-http` thread of `inner`. Its period follows the request rate: the
/// time for half a hot ring (512 records) to arrive at the last drain's rate, between 2 ms and
/// 100 ms; parked (at most [`DRAIN_IDLE`]) while none arrive, until a request wakes it. (A
/// period that let the hot ring fill sent records to the spill ring: a cache miss each.) The
/// thread holds a weak reference and ends once the state is dropped.
fn drain_in_background(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    let spawned = std::thread::Builder::new()
        .name("loopwatch-http".into())
        .spawn(move || {
            let mut pause = DRAIN_EVERY;
            let mut last = Instant::now();
            loop {
                let parked = pause == DRAIN_IDLE;
                if parked {
                    match weak.upgrade() {
                        Some(i) => i.drain_parked.store(true, Ordering::SeqCst),
                        None => return,
                    }
                    std::thread::park_timeout(pause);
                } else {
                    std::thread::sleep(pause);
                }
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                if parked {
                    inner.drain_parked.store(false, Ordering::Release);
                }
                let now = Instant::now();
                let moved = inner.drain().last_drained;
                // Gathered since the previous drain (an idle park may end early).
                pause = next_drain_pause(moved, now.saturating_duration_since(last));
                last = now;
            }
        });
    match spawned {
        Ok(h) => {
            let _ = inner.drain_thread.set(h.thread().clone());
        }
        Err(e) => {
            tracing::warn!(error = %e, "loopwatch: cannot spawn loopwatch-http; draining only at export");
        }
    }
}

/// The next drain period after a drain that moved `moved` records (at most, per route metrics)
/// gathered over `over`.
fn next_drain_pause(moved: usize, over: Duration) -> Duration {
    if moved == 0 {
        return DRAIN_IDLE;
    }
    // Half a hot ring at the observed rate: `over * (HOT_RING / 2) / moved`.
    let half_ring =
        over.saturating_mul(HOT_RING as u32 / 2) / u32::try_from(moved).unwrap_or(u32::MAX);
    half_ring.clamp(DRAIN_BUSY, DRAIN_EVERY)
}

/// Registers the observable instruments. Callbacks hold the metrics (so the final export,
/// after the server and its layers are gone, still drains and reports them).
fn register(meter: &Meter, inner: &Arc<Inner>) {
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
    for (name, desc, unit, read) in gauges {
        let _ = meter
            .f64_observable_gauge(name)
            .with_description(desc)
            .with_unit(unit)
            .with_callback(per_route(read))
            .build();
    }
    for (name, desc, unit, read) in counters {
        let _ = meter
            .f64_observable_counter(name)
            .with_description(desc)
            .with_unit(unit)
            .with_callback(per_route(read))
            .build();
    }
    let w = Arc::clone(inner);
    let _ = meter
        .u64_observable_counter("loopwatch.http.dropped")
        .with_description(
            "Request records dropped because the route layer's rings (hot and spill) were full",
        )
        .with_unit("{record}")
        .with_callback(move |obs| {
            obs.observe(w.dropped.load(Ordering::Relaxed), &[]);
        })
        .build();
}

/// Per-route HTTP metrics shared by every [`RouteLayer`] made from it (cheap to clone: a
/// reference count). The state is allocated once by [`RouteMetricsBuilder::build`] and freed
/// when the last clone, layer, in-flight request and instrument callback holding it is gone.
///
/// ```
/// use axum::{Router, routing::get};
/// let routes = loopwatch::RouteMetrics::builder().build(); // or guard.route_metrics()
/// let app: Router = Router::new()
///     .route("/items/{id}", get(|| async { "item" }))
///     .layer(routes.layer());
/// for s in routes.snapshot() {
///     println!("{} error ratio {:.3} p99 {:?}", s.route, s.error_ratio, s.latency_p99);
/// }
/// ```
#[derive(Clone)]
pub struct RouteMetrics {
    inner: Arc<Inner>,
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

    /// Per-route statistics (drains pending records first). Routes with no request in the
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

    /// Records dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

/// Tower layer recording `http.server.*` metrics per route; made by [`RouteMetrics::layer`].
#[derive(Clone)]
pub struct RouteLayer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RouteLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteLayer")
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;
    fn layer(&self, service: S) -> Self::Service {
        RouteService {
            inner: Arc::clone(&self.inner),
            service,
        }
    }
}

/// The service produced by [`RouteLayer`].
#[derive(Clone)]
pub struct RouteService<S> {
    inner: Arc<Inner>,
    service: S,
}

impl<S> std::fmt::Debug for RouteService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteService")
    }
}

impl<S, B, ResBody> Service<Request<B>> for RouteService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = RouteFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = &*self.inner;
        let route = inner.route_id(req.extensions().get::<MatchedPath>());
        let method = method_code(req.method());
        inner.started_by_method[method].fetch_add(1, Ordering::Relaxed);
        if let Some(p) = &inner.pressure {
            // One relaxed load; wakes the probe thread once per quiet -> busy transition, so
            // a block that starts with this request is probed from its start.
            p.wake_probe();
        }
        inner.wake_drain();
        // DEBUG: the `info` filter most services run leaves the span out, so by default it
        // costs one level check per request.
        let span = if inner.trace_spans && tracing::level_enabled!(tracing::Level::DEBUG) {
            request_span(inner, route, method)
        } else {
            None
        };
        let monitor = inner
            .monitors
            .as_ref()
            .and_then(|m| m.get(route))
            .map(|m| m.get_or_init(TaskMonitor::new));
        let rec = Rec {
            inner: Arc::clone(&self.inner),
            start: 0,
            delayed_at_start: 0,
            poll_ns: 0,
            polls: 0,
            slow: 0,
            route: route as u16,
            method: method as u8,
            done: false,
            span,
        };
        if let Some(m) = monitor {
            let fut = call_in_span(&mut self.service, req, rec.span.as_deref());
            return RouteFuture {
                fut: MaybeMonitored::Monitored {
                    fut: Box::pin(m.instrument(fut)),
                },
                rec,
            };
        }
        // Built as the tail expression, so the inner future is written in place (a local
        // would cost a copy of the whole future).
        if rec.span.is_none() {
            RouteFuture {
                fut: MaybeMonitored::Plain {
                    fut: self.service.call(req),
                },
                rec,
            }
        } else {
            RouteFuture {
                fut: MaybeMonitored::Plain {
                    fut: call_in_span(&mut self.service, req, rec.span.as_deref()),
                },
                rec,
            }
        }
    }
}

/// Calls the inner service with the request's span (if any) entered.
fn call_in_span<S: Service<R>, R>(service: &mut S, req: R, span: Option<&SpanState>) -> S::Future {
    let _e = span.map(|s| s.span.enter());
    service.call(req)
}

/// The request's `http.request` span; `None` (nothing allocated or formatted) unless a
/// subscriber enables `loopwatch::http` at DEBUG.
#[cold]
fn request_span(inner: &Inner, route: usize, method: usize) -> Option<Box<SpanState>> {
    let span = tracing::debug_span!(
        target: "loopwatch::http",
        "http.request",
        otel.name = Empty,
        http.request.method = METHODS[method],
        http.route = inner.route_name(route).unwrap_or(OVERFLOW_ROUTE),
        http.response.status_code = Empty,
        loopwatch.waited_ms = Empty,
        loopwatch.stall_before_ms = Empty,
        loopwatch.poll_ms = Empty,
        loopwatch.polls = Empty,
    );
    if span.is_disabled() {
        return None;
    }
    let route_name = inner.route_name(route).unwrap_or(OVERFLOW_ROUTE);
    span.record(
        "otel.name",
        tracing::field::display(format_args!("{} {route_name}", METHODS[method])),
    );
    Some(Box::new(SpanState {
        span,
        stall_before_us: 0,
    }))
}

/// A request's enabled span, boxed so that requests without one carry a single pointer.
struct SpanState {
    span: Span,
    /// Runtime stall that ended right before the first poll.
    stall_before_us: u64,
}

/// Per-request state; recording as cancelled on drop if the request never completed.
struct Rec {
    inner: Arc<Inner>,
    /// Raw clock reading at the first poll (the request's start as far as the layer can
    /// tell: right after `call`); 0 until then.
    start: u64,
    /// Probe's delay clock (µs) at the end of the first poll; only read for requests that
    /// needed more than one poll (a one-poll request spent no time outside its polls).
    delayed_at_start: u64,
    poll_ns: u64,
    polls: u32,
    slow: u32,
    route: u16,
    method: u8,
    /// Recorded (completed, or cancelled on drop).
    done: bool,
    span: Option<Box<SpanState>>,
}

impl Rec {
    /// Records the request once: `dur_ns` from the first poll to its end.
    fn finish(&mut self, dur_ns: u64, status: u16, kind: u64) {
        self.done = true;
        let inner = &*self.inner;
        let method = usize::from(self.method);
        // Runtime lateness during the request: probe-measured delay between the end of the
        // first poll and the end, at most the time the request spent outside its own polls
        // (zero for a request done in one poll: the probe is not consulted).
        let outside_ns = dur_ns.saturating_sub(self.poll_ns);
        let waited_ns = match &inner.pressure {
            Some(p) if outside_ns > 0 => {
                let us = p
                    .delayed_clock_us_now()
                    .saturating_sub(self.delayed_at_start);
                us.saturating_mul(1000).min(outside_ns)
            }
            _ => 0,
        };
        let b = pack(
            usize::from(self.route),
            method,
            status,
            kind,
            u64::from(self.polls),
            u64::from(self.slow),
        );
        let rec = [dur_ns, b, self.poll_ns, waited_ns];
        if !inner.hot.push(rec) && !inner.spill.push(rec) {
            inner.dropped.fetch_add(1, Ordering::Relaxed);
            inner.unrecorded_by_method[method].fetch_add(1, Ordering::Release);
        }
        if let Some(s) = &self.span {
            self.record_span(s, dur_ns, status, waited_ns);
        } else if waited_ns >= inner.wait_event_ns && waited_ns > 0 {
            warn_waited(waited_ns, dur_ns, self.poll_ns);
        }
    }

    #[cold]
    fn record_span(&self, s: &SpanState, dur_ns: u64, status: u16, waited_ns: u64) {
        let inner = &*self.inner;
        let span = &s.span;
        if status != 0 {
            span.record("http.response.status_code", status);
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        span.record("loopwatch.waited_ms", ms(waited_ns));
        let before_ns = s.stall_before_us.saturating_mul(1000);
        span.record("loopwatch.stall_before_ms", ms(before_ns));
        if before_ns >= inner.wait_event_ns && before_ns > 0 {
            tracing::warn!(
                parent: span,
                stall_before_ms = before_ns / 1_000_000,
                duration_ms = dur_ns / 1_000_000,
                "request started right after a {} ms runtime stall: it may have waited up to that long before it was polled",
                before_ns / 1_000_000
            );
        }
        span.record("loopwatch.poll_ms", ms(self.poll_ns));
        span.record("loopwatch.polls", self.polls);
        if waited_ns >= inner.wait_event_ns && waited_ns > 0 {
            tracing::warn!(
                parent: span,
                waited_ms = waited_ns / 1_000_000,
                duration_ms = dur_ns / 1_000_000,
                poll_ms = self.poll_ns / 1_000_000,
                "request waited {} ms behind a blocked runtime",
                waited_ns / 1_000_000
            );
        }
    }
}

/// The "waited behind a blocked runtime" warning of a request without a span (rare path).
#[cold]
fn warn_waited(waited_ns: u64, dur_ns: u64, poll_ns: u64) {
    tracing::warn!(
        target: "loopwatch::http",
        waited_ms = waited_ns / 1_000_000,
        duration_ms = dur_ns / 1_000_000,
        poll_ms = poll_ns / 1_000_000,
        "request waited {} ms behind a blocked runtime",
        waited_ns / 1_000_000
    );
}

impl Drop for Rec {
    fn drop(&mut self) {
        if !self.done {
            let dur_ns = match self.start {
                0 => 0,
                start => self
                    .inner
                    .clock
                    .delta_as_nanos(start, self.inner.clock.raw()),
            };
            self.finish(dur_ns, 0, KIND_CANCELLED);
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`RouteService`].
    pub struct RouteFuture<F> {
        #[pin]
        fut: MaybeMonitored<F>,
        rec: Rec,
    }
}

pin_project_lite::pin_project! {
    /// The inner future, wrapped in the route's `TaskMonitor` when enabled (boxed: that mode
    /// allocates per task anyway, and the plain future stays as small as the inner one).
    #[project = MaybeProj]
    enum MaybeMonitored<F> {
        Plain { #[pin] fut: F },
        Monitored { fut: Pin<Box<Instrumented<F>>> },
    }
}

impl<F: Future> Future for MaybeMonitored<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            MaybeProj::Plain { fut } => fut.poll(cx),
            MaybeProj::Monitored { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<F, ResBody, E> Future for RouteFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let rec = this.rec;
        if rec.done {
            return this.fut.poll(cx);
        }
        let clock = &rec.inner.clock;
        let t0 = clock.raw();
        if rec.start == 0 {
            // A raw reading of 0 would only mean "not started" again: harmless.
            rec.start = t0;
            if let Some(s) = &mut rec.span
                && let Some(p) = &rec.inner.pressure
            {
                s.stall_before_us = p.stall_before_us(Instant::now());
            }
        }
        let res = match &rec.span {
            None => this.fut.poll(cx),
            Some(s) => {
                let _e = s.span.enter();
                this.fut.poll(cx)
            }
        };
        let t1 = clock.raw();
        let d = clock.delta_as_nanos(t0, t1);
        rec.poll_ns = rec.poll_ns.saturating_add(d);
        rec.polls = rec.polls.saturating_add(1);
        if d >= rec.inner.slow_poll_ns {
            rec.slow = rec.slow.saturating_add(1);
        }
        match &res {
            Poll::Ready(r) => {
                let (status, kind) = match r {
                    Ok(resp) => {
                        let s = resp.status().as_u16();
                        let kind = if s < 500 {
                            KIND_OK
                        } else if resp.extensions().get::<crate::shed::Shed>().is_some() {
                            KIND_SHED
                        } else {
                            KIND_5XX
                        };
                        (s, kind)
                    }
                    Err(_) => (0, KIND_SERVICE_ERROR),
                };
                // One poll: the request's duration is that poll's (no second subtraction).
                let dur_ns = if rec.polls == 1 {
                    d
                } else {
                    clock.delta_as_nanos(rec.start, t1)
                };
                rec.finish(dur_ns, status, kind);
            }
            Poll::Pending if rec.polls == 1 => {
                // Lateness is counted from here: the request now waits outside its polls.
                if let Some(p) = &rec.inner.pressure {
                    rec.delayed_at_start = p.delayed_clock_us_now();
                }
            }
            Poll::Pending => {}
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
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
}
