//! What the measuring threads publish and everyone else reads: the probe's live state
//! ([`Shared`]), its window statistics and the public [`ProbeSnapshot`]. A leaf: it imports no
//! subsystem, so the probe, the instruments, the layers and the guard all depend on it, and it
//! on none of them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::nudge::Nudge;
use crate::runtime::RuntimeSnapshot;

/// Values read by [`crate::LoopwatchGuard::snapshot`] and by the observable gauges.
///
/// Delay fields describe the last completed window (see the crate docs for how windows work).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct ProbeSnapshot {
    /// Age of the outstanding probe (`now - t0`), zero when no probe is outstanding. While the
    /// runtime is blocked this grows in real time.
    pub current_stall: Duration,
    /// Stalls counted since start (a stall is counted once, when it passes the threshold).
    pub stalls: u64,
    /// Smallest delay in the last window (corrected samples included).
    pub delay_min: Duration,
    /// Largest delay in the last window (never above a really measured delay).
    pub delay_max: Duration,
    /// Mean delay of the last window (coordinated-omission corrected).
    pub delay_mean: Duration,
    /// Median delay of the last window (corrected).
    pub delay_p50: Duration,
    /// 90th percentile delay of the last window (corrected).
    pub delay_p90: Duration,
    /// 99th percentile delay of the last window (corrected).
    pub delay_p99: Duration,
    /// Samples in the last window, including coordinated-omission corrected samples.
    pub window_samples: u64,
    /// Windows completed since start.
    pub windows: u64,
    /// Real probes completed since start (not counting corrected samples).
    pub probes: u64,
    /// Probe ticks skipped because every worker was parked (idle runtime: no delay possible).
    pub idle_skips: u64,
    /// Measured delay of the most recent probe that exceeded the stall threshold (zero if none).
    pub last_stall: Duration,
    /// Runtime metrics from the last window.
    pub runtime: RuntimeSnapshot,
}

/// Statistics of one window, µs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WindowStats {
    pub(crate) min_us: u64,
    pub(crate) max_us: u64,
    pub(crate) mean_us: f64,
    pub(crate) p50_us: u64,
    pub(crate) p90_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) samples: u64,
}

