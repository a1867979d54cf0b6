//! Per-route sliding windows (error ratio, latency) kept by the collection, keyed by route id.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::time::Duration;

use super::*;

/// Hasher for the collection's integer keys (route ids, packed series ids): a multiply and a
/// fold instead of SipHash.
#[derive(Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

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

pub(super) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[derive(Default, Clone, Copy)]
pub(super) struct WindowBucket {
    pub(super) epoch: u64,
    pub(super) count: u64,
    pub(super) errors: u64,
    pub(super) sum_ns: u64,
    pub(super) max_ns: u64,
    pub(super) hist: [u64; bins::BUCKETS],
}

/// A route's sliding window plus its cumulative totals (owned by the collection).
#[derive(Default)]
pub(super) struct RouteWindow {
    pub(super) buckets: [WindowBucket; WINDOW_BUCKETS],
    pub(super) total: u64,
    pub(super) polls: u64,
    pub(super) slow_polls: u64,
    pub(super) poll_ns: u64,
    pub(super) waited_ns: u64,
}

#[derive(Default)]
pub(super) struct Aggregate {
    pub(super) count: u64,
    pub(super) errors: u64,
    pub(super) sum_ns: u64,
    pub(super) max_ns: u64,
    pub(super) hist: [u64; bins::BUCKETS],
}

impl Aggregate {
    /// Upper bound of the bucket holding quantile `q`, clamped to the exact max.
    pub(super) fn quantile(&self, q: f64) -> Duration {
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
    /// Adds a series' requests collected in `epoch` (`max_ns`: the largest of them).
    pub(super) fn record(&mut self, epoch: u64, new: &bins::Totals, max_ns: u64, error: bool) {
        let count = new.count();
        let b = &mut self.buckets[(epoch % WINDOW_BUCKETS as u64) as usize];
        if b.epoch != epoch || b.count == 0 {
            *b = WindowBucket {
                epoch,
                ..WindowBucket::default()
            };
        }
        b.count += count;
        self.total += count;
        if error {
            b.errors += count;
        }
        b.sum_ns = b.sum_ns.saturating_add(new.sum_ns);
        b.max_ns = b.max_ns.max(max_ns);
        for (h, n) in b.hist.iter_mut().zip(&new.buckets) {
            *h += n;
        }
        self.polls += new.polls;
        self.slow_polls += new.slow_polls;
        self.poll_ns = self.poll_ns.saturating_add(new.poll_ns);
        self.waited_ns = self.waited_ns.saturating_add(new.waited_ns);
    }

    pub(super) fn aggregate(&self, now_epoch: u64) -> Aggregate {
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
