//! The scheduling-delay probe: an OS thread that spawns one tiny task at a time into the watched
//! runtime and measures spawn → first poll, detects stalls in progress, and rolls delay windows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::flush::FlushTrigger;
use crate::live::{Shared, WindowStats, lock, us};
use crate::nudge::{Claim, Nudge};
use crate::process::Sampler;
use crate::runtime::RuntimeSampler;
use crate::stacks::{self, Stacks};

/// Highest delay the window histogram tracks exactly: 1 hour in µs. Longer delays are clamped.
const MAX_TRACKABLE_US: u64 = 3_600_000_000;
/// Upper bound on coordinated-omission samples added to the exported histogram per real probe.
const MAX_CORRECTED_EXPORTED_SAMPLES: u64 = 100_000;

mod quiet;
mod schedule;

use quiet::Quiet;

pub(crate) use schedule::IDLE_AFTER;
use schedule::{IDLE_TICK, Outstanding, Ticks, Waiting};

/// Where the probe puts each delay it measures (and its corrected samples) for export: the
/// instrument registry's `tokio.schedule.duration`.
pub(crate) trait ScheduleSink: Send {
    /// One delay sample, in seconds.
    fn record(&self, seconds: f64);
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

/// How one probe ended.
enum Probed {
    /// Its delay was recorded.
    Done,
    /// loopwatch is stopping.
    Stopped,
    /// The watched runtime shut down (the thread kept sampling until loopwatch stopped).
    RuntimeGone,
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
    /// The exported delay histogram.
    pub(crate) schedule: Box<dyn ScheduleSink>,
    /// Stall stacks, when on: the probe task notes its threads, the stall captures them.
    pub(crate) stacks: Option<Arc<Stacks>>,
}

impl ProbeTask {
    /// Body of the `loopwatch-probe` thread; returns when `shared.stop` is set or the watched
    /// runtime has shut down.
    pub(crate) fn run(mut self) {
        let mut sampler = RuntimeSampler::new(&self.handle);
        let mut next_roll = Instant::now() + self.export_interval;
        let nudge = Arc::clone(&self.shared.nudge);
        nudge.set_thread(thread::current());
        let mut last_probe: Option<Instant> = None;
        let mut quiet = Quiet::default();
        let idle_tick = IDLE_TICK.max(self.probe_interval);
        let ticks = Ticks {
            probe: self.probe_interval,
            idle: idle_tick,
            long: self.idle_window.max(idle_tick),
        };
        let mut hook_misses = 0u32;
        // When the last nudge woke this thread, if it settled before this tick's probe: the
        // next probe is then due one interval after the nudge, not after the settled probe.
        let mut nudged_at: Option<Instant> = None;

        while !self.shared.stop.load(Ordering::Acquire) {
            let tick = Instant::now();
            let hook_seen = nudge.unparks();
            let quiet_for = quiet.observe(&self.handle, tick);
            let hook_trusted = schedule::hook_trusted(nudge.hooked(), hook_misses, hook_seen);
            if quiet.all_parked {
                // The next wake-up may start work: the tick after it wants to know when.
                nudge.want_wake_time();
            }
            let probe = schedule::probe_now(schedule::Tick {
                hook_trusted,
                all_parked: quiet.all_parked,
                since_probe: last_probe.map(|t| tick.saturating_duration_since(t)),
                window: self.export_interval,
            });
            if !probe {
                self.shared.idle_skips.fetch_add(1, Ordering::Relaxed);
            } else {
                let settle = schedule::wake_settle(
                    tick,
                    nudge.woke_at(),
                    nudged_at.is_some(),
                    self.probe_interval,
                );
                if !settle.is_zero() {
                    thread::sleep(settle);
                }
                // This spawn wakes a parked worker: not a sign of activity.
                quiet.own_wake = quiet.all_parked;
                last_probe = Some(tick);
                match self.probe_once(&mut sampler, &mut next_roll, quiet_for) {
                    Probed::Done => {}
                    Probed::Stopped => break,
                    Probed::RuntimeGone => return,
                }
            }
            let idle =
                quiet_for >= IDLE_AFTER && self.raise_idle(&nudge, &quiet, hook_trusted, hook_seen);
            let rest = schedule::rest(tick, idle, hook_trusted, nudged_at.take(), ticks);
            let before_sleep = rest
                .long
                .then(|| (Quiet::unparks(&self.handle), nudge.unparks()));
            self.rest(rest, &mut sampler, &mut next_roll, tick, quiet_for);
            let slept_through = idle && nudge.end_idle();
            if idle && !slept_through {
                // Nudged: a worker has just woken for new work. Let it get going before the
                // next probe is spawned, so that the probe does not count the worker's own
                // start-up from a quiet spell as scheduling delay (see `nudge_settle`).
                nudged_at = Some(Instant::now());
                thread::sleep(schedule::nudge_settle(self.probe_interval));
            }
            if slept_through && let Some((workers0, hook0)) = before_sleep {
                let woke = Quiet::unparks(&self.handle).saturating_sub(workers0);
                if schedule::hook_missed(woke, nudge.unparks().saturating_sub(hook0)) {
                    hook_misses += 1;
                    if hook_misses > schedule::HOOK_MISSES_TOLERATED {
                        tracing::warn!(
                            runtime = %self.runtime_name,
                            "the UnparkHook given to loopwatch does not report this runtime's \
                             wake-ups (installed on another runtime?); ignoring it: the probe \
                             thread looks at the quiet runtime every {:?}", ticks.idle
                        );
                    }
                }
            }
        }
        self.shared.outstanding.store(0, Ordering::Release);
    }

