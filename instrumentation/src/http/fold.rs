//! The collection: sums the per-thread bins, feeds what is new since the last collection into
//! the SDK histogram and the route windows.
//!
//! The SDK histogram has no way to take a bucketed aggregate, so each new request is
//! recorded into it once, here, with a value chosen so that every SDK figure matches the
//! requests': the same bucket, the interval's true min and max, and a sum that is exact
//! across collections (the replayed values' sum is tracked, and the next collection makes up
//! any difference).

use opentelemetry::metrics::BoundHistogram;

use super::bins::{BUCKETS, Totals, merge};
use super::*;

/// What the collection has seen of one series.
struct Seen {
    /// Cumulative counters as of the last collection.
    totals: Totals,
    /// Sum of the values replayed into the SDK histogram so far, seconds.
    replayed_s: f64,
    /// `http.server.request.duration` bound to the series.
    bound: Option<BoundHistogram<f64>>,
}

pub(super) struct FoldState {
    /// Requests finished by method, as collected.
    pub(super) finished_by_method: [u64; 10],
    seen: IdMap<u64, Seen>,
    /// Per-series sums of this collection (kept to reuse its allocation).
    scratch: IdMap<u64, Totals>,
    pub(super) windows: IdMap<usize, RouteWindow>,
    pub(super) bucket_ns: u64,
}

impl FoldState {
    pub(super) fn new(bucket_ns: u64) -> FoldState {
        FoldState {
            finished_by_method: [0; 10],
            seen: IdMap::default(),
            scratch: IdMap::default(),
            windows: IdMap::default(),
            bucket_ns,
        }
    }
}

impl Inner {
    /// Collects the bins into the histogram and the windows.
    pub(super) fn fold(&self) -> MutexGuard<'_, FoldState> {
        let mut guard = lock(&self.fold);
        let st = &mut *guard;
        let epoch = self.now_ns() / st.bucket_ns;
        let mut sums = std::mem::take(&mut st.scratch);
        self.bins
            .each(|key, t| merge(sums.entry(key).or_default(), t));
        for (&key, t) in &sums {
            let seen = st.seen.entry(key).or_insert_with(|| Seen {
                totals: Totals::default(),
                replayed_s: 0.0,
                bound: self
                    .histogram
                    .as_ref()
                    .map(|h| h.bind(&self.attributes(key))),
            });
            let delta = delta(t, &seen.totals);
            let count = delta.count();
            if count == 0 {
                continue;
            }
            let target_s = t.sum_ns as f64 / 1e9 - seen.replayed_s;
            let bound = seen.bound.as_ref();
            let (replayed_s, max_s) = replay(
                &delta.buckets,
                target_s,
                to_s(delta.min_ns),
                to_s(delta.max_ns),
                |v, n| {
                    if let Some(b) = bound {
                        (0..n).for_each(|_| b.record(v));
                    }
                },
            );
            seen.replayed_s += replayed_s;
            seen.totals = Totals {
                min_ns: None,
                max_ns: None,
                ..*t
            };
            let route = (key & 0xffff) as usize;
            let method = ((key >> 16) & 0xf) as usize;
            let kind = (key >> 32) & 0xf;
            if let Some(f) = st.finished_by_method.get_mut(method) {
                *f += count;
            }
            let max_ns = delta.max_ns.unwrap_or((max_s * 1e9) as u64);
            let w = st.windows.entry(route).or_default();
            let error = kind != KIND_OK && kind != KIND_SHED;
            w.record(epoch, &delta, max_ns, error);
        }
        sums.clear();
        st.scratch = sums;
        guard
    }
}

fn to_s(ns: Option<u64>) -> Option<f64> {
    ns.map(|n| n as f64 / 1e9)
}

/// New since `seen`: counter differences, and this collection's min and max.
fn delta(now: &Totals, seen: &Totals) -> Totals {
    now.zip(seen, u64::wrapping_sub)
}

/// Bucket `b`'s bounds in seconds: values `v` with `lower < v <= upper` (bucket 0 from 0).
fn bucket_bounds(b: usize) -> (f64, f64) {
    let lower = b.checked_sub(1).map_or(0.0, |i| DURATION_BUCKETS[i]);
    let upper = DURATION_BUCKETS.get(b).copied().unwrap_or(f64::INFINITY);
    (lower, upper)
}

fn bucket_of(v: f64) -> usize {
    DURATION_BUCKETS
        .iter()
        .position(|b| v <= *b)
        .unwrap_or(DURATION_BUCKETS.len())
}

/// Calls `emit(value, times)` with values (seconds) that land in the buckets `counts` names,
/// include `min` and `max` when their buckets hold a request, and sum to `sum` as closely as
/// the buckets allow. Returns the emitted values' sum and their largest value.
pub(super) fn replay(
    counts: &[u64; BUCKETS],
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
    mut emit: impl FnMut(f64, u64),
) -> (f64, f64) {
    let mut n = *counts;
    // The min and max are replayed as they are, when their buckets hold a request.
    let mut take = |v: f64| {
        let b = bucket_of(v);
        let held = n[b] > 0;
        if held {
            n[b] -= 1;
        }
        held
    };
    let min = min.filter(|&m| take(m));
    let max = max.filter(|&m| take(m));
    let mut emitted = 0.0;
    let mut largest: f64 = 0.0;
    let mut out = |v: f64, k: u64| {
        emit(v, k);
        emitted += v * k as f64;
        largest = largest.max(v);
    };
    min.into_iter().chain(max).for_each(|v| out(v, 1));
    // Each remaining value sits at the same fraction `t` of its bucket's range (narrowed to
    // [min, max]); `t` is chosen so that the sum comes out right.
    let range = |b: usize| {
        let (lower, upper) = bucket_bounds(b);
        let lo = min.map_or(lower, |m| m.clamp(lower, upper));
        let top = max.map_or(if upper.is_finite() { upper } else { lower }, |m| {
            m.min(upper)
        });
        (lower, upper, lo, top.max(lo))
    };
    let (mut low_sum, mut high_sum) = (0.0, 0.0);
    for (b, &k) in n.iter().enumerate().filter(|(_, k)| **k > 0) {
        let (_, _, lo, hi) = range(b);
        low_sum += k as f64 * lo;
        high_sum += k as f64 * hi;
    }
    let rest = sum - min.unwrap_or(0.0) - max.unwrap_or(0.0);
    let t = if high_sum > low_sum {
        ((rest - low_sum) / (high_sum - low_sum)).clamp(0.0, 1.0)
    } else {
        0.0
    };
    for (b, &k) in n.iter().enumerate().filter(|(_, k)| **k > 0) {
        let (lower, upper, lo, hi) = range(b);
        let mut v = lo + t * (hi - lo);
        if b > 0 && v <= lower {
            v = lower.next_up();
        }
        out(v.min(upper), k);
    }
    (emitted, largest)
}
