//! The probe thread's schedule: when to probe, what to do while a probe is outstanding, and
//! how long to sleep. Pure decisions on the instants and durations they are given, so that each
//! rule has a unit test on a fake clock; [`super::ProbeTask::run`] only observes the runtime,
//! asks these functions and carries out the answer.
//!
//! The rules, each named by a test below:
//! - **quiet**: a fully parked runtime has no scheduling delay; its tick is skipped, except
//!   for one probe per window without a trusted hook.
//! - **heartbeat**: a quiet runtime whose wake-ups a trusted hook reports sleeps a long tick
//!   (the pipeline's heartbeat); without the hook it is looked at every [`IDLE_TICK`].
//! - **nudge and settle**: a nudge ends the idle sleep; the next probe waits
//!   [`nudge_settle`] and is due one interval after the nudge.
//! - **wake settle**: a tick that follows a wake-up the hook timed (the first after a tick that
//!   saw the runtime parked) by less than [`nudge_settle`] waits until that long after the
//!   wake-up before its probe; the tick after is still due one interval after this one.
//! - **busy-tick early aim**: a busy runtime is probed every interval, aimed early by
//!   [`tick_early`] so that two probes are at most one interval apart.
//! - **window roll**: windows end on time while a probe is outstanding and during an idle
//!   sleep of a window that was busy; windows quiet throughout stretch to the heartbeat.
//! - **early export**: half way to the stall threshold, one export warms the export path.
//! - **stall**: at the threshold, the stall is counted and exported once.
//! - **hook trust**: the unpark hook is trusted until it misses more than
//!   [`HOOK_MISSES_TOLERATED`] wake-ups.

use std::time::{Duration, Instant};

/// How often the probe thread re-checks an outstanding probe even without a deadline.
pub(super) const MAX_PARK: Duration = Duration::from_millis(50);
/// Shortest park while a probe is outstanding.
const MIN_PARK: Duration = Duration::from_micros(50);
/// How long the watched runtime must stay *quiet* (every worker parked, and none woke up in
/// between) before the probe thread lengthens its tick to [`IDLE_TICK`].
pub(crate) const IDLE_AFTER: Duration = Duration::from_millis(200);
/// The probe thread's tick while the runtime is quiet (never shorter than the probe interval).
/// A block that starts from a quiet runtime without a nudge ([`super::Shared::wake_if_idle`])
/// is probed up to this much after its start (instead of one probe interval): read up to 25 ms
/// low, and a stall reported up to 25 ms later. 25 ms keeps the stall export within the
/// detection budget (`stall_threshold` + 50 ms, an export taking ~15 ms) while cutting the
/// idle probe thread's wake-ups from 100/s to 40/s. With an [`crate::UnparkHook`] installed,
/// every wake-up of the runtime nudges the probe thread, which then sleeps until the next
/// heartbeat export instead (`ProbeTask::idle_window`; see [`HOOK_MISSES_TOLERATED`]).
pub(crate) const IDLE_TICK: Duration = Duration::from_millis(25);
/// Timed-out long idle sleeps after which the runtime had woken without the hook reporting it:
/// beyond this many, the hook is taken as not installed on the watched runtime and ignored.
pub(super) const HOOK_MISSES_TOLERATED: u32 = 2;

/// How much earlier than one probe interval after the last tick the probe thread asks to be
/// woken: a sleep ends late by the timer slack (50 µs) plus the scheduler's wake-up latency
/// (tenths of a millisecond on a virtual machine), and the probe must sample at least once per
/// interval. 1/20 of the interval, at most 0.5 ms: a 10 ms interval ticks every ~9.6 ms.
pub(super) fn tick_early(interval: Duration) -> Duration {
    (interval / 20).min(Duration::from_micros(500))
}

