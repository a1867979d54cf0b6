//! Heap growth: live heap bytes from the opt-in [`CountingAllocator`] (or, with the `jemalloc`
//! feature, from jemalloc's `stats.allocated`), and their growth rate over a sliding window.
//!
//! The `loopwatch-probe` thread samples the live bytes every `heap_window / 30` and fits a
//! least-squares line through the samples of the last `heap_window`: its slope is
//! `loopwatch.heap.growth_rate` (By/s). A steady leak shows as a steady positive rate; a
//! sawtooth of allocate/free cycles averages out.

// The one module allowed unsafe code: `GlobalAlloc` is an unsafe trait (see its module docs).
#[allow(unsafe_code)]
mod alloc;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use alloc::{BATCH as COUNTING_BATCH_BYTES, CountingAllocator, counted_heap_bytes};
/// jemalloc as a global allocator (feature `jemalloc`), re-exported from `tikv-jemallocator`:
/// `#[global_allocator] static A: loopwatch::heap::Jemalloc = loopwatch::heap::Jemalloc;` feeds
/// `loopwatch.heap.*` from jemalloc's own statistics.
#[cfg(feature = "jemalloc")]
pub use tikv_jemallocator::Jemalloc;

use crate::config::LoopwatchBuilder;

impl LoopwatchBuilder {
    /// Default length of the heap growth-rate window: 30 s.
    pub const DEFAULT_HEAP_WINDOW: Duration = Duration::from_secs(30);
}

/// Samples per heap window.
const SAMPLES_PER_WINDOW: u32 = 30;

impl LoopwatchBuilder {
    /// Length of the sliding window over which `loopwatch.heap.growth_rate` is computed;
    /// default [`LoopwatchBuilder::DEFAULT_HEAP_WINDOW`]. Live bytes are sampled 30 times per window. Must be at
    /// least 100 ms.
    pub fn heap_window(mut self, window: Duration) -> Self {
        self.heap_window = Some(window);
        self
    }
}

/// Where the heap numbers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeapSource {
    /// [`CountingAllocator`] is the global allocator.
    CountingAllocator,
    /// jemalloc's `stats.allocated` (feature `jemalloc`, no counting allocator installed).
    Jemalloc,
}

/// Heap values as of the last sample.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct HeapSnapshot {
    /// Live heap bytes (`loopwatch.heap.allocated`), `None` without a source.
    pub allocated: Option<u64>,
    /// Growth rate over the window in bytes per second (`loopwatch.heap.growth_rate`), `None`
    /// until the window holds 3 samples, or without a source.
    pub growth_rate: Option<f64>,
    /// Where the numbers come from.
    pub source: Option<HeapSource>,
    /// Time covered by the samples behind `growth_rate`.
    pub window: Duration,
}

/// Heap bytes loopwatch itself keeps for its own use (stall stacks' module list and symbol
/// tables, loaded once): not the application's growth, so not reported as heap.
static OWN_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The current live heap bytes, as the best available source reads them.
pub(crate) fn live_heap_bytes() -> Option<u64> {
    counted_heap_bytes().or_else(jemalloc_allocated)
}

/// While loopwatch loads its own tables: the live bytes before it began (`u64::MAX`: not
/// loading). Readings meanwhile are held at that level, so the load never reads as growth.
static OWN_LOAD_BASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

/// Begins a step of loopwatch's own that may keep heap (see [`OWN_BYTES`]); returns the live
/// bytes before it, for [`own_end`].
pub(crate) fn own_begin() -> Option<u64> {
    let before = live_heap_bytes()?;
    OWN_LOAD_BASE.store(before, std::sync::atomic::Ordering::Relaxed);
    Some(before)
}

/// Ends the step begun at `before`: the growth since, plus `freed` bytes released meanwhile
/// that were allocated elsewhere, is loopwatch's own from now on.
pub(crate) fn own_end(before: Option<u64>, freed: u64) {
    if let (Some(b), Some(a)) = (before, live_heap_bytes()) {
        let grown = a.saturating_add(freed).saturating_sub(b);
        OWN_BYTES.fetch_add(grown, std::sync::atomic::Ordering::Relaxed);
    }
    OWN_LOAD_BASE.store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
}

/// Reads the current live heap bytes from the best available source, less loopwatch's own.
pub(crate) fn read_heap() -> Option<(u64, HeapSource)> {
    let own = OWN_BYTES.load(std::sync::atomic::Ordering::Relaxed);
    let held = OWN_LOAD_BASE.load(std::sync::atomic::Ordering::Relaxed);
    let app = |b: u64| b.min(held).saturating_sub(own);
    if let Some(b) = counted_heap_bytes() {
        return Some((app(b), HeapSource::CountingAllocator));
    }
    jemalloc_allocated().map(|b| (app(b), HeapSource::Jemalloc))
}

#[cfg(feature = "jemalloc")]
fn jemalloc_allocated() -> Option<u64> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let b = stats::allocated::read().ok()?;
    // Zero: jemalloc is linked but not the allocator in use.
    (b > 0).then(|| u64::try_from(b).unwrap_or(u64::MAX))
}

#[cfg(not(feature = "jemalloc"))]
fn jemalloc_allocated() -> Option<u64> {
    None
}

const NONE: u64 = u64::MAX;

/// Published heap state (atomics; `NONE` = no value).
#[derive(Debug)]
pub(crate) struct HeapShared {
    allocated: AtomicU64,
    rate_bits: AtomicU64,
    has_rate: AtomicU64,
    source: AtomicU64,
    window_us: AtomicU64,
}

