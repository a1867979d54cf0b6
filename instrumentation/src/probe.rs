//! The scheduling-delay probe: an OS thread that spawns one tiny task at a time into the watched
//! runtime and measures spawn → first poll, detects stalls in progress, and rolls delay windows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram as OtelHistogram};

use crate::export::FlushTrigger;
use crate::process::Sampler;
use crate::runtime::{RuntimeSampler, RuntimeSnapshot};
use crate::stacks::{self, Stacks};
use crate::unpark::{Claim, Nudge};

/// Highest delay the window histogram tracks exactly: 1 hour in µs. Longer delays are clamped.
const MAX_TRACKABLE_US: u64 = 3_600_000_000;
/// Upper bound on coordinated-omission samples added to the OTel histogram per real probe.
const MAX_CORRECTED_OTEL_SAMPLES: u64 = 100_000;
/// How often the probe thread re-checks an outstanding probe even without a deadline.
const MAX_PARK: Duration = Duration::from_millis(50);
/// How long the watched runtime must stay *quiet* (every worker parked, and none woke up in
/// between) before the probe thread lengthens its tick to [`IDLE_TICK`].
pub(crate) const IDLE_AFTER: Duration = Duration::from_millis(200);
/// The probe thread's tick while the runtime is quiet (never shorter than the probe interval).
/// A block that starts from a quiet runtime without a nudge ([`Shared::wake_if_idle`]) is
/// probed up to this much after its start (instead of one probe interval): read up to 25 ms
/// low, and a stall reported up to 25 ms later. 25 ms keeps the stall export within the
/// detection budget (`stall_threshold` + 50 ms, an export taking ~15 ms) while cutting the
/// idle probe thread's wake-ups from 100/s to 40/s. With an [`crate::UnparkHook`] installed,
/// every wake-up of the runtime nudges the probe thread, which then sleeps until the next
/// heartbeat export instead (`ProbeTask::idle_window`; see [`HOOK_MISSES_TOLERATED`]).
pub(crate) const IDLE_TICK: Duration = Duration::from_millis(25);
/// How much earlier than one probe interval after the last tick the probe thread asks to be
/// woken: a sleep ends late by the timer slack (50 µs) plus the scheduler's wake-up latency
/// (tenths of a millisecond on a virtual machine), and the probe must sample at least once per
/// interval. 1/20 of the
/// interval, at most 0.5 ms: a 10 ms interval ticks every ~9.6 ms.
fn tick_early(interval: Duration) -> Duration {
    (interval / 20).min(Duration::from_micros(500))
}

/// How long the probe thread waits after a nudge (a worker of a quiet runtime woke for new
/// work) before its next probe. The woken worker first gets going: it runs the I/O and timer
/// drivers and, after a quiet spell, touches cold caches and pages (0.5–3 ms on the benchmark
/// VM) before it polls the task it woke for. A probe spawned meanwhile would count that
/// start-up, and read a block that starts the work up to that much above the block. At most half
/// the probe interval (4 ms at most), so that such a block is still probed within one interval
/// of its start, and a stall reported at most that much later.
fn nudge_settle(interval: Duration) -> Duration {
    (interval / 2).min(Duration::from_millis(4))
}

/// Timed-out long idle sleeps after which the runtime had woken without the hook reporting it:
/// beyond this many, the hook is taken as not installed on the watched runtime and ignored.
const HOOK_MISSES_TOLERATED: u32 = 2;

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
    base: Instant,
    pub(crate) stop: AtomicBool,
    /// Set after the final flush: observable callbacks stop reporting.
    silenced: AtomicBool,
    /// `t0` (µs since `base`) + 1 of the outstanding probe; 0 when none.
    outstanding: AtomicU64,
    stalls: AtomicU64,
    probes: AtomicU64,
    idle_skips: AtomicU64,
    windows: AtomicU64,
    last_stall_us: AtomicU64,
    /// Sum of all completed probe delays, µs (probes are sequential, so their delay intervals
    /// are disjoint): a clock of "time the runtime was late" read by the route layer.
    delayed_total_us: AtomicU64,
    /// Delay of the most recently completed probe, µs, and when it completed (µs since
    /// `base`, + 1; 0 = none): lets a request that starts right after a block see it.
    last_delay_us: AtomicU64,
    last_delay_end_us: AtomicU64,
    window: Mutex<WindowStats>,
    runtime: Mutex<RuntimeSnapshot>,
    /// The probe thread's idle flag, woken by nudges and by an [`crate::UnparkHook`].
    pub(crate) nudge: Arc<Nudge>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn us(d: Duration) -> u64 {
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

    fn now_us(&self) -> u64 {
        us(self.base.elapsed())
    }

    /// Current stall (age of the outstanding probe).
    pub(crate) fn current_stall(&self) -> Duration {
        match self.outstanding.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            t0 => Duration::from_micros(self.now_us().saturating_sub(t0 - 1)),
        }
    }

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