/// How long the probe thread waits after a nudge (a worker of a quiet runtime woke for new
/// work) before its next probe. The woken worker first gets going: it runs the I/O and timer
/// drivers and, after a quiet spell, touches cold caches and pages (milliseconds on a virtual
/// machine) before it polls the task it woke for. A probe spawned meanwhile would count that
/// start-up, and read a block that starts the work up to that much above the block. At most
/// half the probe interval (4 ms at most), so that such a block is still probed within one
/// interval of its start, and a stall reported at most that much later.
pub(super) fn nudge_settle(interval: Duration) -> Duration {
    (interval / 2).min(Duration::from_millis(4))
}

/// How long a tick at `tick` waits before its probe: a worker woke at `woke_at` (the hook's
/// first wake-up after a tick that saw the runtime parked) and may still be getting going, the
/// start-up that a probe spawned now would count as delay (see [`nudge_settle`]). The probe is
/// then spawned `nudge_settle` after the wake-up, so a block that starts with it is read at most
/// that much low. Nothing after a nudge's own settle.
pub(super) fn wake_settle(
    tick: Instant,
    woke_at: Option<Instant>,
    after_nudge: bool,
    interval: Duration,
) -> Duration {
    let settle = nudge_settle(interval);
    match woke_at {
        Some(w) if !after_nudge => (w + settle).saturating_duration_since(tick).min(settle),
        _ => Duration::ZERO,
    }
}

/// Whether the unpark hook's reports are trusted: one is installed, has reported at least one
/// wake-up, and has not missed more than [`HOOK_MISSES_TOLERATED`].
pub(super) fn hook_trusted(hooked: bool, misses: u32, reported: u64) -> bool {
    hooked && misses <= HOOK_MISSES_TOLERATED && reported > 0
}

/// Whether a long idle sleep that timed out shows a miss of the hook: the runtime's workers
/// woke more often than the hook reported meanwhile (tokio may publish a wake-up late, never
/// before the hook reports it).
pub(super) fn hook_missed(workers_woke: u64, hook_reported: u64) -> bool {
    workers_woke > hook_reported
}

/// What the probe thread sees at a tick.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tick {
    /// [`hook_trusted`].
    pub(super) hook_trusted: bool,
    /// Every worker is parked.
    pub(super) all_parked: bool,
    /// Time since the last probe was spawned (`None`: never).
    pub(super) since_probe: Option<Duration>,
    /// The export interval (one window).
    pub(super) window: Duration,
}

/// Whether to spawn a probe at this tick (else the tick is an idle skip).
pub(super) fn probe_now(t: Tick) -> bool {
    let idle_probe_due = !t.hook_trusted && t.since_probe.is_none_or(|d| d >= t.window);
    idle_probe_due || !t.all_parked
}

/// What happened so far while one probe is outstanding.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Outstanding {
    /// The early export was requested (or is not wanted: loopwatch does not drive exports).
    pub(super) early_export_done: bool,
    /// The stall was counted.
    pub(super) stalled: bool,
    /// Stack captures taken in this stall (see [`crate::stacks::decide`]).
    pub(super) stacks_taken: u8,
}

/// What the probe thread sees while its probe is outstanding.
#[derive(Debug, Clone, Copy)]
pub(super) struct Waiting {
    /// Age of the outstanding probe.
    pub(super) age: Duration,
    /// The stall threshold.
    pub(super) threshold: Duration,
    /// Stall stacks are on.
    pub(super) stacks: bool,
    /// Time left until the current window ends (zero: it is due).
    pub(super) until_roll: Duration,
    /// The export interval (the next window's length after a roll).
    pub(super) window: Duration,
    /// Time left until the stuck-worker check or heap sample is due.
    pub(super) until_check: Duration,
}

/// What to do now while a probe is outstanding, then how long to park.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct WaitStep {
    /// Request the early export (warms the export path).
    pub(super) early_export: bool,
    /// Count and report the stall, and request its export.
    pub(super) stall: bool,
    /// Start the stack reporter's preparation.
    pub(super) warm_stacks: bool,
    /// Capture stacks now (the capture's number in this stall).
    pub(super) capture: Option<u8>,
    /// End the window now (with the outstanding probe's age).
    pub(super) roll: bool,
    /// Park this long before looking again.
    pub(super) park: Duration,
}