impl HeapShared {
    pub(crate) fn new() -> Self {
        HeapShared {
            allocated: AtomicU64::new(NONE),
            rate_bits: AtomicU64::new(0),
            has_rate: AtomicU64::new(0),
            source: AtomicU64::new(0),
            window_us: AtomicU64::new(0),
        }
    }

    pub(crate) fn snapshot(&self) -> HeapSnapshot {
        let allocated = match self.allocated.load(Ordering::Acquire) {
            NONE => None,
            b => Some(b),
        };
        let growth_rate = (self.has_rate.load(Ordering::Acquire) == 1)
            .then(|| f64::from_bits(self.rate_bits.load(Ordering::Relaxed)));
        let source = match self.source.load(Ordering::Relaxed) {
            1 => Some(HeapSource::CountingAllocator),
            2 => Some(HeapSource::Jemalloc),
            _ => None,
        };
        HeapSnapshot {
            allocated,
            growth_rate,
            source,
            window: Duration::from_micros(self.window_us.load(Ordering::Relaxed)),
        }
    }
}

/// Sliding window of (seconds since start, bytes) samples and its least-squares slope.
#[derive(Debug)]
pub(crate) struct GrowthWindow {
    base: Instant,
    window: Duration,
    samples: VecDeque<(f64, f64)>,
}

impl GrowthWindow {
    pub(crate) fn new(window: Duration, base: Instant) -> Self {
        GrowthWindow {
            base,
            window,
            samples: VecDeque::with_capacity(SAMPLES_PER_WINDOW as usize + 2),
        }
    }

    pub(crate) fn push(&mut self, at: Instant, bytes: u64) {
        let t = at.saturating_duration_since(self.base).as_secs_f64();
        self.samples.push_back((t, bytes as f64));
        let oldest = t - self.window.as_secs_f64();
        while self.samples.front().is_some_and(|(ts, _)| *ts < oldest) {
            self.samples.pop_front();
        }
        // Bounded even if the clock misbehaves.
        while self.samples.len() > 4 * SAMPLES_PER_WINDOW as usize {
            self.samples.pop_front();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.samples.clear();
    }

    /// Time covered by the samples.
    pub(crate) fn span(&self) -> Duration {
        match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) => Duration::from_secs_f64((b.0 - a.0).max(0.0)),
            _ => Duration::ZERO,
        }
    }

    /// Least-squares slope in bytes/s; `None` with fewer than 3 samples or no time spread.
    pub(crate) fn rate(&self) -> Option<f64> {
        let n = self.samples.len();
        if n < 3 {
            return None;
        }
        let nf = n as f64;
        let mean_t = self.samples.iter().map(|s| s.0).sum::<f64>() / nf;
        let mean_b = self.samples.iter().map(|s| s.1).sum::<f64>() / nf;
        let (mut num, mut den) = (0.0, 0.0);
        for (t, b) in &self.samples {
            num += (t - mean_t) * (b - mean_b);
            den += (t - mean_t) * (t - mean_t);
        }
        (den > 0.0).then(|| num / den)
    }
}

/// Samples the heap on the `loopwatch-probe` thread (see `process::Sampler`).
pub(crate) struct HeapSampler {
    shared: Arc<HeapShared>,
    window: GrowthWindow,
    source: Option<HeapSource>,
    pub(crate) period: Duration,
}

impl HeapSampler {
    pub(crate) fn new(shared: Arc<HeapShared>, window: Duration) -> Self {
        HeapSampler {
            shared,
            window: GrowthWindow::new(window, Instant::now()),
            source: None,
            period: (window / SAMPLES_PER_WINDOW).max(Duration::from_millis(1)),
        }
    }

    pub(crate) fn sample(&mut self, now: Instant) {
        let Some((bytes, source)) = read_heap() else {
            return;
        };
        if self.source != Some(source) {
            // A different source measures a different thing: restart the window.
            self.window.clear();
            self.source = Some(source);
        }
        self.window.push(now, bytes);
        let s = &self.shared;
        s.source.store(
            match source {
                HeapSource::CountingAllocator => 1,
                HeapSource::Jemalloc => 2,
            },
            Ordering::Relaxed,
        );
        s.window_us.store(
            u64::try_from(self.window.span().as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if let Some(r) = self.window.rate() {
            s.rate_bits.store(r.to_bits(), Ordering::Relaxed);
            s.has_rate.store(1, Ordering::Release);
        }
        s.allocated.store(bytes.min(NONE - 1), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_steady_leak_and_window_sliding() {
        let base = Instant::now();
        let mut w = GrowthWindow::new(Duration::from_secs(10), base);
        assert_eq!(w.rate(), None);
        for i in 0..100u64 {
            // 1000 B/s plus a sawtooth that averages out.
            let saw = if i % 2 == 0 { 500 } else { 0 };
            w.push(
                base + Duration::from_millis(i * 200),
                1_000_000 + i * 200 + saw,
            );
        }
        let r = w.rate().expect("rate");
        assert!((r - 1000.0).abs() < 50.0, "{r}");
        // Only the last 10 s are kept (51 samples at 200 ms).
        assert!(w.span() <= Duration::from_secs(10), "{:?}", w.span());
        assert!(w.samples.len() <= 51);
    }

    #[test]
    fn flat_and_shrinking_heap() {
        let base = Instant::now();
        let mut w = GrowthWindow::new(Duration::from_secs(10), base);
        for i in 0..10u64 {
            w.push(base + Duration::from_secs(i), 5_000 - i * 100);
        }
        assert!((w.rate().expect("rate") + 100.0).abs() < 1e-6);
        w.clear();
        for i in 0..10u64 {
            w.push(base + Duration::from_secs(i), 7);
        }
        assert_eq!(w.rate(), Some(0.0));
    }
}