/// The delay samples of the current window: an HDR histogram (µs, 3 significant figures) plus
/// the exact min/max, so that reported values never exceed a really measured delay.
pub(crate) struct Window {
    hist: Histogram<u64>,
    exact_min: u64,
    exact_max: u64,
}

impl Window {
    pub(crate) fn new() -> Result<Self, hdrhistogram::CreationError> {
        // Auto-resizing from a small array: the counts only cover delays seen so far (a few
        // KiB for sub-millisecond delays, up to ~190 KiB at the 1 h clamp), so that the reset
        // every window and the percentile scans do not touch the full range.
        let mut hist = Histogram::new_with_bounds(1, 2, 3)?;
        hist.auto(true);
        Ok(Window {
            hist,
            exact_min: u64::MAX,
            exact_max: 0,
        })
    }

    /// Records one real delay with coordinated-omission correction: a delay `d` also adds
    /// `d - i`, `d - 2i`, ... (down to `i`), the delays that probes due every `i` during the
    /// block would have seen.
    fn record(&mut self, delay_us: u64, interval_us: u64) {
        let v = delay_us.clamp(1, MAX_TRACKABLE_US);
        // Cannot fail: v is within the histogram's bounds.
        let _ = self.hist.record_correct(v, interval_us);
        // Smallest corrected sample: v - k*i for the largest k that keeps it >= i.
        let lowest = if interval_us > 0 && v >= 2 * interval_us {
            interval_us + (v - interval_us) % interval_us
        } else {
            v
        };
        self.exact_min = self.exact_min.min(lowest.min(delay_us.max(1)));
        self.exact_max = self.exact_max.max(delay_us);
    }

    /// Statistics of this window; percentiles are clamped to the exact max (never high) and
    /// the exact lowest sample (real or corrected).
    fn stats(&self) -> WindowStats {
        if self.hist.is_empty() {
            return WindowStats::default();
        }
        let clamp = |v: u64| v.min(self.exact_max).max(self.exact_min);
        WindowStats {
            min_us: self.exact_min,
            max_us: self.exact_max,
            mean_us: self
                .hist
                .mean()
                .min(self.exact_max as f64)
                .max(self.exact_min as f64),
            p50_us: clamp(self.hist.value_at_quantile(0.50)),
            p90_us: clamp(self.hist.value_at_quantile(0.90)),
            p99_us: clamp(self.hist.value_at_quantile(0.99)),
            samples: self.hist.len(),
        }
    }

    fn reset(&mut self) {
        if !self.hist.is_empty() {
            self.hist.reset();
        }
        self.exact_min = u64::MAX;
        self.exact_max = 0;
    }
}

/// Whether the watched runtime is *quiet*: every worker parked and no worker woke up since the
/// previous look (`worker_park_unpark_count` is odd while parked and changes on every wake-up).
/// A quiet runtime has no scheduling delay to measure and no stuck worker.
#[derive(Default)]
struct Quiet {
    counts: Vec<u64>,
    /// Since when the runtime has been seen quiet; `None` while it is not.
    since: Option<Instant>,
    /// The last look found every worker parked.
    all_parked: bool,
    /// loopwatch's own idle probe woke a worker: the next change of counts is not activity.
    own_wake: bool,
}