    /// Raises the idle flag for a quiet runtime; false (flag lowered again) when a worker woke
    /// after the tick's look and may have missed the flag.
    fn raise_idle(&self, nudge: &Nudge, quiet: &Quiet, hook_trusted: bool, hook_seen: u64) -> bool {
        nudge.begin_idle();
        if quiet.woke_since(&self.handle) || (hook_trusted && nudge.unparks() != hook_seen) {
            nudge.end_idle();
            return false;
        }
        true
    }

    /// Sleeps until the next tick is due (unpark on shutdown wakes it early). A quiet runtime
    /// is looked at every idle tick instead, and the stuck checks and heap samples ride on
    /// those ticks (a parked worker is not stuck); a nudge (`Shared::wake_if_idle`, or the
    /// unpark hook) ends the idle sleep early.
    fn rest(
        &mut self,
        rest: schedule::Rest,
        sampler: &mut RuntimeSampler,
        next_roll: &mut Instant,
        tick: Instant,
        quiet_for: Duration,
    ) {
        loop {
            if self.shared.stop.load(Ordering::Acquire)
                || (rest.idle && !self.shared.nudge.is_idle())
            {
                return;
            }
            let now = Instant::now();
            if now >= rest.due {
                return;
            }
            self.sampler.run_due(now);
            if now >= *next_roll {
                self.window_end(sampler, None, quiet_for);
                *next_roll = now + self.export_interval;
            }
            let busy = schedule::busy_window(tick, quiet_for, self.window_start);
            let until = schedule::park_until(rest, busy, *next_roll, self.sampler.next_check_due());
            thread::park_timeout(until.saturating_duration_since(now));
        }
    }

