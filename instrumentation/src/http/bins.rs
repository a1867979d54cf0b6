//! Per-thread bins: every request is added, on the thread that finishes it, to that thread's
//! own table of series counters; the collection (every export, every snapshot) sums the
//! tables. No record crosses to another thread, and no thread is woken per request.
//!
//! Each thread that serves requests claims a process-wide slot (released when it exits), and
//! slot `i` of every [`Bins`] is written only by the thread holding slot `i`: its counters are
//! plain loads and stores (no read-modify-write, no contended cache line). Threads past
//! [`SLOTS`] share one more table, updated with atomic adds.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Threads with a table of their own; the rest share the last one.
pub(super) const SLOTS: usize = 64;
/// Histogram buckets per series: the semconv bounds plus the overflow bucket.
pub(super) const BUCKETS: usize = super::DURATION_BUCKETS.len() + 1;

static CLAIMED: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];

/// The calling thread's slot, held until it exits.
struct Slot(usize);

impl Slot {
    fn claim() -> Slot {
        let free = CLAIMED.iter().position(|c| {
            c.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        });
        Slot(free.unwrap_or(SLOTS))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Release: the next holder of the slot continues from this thread's last stores.
        if let Some(c) = CLAIMED.get(self.0) {
            c.store(false, Ordering::Release);
        }
    }
}

thread_local! {
    static SLOT: Slot = Slot::claim();
}

/// The calling thread's slot index; [`SLOTS`] (the shared table) when it has none, or while
/// its thread-locals are being destroyed.
fn slot() -> usize {
    SLOT.try_with(|s| s.0).unwrap_or(SLOTS)
}

/// One series' counters (cumulative, except the interval min and max that the collection
/// takes and resets).
#[derive(Default)]
pub(super) struct Cells {
    /// Packed series id + 1 (see `super::series_id`); 0 while the entry is free.
    key: AtomicU64,
    /// Requests by duration bucket; stored last, with release, so that a reader that sees a
    /// request here sees its other counters too.
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
    polls: AtomicU64,
    slow_polls: AtomicU64,
    poll_ns: AtomicU64,
    waited_ns: AtomicU64,
    /// Smallest duration since the last collection, `u64::MAX` when none (reset by it).
    min_ns: AtomicU64,
    /// Largest duration since the last collection (reset by it).
    max_ns: AtomicU64,
}

/// One request as the bins record it.
#[derive(Clone, Copy)]
pub(super) struct Sample {
    /// Packed series id (route, method, status, kind: `super::series_id`).
    pub(super) series: u64,
    pub(super) bucket: usize,
    pub(super) dur_ns: u64,
    pub(super) polls: u64,
    pub(super) slow_polls: u64,
    pub(super) poll_ns: u64,
    pub(super) waited_ns: u64,
}

/// One thread's table (or the shared one).
pub(super) struct Table {
    /// Written by several threads: atomic adds instead of load and store.
    shared: bool,
    /// Requests started, by method.
    started: [AtomicU64; 10],
    cells: Box<[Cells]>,
    mask: usize,
}

impl Table {
    fn new(capacity: usize, shared: bool) -> Table {
        let cap = capacity.next_power_of_two();
        Table {
            shared,
            started: Default::default(),
            cells: (0..cap)
                .map(|_| Cells {
                    min_ns: AtomicU64::new(u64::MAX),
                    ..Cells::default()
                })
                .collect(),
            mask: cap - 1,
        }
    }

    fn add(&self, c: &AtomicU64, v: u64, order: Ordering) {
        if self.shared {
            c.fetch_add(v, order);
        } else {
            c.store(c.load(Ordering::Relaxed).wrapping_add(v), order);
        }
    }

    /// The series' entry, claimed on its first request; `None` when the table is full.
    fn cells(&self, series: u64) -> Option<&Cells> {
        let key = series + 1;
        let h = key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let start = (h ^ (h >> 29)) as usize;
        for i in 0..=self.mask {
            let c = &self.cells[start.wrapping_add(i) & self.mask];
            let k = c.key.load(Ordering::Relaxed);
            if k == key {
                return Some(c);
            }
            if k == 0 {
                if !self.shared {
                    c.key.store(key, Ordering::Release);
                    return Some(c);
                }
                match c
                    .key
                    .compare_exchange(0, key, Ordering::AcqRel, Ordering::Relaxed)
                {
                    Ok(_) => return Some(c),
                    Err(k) if k == key => return Some(c),
                    Err(_) => {}
                }
            }
        }
        None
    }