impl Quiet {
    /// Looks at the runtime's workers at `now`; returns how long it has been quiet.
    fn observe(&mut self, handle: &tokio::runtime::Handle, now: Instant) -> Duration {
        let m = handle.metrics();
        let n = m.num_workers();
        let mut same = self.counts.len() == n;
        self.counts.resize(n, 0);
        let mut all_parked = n > 0;
        for (w, seen) in self.counts.iter_mut().enumerate() {
            let c = m.worker_park_unpark_count(w);
            all_parked &= c % 2 == 1;
            same &= *seen == c;
            *seen = c;
        }
        self.all_parked = all_parked;
        let own = std::mem::take(&mut self.own_wake);
        self.since = match self.since {
            Some(s) if all_parked && (same || own) => Some(s),
            _ if all_parked => Some(now),
            _ => None,
        };
        self.since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// Wake-ups of all workers published so far (`worker_park_unpark_count / 2`: the count
    /// starts even while running, is odd while parked).
    fn unparks(handle: &tokio::runtime::Handle) -> u64 {
        let m = handle.metrics();
        (0..m.num_workers())
            .map(|w| m.worker_park_unpark_count(w) / 2)
            .sum()
    }

    /// Whether a worker woke up since the last [`Quiet::observe`] (the counts changed), not
    /// counting the wake-up of loopwatch's own idle probe.
    fn woke_since(&self, handle: &tokio::runtime::Handle) -> bool {
        if self.own_wake {
            return false;
        }
        let m = handle.metrics();
        m.num_workers() != self.counts.len()
            || self
                .counts
                .iter()
                .enumerate()
                .any(|(w, c)| m.worker_park_unpark_count(w) != *c)
    }
}

/// Everything the probe thread needs.
pub(crate) struct ProbeTask {
    pub(crate) shared: Arc<Shared>,
    /// This loopwatch's use of the nudge (and its hook): ends with this thread, however it ends.
    pub(crate) _claim: Claim,
    pub(crate) handle: tokio::runtime::Handle,
    pub(crate) probe_interval: Duration,
    pub(crate) stall_threshold: Duration,
    pub(crate) export_interval: Duration,
    /// How long the probe thread sleeps while the runtime is quiet and a trusted unpark hook
    /// reports its wake-ups: the pipeline's heartbeat (an export happens no more often then),
    /// or the export interval for a provider loopwatch does not own.
    pub(crate) idle_window: Duration,
    pub(crate) runtime_name: String,
    pub(crate) window: Window,
    pub(crate) flush: FlushTrigger,
    /// loopwatch's own pipeline: request an export after each window in which the runtime
    /// was not quiet (the flush thread's heartbeat covers quiet ones).
    pub(crate) drive_exports: bool,
    /// When the current window began (the last roll).
    pub(crate) window_start: Instant,
    /// Stuck-worker checks and heap samples, run on this thread's wake-ups.
    pub(crate) sampler: Sampler,
    pub(crate) schedule: OtelHistogram<f64>,
    pub(crate) stalls: Counter<u64>,
    pub(crate) attrs: Vec<KeyValue>,
    /// Stall stacks, when on: the probe task notes its threads, the stall captures them.
    pub(crate) stacks: Option<Arc<Stacks>>,
}

impl ProbeTask {
    /// Body of the `loopwatch-probe` thread; returns when `shared.stop` is set or the watched
    /// runtime has shut down.
    pub(crate) fn run(mut self) {
        let interval_us = us(self.probe_interval).max(1);
        let mut sampler = RuntimeSampler::new(&self.handle);
        let mut next_roll = Instant::now() + self.export_interval;
        let me = thread::current();
        let nudge = Arc::clone(&self.shared.nudge);
        nudge.set_thread(me.clone());
        let mut last_probe: Option<Instant> = None;
        let mut quiet = Quiet::default();
        let idle_tick = IDLE_TICK.max(self.probe_interval);
        let long_tick = self.idle_window.max(idle_tick);
        let mut hook_misses = 0u32;
        // When the last nudge woke this thread, if it settled before this tick's probe: the
        // next probe is then due one interval after the nudge, not after the settled probe.
        let mut nudged_at: Option<Instant> = None;

        while !self.shared.stop.load(Ordering::Acquire) {
            let tick = Instant::now();
            let hook_seen = nudge.unparks();
            let quiet_for = quiet.observe(&self.handle, tick);
            // A fully parked runtime has no scheduling delay: skip the spawn (and the wake-up
            // it would cost), but still probe once per window. A stall needs a busy worker,
            // which the next tick sees. With a working unpark hook every wake-up of the
            // runtime is reported: a quiet runtime needs no probe at all.
            let hook_trusted =
                nudge.hooked() && hook_misses <= HOOK_MISSES_TOLERATED && hook_seen > 0;
            let idle_probe_due = !hook_trusted
                && last_probe
                    .is_none_or(|t| tick.saturating_duration_since(t) >= self.export_interval);
            if !idle_probe_due && quiet.all_parked {
                self.shared.idle_skips.fetch_add(1, Ordering::Relaxed);
            } else {
                // This spawn wakes a parked worker: not a sign of activity.
                quiet.own_wake = quiet.all_parked;
                last_probe = Some(tick);
                let slot = Arc::new(AtomicU64::new(0));
                let task_slot = Arc::clone(&slot);
                let shared = Arc::clone(&self.shared);
                let waker = me.clone();
                let noter = self.stacks.as_ref().map(|s| s.threads());

                let t0 = Instant::now();
                let t0_us = us(t0.saturating_duration_since(self.shared.base));
                self.shared.outstanding.store(t0_us + 1, Ordering::Release);
                let join = self.handle.spawn(async move {
                    if let Some(t) = &noter {
                        t.note_current();
                    }
                    task_slot.store(shared.now_us() + 1, Ordering::Release);
                    waker.unpark();
                });

                let mut stalled = false;
                let mut stacks_taken = 0u8;
                // Half way to the threshold, one early export of the growing stall: it warms the
                // export path (an export after a quiet spell runs on cold caches and pages, tens
                // of ms here), so that the stall export at the threshold reaches the agent fast.
                let mut early_export = !self.drive_exports;
                let t1_us = loop {
                    let v = slot.load(Ordering::Acquire);
                    if v != 0 {
                        break Some(v - 1);
                    }
                    if self.shared.stop.load(Ordering::Acquire) {
                        break None;
                    }
                    if join.is_finished() {
                        // Finished without running: the watched runtime shut down.
                        let v = slot.load(Ordering::Acquire);
                        if v != 0 {
                            break Some(v - 1);
                        }
                        self.shared.outstanding.store(0, Ordering::Release);
                        tracing::debug!(runtime = %self.runtime_name, "watched runtime shut down; loopwatch probe stops");
                        self.sample_until_stop();
                        return;
                    }
                    let now = Instant::now();
                    self.sampler.run_due(now);
                    let age = now.saturating_duration_since(t0);
                    if !early_export && age >= self.stall_threshold / 2 {
                        early_export = true;
                        self.flush.request();
                    }
                    if !stalled && age >= self.stall_threshold {
                        stalled = true;
                        self.shared.stalls.fetch_add(1, Ordering::Relaxed);
                        self.stalls.add(1, &self.attrs);
                        tracing::warn!(
                            runtime = %self.runtime_name,
                            stalled_ms = age.as_millis() as u64,
                            threshold_ms = self.stall_threshold.as_millis() as u64,
                            "tokio runtime stalled: a task scheduled {age:?} ago has not been polled yet"
                        );
                        self.flush.request();
                    }
                    if let Some(s) = &self.stacks
                        && age >= self.stall_threshold / 2
                    {
                        s.warm();
                    }
                    if let Some(s) = &self.stacks
                        && let Some(nth) = stacks::decide(age, self.stall_threshold, stacks_taken)
                    {
                        stacks_taken = nth;
                        s.capture(stacks::Kind::Stall, age, nth, None);
                    }
                    if now >= next_roll {
                        self.window_end(&mut sampler, Some(age), quiet_for);
                        next_roll = now + self.export_interval;
                    }
                    let mut wait = MAX_PARK
                        .min(next_roll.saturating_duration_since(now))
                        .min(self.sampler.next_check_due().saturating_duration_since(now));
                    if !early_export {
                        wait = wait.min((self.stall_threshold / 2).saturating_sub(age));
                    }
                    if !stalled {
                        wait = wait.min(self.stall_threshold.saturating_sub(age));
                    }
                    if self.stacks.is_some()
                        && let Some(due) = stacks::next_due(self.stall_threshold, stacks_taken)
                    {
                        wait = wait.min(due.saturating_sub(age));
                    }
                    thread::park_timeout(wait.max(Duration::from_micros(50)));
                };
                if let Some(t1) = t1_us {
                    // Before clearing `outstanding`: readers may overcount, never undercount.
                    let d = t1.saturating_sub(t0_us);
                    self.shared.delayed_total_us.fetch_add(d, Ordering::AcqRel);
                    self.shared.last_delay_us.store(d, Ordering::Release);
                    self.shared
                        .last_delay_end_us
                        .store(t1 + 1, Ordering::Release);
                }
                self.shared.outstanding.store(0, Ordering::Release);
                let Some(t1_us) = t1_us else { break };

                let delay_us = t1_us.saturating_sub(t0_us);
                self.shared.probes.fetch_add(1, Ordering::Relaxed);
                self.window.record(delay_us, interval_us);
                self.record_otel(delay_us, interval_us);

                let now = Instant::now();
                if stalled {
                    tracing::warn!(
                        runtime = %self.runtime_name,
                        delay_ms = delay_us / 1000,
                        "tokio runtime stall ended"
                    );
                    self.roll(&mut sampler, None);
                    // Published after the window, so readers seeing it also see the stall's window.
                    self.shared.last_stall_us.store(delay_us, Ordering::Release);
                    next_roll = now + self.export_interval;
                    self.flush.request();
                } else if now >= next_roll {
                    self.window_end(&mut sampler, None, quiet_for);
                    next_roll = now + self.export_interval;
                }
            }

            // Sleep until the next probe is due (unpark on shutdown wakes us early). A runtime
            // quiet for IDLE_AFTER is looked at every idle tick instead, and the stuck checks
            // and heap samples ride on those ticks (a parked worker is not stuck); a nudge
            // (`Shared::wake_if_idle`, or the unpark hook) ends the idle sleep early. With a
            // working hook every wake-up of the runtime nudges, so the idle tick is long.
            let mut idle = quiet_for >= IDLE_AFTER;
            if idle {
                nudge.begin_idle();
                // A worker that woke after the look above may have missed the flag: look again.
                if quiet.woke_since(&self.handle) || (hook_trusted && nudge.unparks() != hook_seen)
                {
                    nudge.end_idle();
                    idle = false;
                }
            }
            let long = idle && hook_trusted;
            let before_sleep = long.then(|| (Quiet::unparks(&self.handle), nudge.unparks()));
            // After a settled nudge, count the busy interval from the nudge: the settled probe
            // may run before a block that started with the woken work (a worker still free),
            // and the next one must still come within one interval of that work's start.
            let base = match nudged_at.take() {
                Some(n) if !idle => n,
                _ => tick,
            };
            let due = base
                + if long {
                    long_tick
                } else if idle {
                    idle_tick
                } else {
                    // Aim early by the OS timer's overshoot, so that two probes are at most one
                    // interval apart and a block is read at most one interval low.
                    self.probe_interval - tick_early(self.probe_interval)
                };
            loop {
                if self.shared.stop.load(Ordering::Acquire) {
                    break;
                }
                if idle && !nudge.is_idle() {
                    break; // nudged: the runtime has work now
                }
                let now = Instant::now();
                if now >= due {
                    break;
                }
                self.sampler.run_due(now);
                if now >= next_roll {
                    self.window_end(&mut sampler, None, quiet_for);
                    next_roll = now + self.export_interval;
                }
                let until = if idle {
                    // A window in which the runtime was busy still ends on time: its export
                    // tells the agent that the runtime is calm again (after a stall, readiness
                    // recovers one export interval after it, not one heartbeat). Windows
                    // that are quiet throughout stretch to the heartbeat.
                    let busy_window = tick
                        .checked_sub(quiet_for)
                        .is_some_and(|quiet_since| quiet_since > self.window_start);
                    if busy_window { due.min(next_roll) } else { due }
                } else {
                    due.min(self.sampler.next_check_due())
                };
                thread::park_timeout(until.saturating_duration_since(now));
            }
            let slept_through = idle && nudge.end_idle();
            if idle && !slept_through {
                // Nudged: a worker has just woken for new work. Let it get going before the
                // next probe is spawned, so that the probe does not count the worker's own
                // start-up from a quiet spell as scheduling delay (see `nudge_settle`).
                nudged_at = Some(Instant::now());
                thread::sleep(nudge_settle(self.probe_interval));
            }
            if slept_through && let Some((workers0, hook0)) = before_sleep {
                // Slept through without a nudge: the runtime must not have woken meanwhile
                // (tokio may publish a wake-up late, never before the hook reports it).
                let woke = Quiet::unparks(&self.handle).saturating_sub(workers0);
                if woke > nudge.unparks().saturating_sub(hook0) {
                    hook_misses += 1;
                    if hook_misses > HOOK_MISSES_TOLERATED {
                        tracing::warn!(
                            runtime = %self.runtime_name,
                            "the UnparkHook given to loopwatch does not report this runtime's \
                             wake-ups (installed on another runtime?); ignoring it: the probe \
                             thread looks at the quiet runtime every {idle_tick:?}"
                        );
                    }
                }
            }
        }
        self.shared.outstanding.store(0, Ordering::Release);
    }