/// Decides one step while a probe is outstanding, updating `o`.
pub(super) fn while_outstanding(o: &mut Outstanding, w: Waiting) -> WaitStep {
    let half = w.threshold / 2;
    let mut step = WaitStep::default();
    if !o.early_export_done && w.age >= half {
        o.early_export_done = true;
        step.early_export = true;
    }
    if !o.stalled && w.age >= w.threshold {
        o.stalled = true;
        step.stall = true;
    }
    if w.stacks {
        step.warm_stacks = w.age >= half;
        step.capture = crate::stacks::decide(w.age, w.threshold, o.stacks_taken);
        if let Some(nth) = step.capture {
            o.stacks_taken = nth;
        }
    }
    step.roll = w.until_roll.is_zero();
    let until_roll = if step.roll { w.window } else { w.until_roll };
    let mut park = MAX_PARK.min(until_roll).min(w.until_check);
    if !o.early_export_done {
        park = park.min(half.saturating_sub(w.age));
    }
    if !o.stalled {
        park = park.min(w.threshold.saturating_sub(w.age));
    }
    if w.stacks
        && let Some(due) = crate::stacks::next_due(w.threshold, o.stacks_taken)
    {
        park = park.min(due.saturating_sub(w.age));
    }
    step.park = park.max(MIN_PARK);
    step
}

/// How the probe thread rests after a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rest {
    /// The runtime is quiet: sleep until nudged or `due`.
    pub(super) idle: bool,
    /// Quiet with a trusted hook: the long (heartbeat) sleep.
    pub(super) long: bool,
    /// When the next tick is due.
    pub(super) due: Instant,
}

/// The probe thread's intervals.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ticks {
    /// The probe interval (busy runtime).
    pub(super) probe: Duration,
    /// The quiet runtime's tick without a trusted hook.
    pub(super) idle: Duration,
    /// The quiet runtime's tick with a trusted hook (the heartbeat).
    pub(super) long: Duration,
}

/// When the next tick is due. `idle` is whether the runtime is quiet (and stayed so while the
/// idle flag was raised); `nudged_at` is the last nudge that woke the thread, if any.
pub(super) fn rest(
    tick: Instant,
    idle: bool,
    hook_trusted: bool,
    nudged_at: Option<Instant>,
    t: Ticks,
) -> Rest {
    let long = idle && hook_trusted;
    // After a settled nudge, count the busy interval from the nudge: the settled probe may
    // run before a block that started with the woken work (a worker still free), and the next
    // one must still come within one interval of that work's start.
    let base = match nudged_at {
        Some(n) if !idle => n,
        _ => tick,
    };
    let due = base
        + if long {
            t.long
        } else if idle {
            t.idle
        } else {
            // Aim early by the OS timer's overshoot, so that two probes are at most one
            // interval apart and a block is read at most one interval low.
            t.probe - tick_early(t.probe)
        };
    Rest { idle, long, due }
}

/// Until when to park during the rest, looking again at `now`. A window in which the runtime
/// was busy still ends on time while idle: its export tells the agent that the runtime is calm
/// again (after a stall, readiness recovers one export interval after it, not one heartbeat).
/// Windows that are quiet throughout stretch to the heartbeat.
pub(super) fn park_until(
    r: Rest,
    busy_window: bool,
    next_roll: Instant,
    next_check: Instant,
) -> Instant {
    if r.idle {
        if busy_window {
            r.due.min(next_roll)
        } else {
            r.due
        }
    } else {
        r.due.min(next_check)
    }
}

/// Whether the current window saw the runtime busy: it has been quiet for `quiet_for` at
/// `tick`, and became quiet after the window started.
pub(super) fn busy_window(tick: Instant, quiet_for: Duration, window_start: Instant) -> bool {
    tick.checked_sub(quiet_for)
        .is_some_and(|quiet_since| quiet_since > window_start)
}

#[cfg(test)]
mod tests;