    fn record(&self, s: &Sample) -> bool {
        let Some(c) = self.cells(s.series) else {
            return false;
        };
        let relaxed = Ordering::Relaxed;
        self.add(&c.sum_ns, s.dur_ns, relaxed);
        self.add(&c.polls, s.polls, relaxed);
        if s.slow_polls > 0 {
            self.add(&c.slow_polls, s.slow_polls, relaxed);
        }
        self.add(&c.poll_ns, s.poll_ns, relaxed);
        if s.waited_ns > 0 {
            self.add(&c.waited_ns, s.waited_ns, relaxed);
        }
        // The collection swaps these: a read-modify-write, taken only when the value improves.
        if s.dur_ns < c.min_ns.load(relaxed) {
            c.min_ns.fetch_min(s.dur_ns, relaxed);
        }
        if s.dur_ns > c.max_ns.load(relaxed) {
            c.max_ns.fetch_max(s.dur_ns, relaxed);
        }
        if let Some(b) = c.buckets.get(s.bucket) {
            self.add(b, 1, Ordering::Release);
        }
        true
    }
}

/// A series' totals as the collection reads them: cumulative counters, plus the min and max
/// since the previous collection.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub(super) struct Totals {
    pub(super) buckets: [u64; BUCKETS],
    pub(super) sum_ns: u64,
    pub(super) polls: u64,
    pub(super) slow_polls: u64,
    pub(super) poll_ns: u64,
    pub(super) waited_ns: u64,
    pub(super) min_ns: Option<u64>,
    pub(super) max_ns: Option<u64>,
}

impl Totals {
    pub(super) fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The counters of `self` and `other` combined by `f`, field by field; min and max are
    /// `self`'s.
    pub(super) fn zip(&self, other: &Totals, f: impl Fn(u64, u64) -> u64) -> Totals {
        Totals {
            buckets: std::array::from_fn(|i| f(self.buckets[i], other.buckets[i])),
            sum_ns: f(self.sum_ns, other.sum_ns),
            polls: f(self.polls, other.polls),
            slow_polls: f(self.slow_polls, other.slow_polls),
            poll_ns: f(self.poll_ns, other.poll_ns),
            waited_ns: f(self.waited_ns, other.waited_ns),
            ..*self
        }
    }
}

impl Cells {
    /// The counters, and the interval min and max (taken: the next interval starts afresh).
    fn take(&self) -> Totals {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let min = swap_unless(&self.min_ns, u64::MAX);
        let max = swap_unless(&self.max_ns, 0);
        Totals {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Acquire)),
            sum_ns: load(&self.sum_ns),
            polls: load(&self.polls),
            slow_polls: load(&self.slow_polls),
            poll_ns: load(&self.poll_ns),
            waited_ns: load(&self.waited_ns),
            min_ns: min,
            max_ns: max,
        }
    }
}

/// Swaps `empty` in; the old value unless it was `empty`.
fn swap_unless(a: &AtomicU64, empty: u64) -> Option<u64> {
    Some(a.swap(empty, Ordering::Relaxed)).filter(|v| *v != empty)
}

/// The tables of one [`super::RouteMetrics`], one per thread slot plus the shared one, each
/// allocated on its thread's first request.
pub(super) struct Bins {
    tables: Box<[OnceLock<Table>]>,
    capacity: usize,
}

impl Bins {
    pub(super) fn new(capacity: usize) -> Bins {
        Bins {
            tables: (0..=SLOTS).map(|_| OnceLock::new()).collect(),
            capacity,
        }
    }

    fn table(&self) -> &Table {
        let i = slot().min(SLOTS);
        self.tables[i].get_or_init(|| Table::new(self.capacity, i == SLOTS))
    }

    /// A request starts (method code).
    pub(super) fn start(&self, method: usize) {
        let t = self.table();
        if let Some(c) = t.started.get(method) {
            t.add(c, 1, Ordering::Relaxed);
        }
    }

    /// A request ends; false when its thread's table has no room for a new series.
    pub(super) fn record(&self, s: &Sample) -> bool {
        self.table().record(s)
    }

    /// Requests started by method, all threads. Read after the finished ones (see
    /// [`super::Inner::active_by_method`]).
    pub(super) fn started(&self) -> [u64; 10] {
        let mut out = [0u64; 10];
        for t in self.tables.iter().filter_map(OnceLock::get) {
            for (o, c) in out.iter_mut().zip(&t.started) {
                *o = o.wrapping_add(c.load(Ordering::Acquire));
            }
        }
        out
    }

    /// Calls `f` with each series' totals summed over all threads (taking the interval min
    /// and max). A series appears once per table that holds it: `f` adds them up.
    pub(super) fn each(&self, mut f: impl FnMut(u64, &Totals)) {
        for t in self.tables.iter().filter_map(OnceLock::get) {
            for c in t.cells.iter() {
                let key = c.key.load(Ordering::Acquire);
                if key != 0 {
                    f(key - 1, &c.take());
                }
            }
        }
    }
}

/// Adds `b` into `a` (counters summed, min and max combined).
pub(super) fn merge(a: &mut Totals, b: &Totals) {
    *a = Totals {
        min_ns: [a.min_ns, b.min_ns].into_iter().flatten().min(),
        max_ns: [a.max_ns, b.max_ns].into_iter().flatten().max(),
        ..a.zip(b, u64::wrapping_add)
    };
}