    /// After the watched runtime shut down: keeps the heap samples (and the stuck-worker
    /// check, which then clears its state) going until loopwatch stops, as they did on a
    /// thread of their own.
    fn sample_until_stop(&mut self) {
        while !self.shared.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            self.sampler.run_due(now);
            let wait = self.sampler.next_due().saturating_duration_since(now);
            thread::park_timeout(wait.max(Duration::from_micros(100)));
        }
    }

    fn record_otel(&self, delay_us: u64, interval_us: u64) {
        let mut v = delay_us;
        let mut n = 0;
        loop {
            self.schedule.record(v as f64 / 1e6, &self.attrs);
            n += 1;
            if v < interval_us.saturating_mul(2) || n >= MAX_CORRECTED_OTEL_SAMPLES {
                break;
            }
            v -= interval_us;
        }
    }

    /// The periodic end of a window: completes it and, for loopwatch's own pipeline, asks for
    /// an export unless the runtime was quiet for the whole window (then the flush thread's
    /// heartbeat exports, less often). `quiet_for`: how long the runtime has been quiet.
    fn window_end(
        &mut self,
        sampler: &mut RuntimeSampler,
        ongoing: Option<Duration>,
        quiet_for: Duration,
    ) {
        let active = quiet_for < self.window_start.elapsed();
        tracing::debug!(active, ?quiet_for, window = ?self.window_start.elapsed(), "loopwatch window end");
        self.roll(sampler, ongoing);
        if self.drive_exports && active {
            self.flush.request();
        }
    }