    /// Spawns one probe into the watched runtime and waits for its first poll, reporting a
    /// stall while it grows; records the delay.
    fn probe_once(
        &mut self,
        sampler: &mut RuntimeSampler,
        next_roll: &mut Instant,
        quiet_for: Duration,
    ) -> Probed {
        let slot = Arc::new(AtomicU64::new(0));
        let task_slot = Arc::clone(&slot);
        let shared = Arc::clone(&self.shared);
        let waker = thread::current();
        let noter = self.stacks.as_ref().map(|s| s.threads());

        let t0 = Instant::now();
        let t0_us = us(t0.saturating_duration_since(self.shared.base));
        self.shared.outstanding.store(t0_us + 1, Ordering::Release);
        let join = self.handle.spawn(async move {
            if let Some(t) = &noter {
                t.note_driver();
            }
            task_slot.store(shared.now_us() + 1, Ordering::Release);
            waker.unpark();
        });

        // Loopwatch's own pipeline wants the early export; another provider's does not.
        let mut o = Outstanding {
            early_export_done: !self.drive_exports,
            ..Outstanding::default()
        };
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
                return Probed::RuntimeGone;
            }
            let now = Instant::now();
            self.sampler.run_due(now);
            let age = now.saturating_duration_since(t0);
            let step = schedule::while_outstanding(
                &mut o,
                Waiting {
                    age,
                    threshold: self.stall_threshold,
                    stacks: self.stacks.is_some(),
                    until_roll: next_roll.saturating_duration_since(now),
                    window: self.export_interval,
                    until_check: self.sampler.next_check_due().saturating_duration_since(now),
                },
            );
            self.carry_out(step, age, sampler, next_roll, now, quiet_for);
            thread::park_timeout(step.park);
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
        let Some(t1_us) = t1_us else {
            return Probed::Stopped;
        };
        self.probed(
            t1_us.saturating_sub(t0_us),
            o.stalled,
            sampler,
            next_roll,
            quiet_for,
        );
        Probed::Done
    }

    /// Carries out one step decided while a probe is outstanding.
    fn carry_out(
        &mut self,
        step: schedule::WaitStep,
        age: Duration,
        sampler: &mut RuntimeSampler,
        next_roll: &mut Instant,
        now: Instant,
        quiet_for: Duration,
    ) {
        if step.early_export {
            self.flush.request();
        }
        if step.stall {
            self.shared.stalls.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                runtime = %self.runtime_name,
                stalled_ms = age.as_millis() as u64,
                threshold_ms = self.stall_threshold.as_millis() as u64,
                "tokio runtime stalled: a task scheduled {age:?} ago has not been polled yet"
            );
            self.flush.request();
        }
        if let Some(s) = &self.stacks {
            if step.warm_stacks {
                // At most half the time left to the threshold: the stall is seen on time.
                s.warm(self.stall_threshold.saturating_sub(age) / 2);
            }
            if let Some(nth) = step.capture {
                s.capture(stacks::Kind::Stall, age, nth, None);
            }
        }
        if step.roll {
            self.window_end(sampler, Some(age), quiet_for);
            *next_roll = now + self.export_interval;
        }
    }

    /// Records a completed probe's delay; a stall's end rolls the window and exports at once.
    fn probed(
        &mut self,
        delay_us: u64,
        stalled: bool,
        sampler: &mut RuntimeSampler,
        next_roll: &mut Instant,
        quiet_for: Duration,
    ) {
        let interval_us = us(self.probe_interval).max(1);
        self.shared.probes.fetch_add(1, Ordering::Relaxed);
        self.window.record(delay_us, interval_us);
        self.record_exported(delay_us, interval_us);
        let now = Instant::now();
        if stalled {
            tracing::warn!(
                runtime = %self.runtime_name,
                delay_ms = delay_us / 1000,
                "tokio runtime stall ended"
            );
            self.roll(sampler, None);
            // Published after the window, so readers seeing it also see the stall's window.
            self.shared.last_stall_us.store(delay_us, Ordering::Release);
            *next_roll = now + self.export_interval;
            self.flush.request();
        } else if now >= *next_roll {
            self.window_end(sampler, None, quiet_for);
            *next_roll = now + self.export_interval;
        }
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

    fn record_exported(&self, delay_us: u64, interval_us: u64) {
        let mut v = delay_us;
        let mut n = 0;
        loop {
            self.schedule.record(v as f64 / 1e6);
            n += 1;
            if v < interval_us.saturating_mul(2) || n >= MAX_CORRECTED_EXPORTED_SAMPLES {
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