/// State shared between the probe thread, the guard and the metric callbacks. No runtime
/// primitive is involved: atomics plus std mutexes held only for copies.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) base: Instant,
    pub(crate) stop: AtomicBool,
    /// Set after the final flush: observable callbacks stop reporting.
    pub(crate) silenced: AtomicBool,
    /// `t0` (µs since `base`) + 1 of the outstanding probe; 0 when none.
    pub(crate) outstanding: AtomicU64,
    pub(crate) stalls: AtomicU64,
    pub(crate) probes: AtomicU64,
    pub(crate) idle_skips: AtomicU64,
    pub(crate) windows: AtomicU64,
    pub(crate) last_stall_us: AtomicU64,
    /// Sum of all completed probe delays, µs (probes are sequential, so their delay intervals
    /// are disjoint): a clock of "time the runtime was late" read by the route layer.
    pub(crate) delayed_total_us: AtomicU64,
    /// Delay of the most recently completed probe, µs, and when it completed (µs since
    /// `base`, + 1; 0 = none): lets a request that starts right after a block see it.
    pub(crate) last_delay_us: AtomicU64,
    pub(crate) last_delay_end_us: AtomicU64,
    pub(crate) window: Mutex<WindowStats>,
    pub(crate) runtime: Mutex<RuntimeSnapshot>,
    /// The probe thread's idle flag, woken by nudges and by an [`crate::UnparkHook`].
    pub(crate) nudge: Arc<Nudge>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Shared {
    pub(crate) fn new(nudge: Arc<Nudge>) -> Self {
        Shared {
            base: Instant::now(),
            stop: AtomicBool::new(false),
            silenced: AtomicBool::new(false),
            outstanding: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            idle_skips: AtomicU64::new(0),
            windows: AtomicU64::new(0),
            last_stall_us: AtomicU64::new(0),
            delayed_total_us: AtomicU64::new(0),
            last_delay_us: AtomicU64::new(0),
            last_delay_end_us: AtomicU64::new(0),
            window: Mutex::new(WindowStats::default()),
            runtime: Mutex::new(RuntimeSnapshot::default()),
            nudge,
        }
    }

    #[cfg(feature = "axum")]
    /// A nudge from work starting on the watched runtime (e.g. a request's first poll): if
    /// the probe thread is sleeping an idle tick, wakes it now, so that the probe samples from
    /// (about) the start of that work instead of up to [`IDLE_TICK`] later. See
    /// [`Nudge::wake_if_idle`].
    pub(crate) fn wake_if_idle(&self) {
        self.nudge.wake_if_idle();
    }

    /// Whether metric callbacks should still report.
    pub(crate) fn live(&self) -> bool {
        !self.silenced.load(Ordering::Acquire)
    }

    /// Stops metric callbacks from reporting (after the final flush).
    pub(crate) fn silence(&self) {
        self.silenced.store(true, Ordering::Release);
    }

    pub(crate) fn now_us(&self) -> u64 {
        us(self.base.elapsed())
    }

    /// Current stall (age of the outstanding probe).
    pub(crate) fn current_stall(&self) -> Duration {
        match self.outstanding.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            t0 => Duration::from_micros(self.now_us().saturating_sub(t0 - 1)),
        }
    }

    #[cfg(feature = "axum")]
    /// Scheduling delay accumulated since start, µs: completed probe delays plus the age of the
    /// outstanding probe. Monotonic up to a transient overcount of one probe (readers clamp).
    /// How late the runtime was just before `now`: the age of the outstanding probe, or the
    /// delay of a probe that completed within `recent` before `now`. A request whose first
    /// poll sees a large value was (very likely) queued behind that block, from some time
    /// during it: an upper bound of its unseen wait.
    pub(crate) fn stall_before_us(&self, now: Instant, recent: Duration) -> u64 {
        let now_us = us(now.saturating_duration_since(self.base));
        let outstanding = match self.outstanding.load(Ordering::Acquire) {
            0 => 0,
            t0 => now_us.saturating_sub(t0 - 1),
        };
        let end = self.last_delay_end_us.load(Ordering::Acquire);
        let last = if end != 0 && now_us.saturating_sub(end - 1) <= us(recent) {
            self.last_delay_us.load(Ordering::Acquire)
        } else {
            0
        };
        outstanding.max(last)
    }

    #[cfg(feature = "axum")]
    /// As of now. The clock is read only while a probe is outstanding (a stall in progress):
    /// otherwise the total of ended delays is the answer.
    pub(crate) fn delayed_clock_us_now(&self) -> u64 {
        let done = self.delayed_total_us.load(Ordering::Acquire);
        let stall = match self.outstanding.load(Ordering::Acquire) {
            0 => 0,
            t0 => us(Instant::now().saturating_duration_since(self.base)).saturating_sub(t0 - 1),
        };
        done.saturating_add(stall)
    }

    pub(crate) fn window(&self) -> WindowStats {
        *lock(&self.window)
    }

    pub(crate) fn runtime(&self) -> RuntimeSnapshot {
        *lock(&self.runtime)
    }

    pub(crate) fn snapshot(&self) -> ProbeSnapshot {
        // last_stall first: it is published after its window (Release/Acquire).
        let last_stall_us = self.last_stall_us.load(Ordering::Acquire);
        let w = self.window();
        let d = Duration::from_micros;
        ProbeSnapshot {
            current_stall: self.current_stall(),
            stalls: self.stalls.load(Ordering::Relaxed),
            delay_min: d(w.min_us),
            delay_max: d(w.max_us),
            delay_mean: Duration::from_secs_f64(w.mean_us.max(0.0) / 1e6),
            delay_p50: d(w.p50_us),
            delay_p90: d(w.p90_us),
            delay_p99: d(w.p99_us),
            window_samples: w.samples,
            windows: self.windows.load(Ordering::Relaxed),
            probes: self.probes.load(Ordering::Relaxed),
            idle_skips: self.idle_skips.load(Ordering::Relaxed),
            last_stall: d(last_stall_us),
            runtime: self.runtime(),
        }
    }
}