    /// Completes the current window. `ongoing` is the age of a probe still outstanding: if it
    /// exceeds one probe interval, the window also reports it (with its corrected samples) as a
    /// lower bound, so an ongoing stall never reads lower than the real one.
    fn roll(&mut self, sampler: &mut RuntimeSampler, ongoing: Option<Duration>) {
        let stats = match ongoing {
            Some(age) if age > self.probe_interval => {
                let mut copy = Window {
                    hist: self.window.hist.clone(),
                    exact_min: self.window.exact_min,
                    exact_max: self.window.exact_max,
                };
                copy.record(us(age), us(self.probe_interval).max(1));
                copy.stats()
            }
            _ => self.window.stats(),
        };
        self.window.reset();
        self.window_start = Instant::now();
        *lock(&self.shared.window) = stats;
        *lock(&self.shared.runtime) = sampler.sample();
        self.shared.windows.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nudged_probe_waits_half_an_interval_at_most_4_ms() {
        assert_eq!(
            nudge_settle(Duration::from_millis(10)),
            Duration::from_millis(4)
        );
        assert_eq!(
            nudge_settle(Duration::from_millis(2)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn ticks_aim_early_by_a_twentieth_of_the_interval_at_most_half_a_millisecond() {
        assert_eq!(
            tick_early(Duration::from_millis(10)),
            Duration::from_micros(500)
        );
        assert_eq!(
            tick_early(Duration::from_millis(100)),
            Duration::from_micros(500)
        );
        assert_eq!(
            tick_early(Duration::from_millis(2)),
            Duration::from_micros(100)
        );
        assert_eq!(
            tick_early(Duration::from_micros(100)),
            Duration::from_micros(5)
        );
    }

    #[test]
    fn quiet_tracks_a_parked_runtime_and_resets_on_a_wake_up() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let handle = rt.handle().clone();
        let stop = Arc::new(tokio::sync::Notify::new());
        let stop2 = Arc::clone(&stop);
        let driver = thread::spawn(move || rt.block_on(async move { stop2.notified().await }));
        let m = handle.metrics();
        let deadline = Instant::now() + Duration::from_secs(10);
        while m.worker_park_unpark_count(0).is_multiple_of(2) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }

        let mut q = Quiet::default();
        let t0 = Instant::now();
        q.observe(&handle, t0);
        assert!(
            q.all_parked && q.since == Some(t0),
            "parked runtime is quiet"
        );
        let later = t0 + Duration::from_millis(300);
        assert_eq!(q.observe(&handle, later), Duration::from_millis(300));
        assert!(!q.woke_since(&handle));

        // A spawn wakes the worker: no longer quiet from the first look after it.
        let task = handle.spawn(async {});
        while !task.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        assert!(q.woke_since(&handle));
        let after = later + Duration::from_millis(1);
        assert_eq!(q.observe(&handle, after), Duration::ZERO);
        assert!(q.since.is_none() || q.since == Some(after));

        // loopwatch's own idle probe is not activity.
        let mut q = Quiet::default();
        while m.worker_park_unpark_count(0).is_multiple_of(2) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        q.observe(&handle, t0);
        q.own_wake = true;
        let task = handle.spawn(async {});
        while (!task.is_finished() || m.worker_park_unpark_count(0).is_multiple_of(2))
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(1));
        }
        assert!(!q.woke_since(&handle), "own wake-up ignored");
        assert_eq!(q.observe(&handle, later), Duration::from_millis(300));

        stop.notify_one();
        driver.join().expect("driver");
    }

    #[test]
    fn corrected_window_reads_block_in_p99_and_never_high() {
        let mut w = Window::new().expect("histogram");
        for _ in 0..90 {
            w.record(80, 10_000);
        }
        w.record(1_500_000, 10_000);
        let s = w.stats();
        assert!(s.p99_us >= 1_400_000, "{s:?}");
        assert_eq!(s.max_us, 1_500_000);
        assert!(s.p99_us <= s.max_us);
        assert_eq!(s.min_us, 80);
        assert_eq!(s.samples, 90 + 150);
        w.reset();
        assert_eq!(w.stats().samples, 0);
    }

    #[test]
    fn lone_block_window_p99_holds_the_block() {
        // Only the stuck probe (idle runtime otherwise): 1.5 s -> p99 >= 1.4 s, max exact.
        let mut w = Window::new().expect("histogram");
        w.record(1_500_000, 10_000);
        let s = w.stats();
        assert!(s.p99_us >= 1_400_000, "{s:?}");
        assert!(s.p99_us <= 1_500_000 && s.max_us == 1_500_000, "{s:?}");
        // The smallest corrected sample; the median is mid-ramp, not clamped up to the block.
        assert_eq!(s.min_us, 10_000);
        assert!((700_000..=800_000).contains(&s.p50_us), "{s:?}");
    }

    #[test]
    fn percentiles_never_exceed_exact_max() {
        let mut w = Window::new().expect("histogram");
        w.record(1_234_567, 10_000_000);
        let s = w.stats();
        assert_eq!(s.max_us, 1_234_567);
        assert_eq!(s.p99_us, 1_234_567);
        assert!(s.mean_us <= 1_234_567.0);
    }
}
