//! Stuck workers: one worker of a `multi_thread` runtime blocked in a long poll while the other
//! workers keep serving (the probe then lands on a healthy worker and sees no delay).
//!
//! Two sources, checked on the `loopwatch-probe` thread every probe interval:
//!
//! * **Runtime metrics (stable tokio).** A worker publishes its metrics when it parks and at
//!   every maintenance tick (every 61 scheduler ticks), and its `worker_park_unpark_count` is
//!   odd while it is parked. A worker that is awake (even count) and has published nothing
//!   (neither its park/unpark count nor its busy time changed) for `stuck_threshold` has either
//!   been inside one poll for that long, or its last 61 polls averaged more than
//!   `stuck_threshold / 61` each. Either way it is not serving its queue. The reported duration
//!   is the time since loopwatch *saw* the worker's last published change: up to one check
//!   interval less than the time since that publish, which may include a few short polls (fewer
//!   than 61) before the long one. Limits: the task is unknown; a worker blocked in
//!   `block_in_place` hands its core away and is not reported; a worker that keeps finishing
//!   slow polls faster than the threshold is not reported. `multi_thread` runtimes only: the one
//!   worker of a `current_thread` runtime stuck is a stall, which the probe reports (and an
//!   undriven `current_thread` runtime would look awake). After the watched runtime shut down
//!   nothing is reported.
//! * **Poll hooks (`--cfg tokio_unstable`).** With `install_poll_hooks` on the runtime
//!   builder, every worker stamps the start of each poll and the spawn location of the task it
//!   polls into its own slot (two relaxed atomic stores and one clock read per poll; no lock, no
//!   allocation). The duration is then exact and the report names the task's spawn location.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::LoopwatchBuilder;
use crate::flush::FlushTrigger;
use crate::stacks::{self, Stacks};

impl LoopwatchBuilder {
    /// Time a worker must be stuck before it is reported as `tokio.worker.stuck.duration` and a
    /// `tracing` warning; default [`crate::config::LoopwatchBuilder::DEFAULT_STUCK_THRESHOLD`]. Must be at least 1 ms.
    pub fn stuck_threshold(mut self, threshold: Duration) -> Self {
        self.stuck_threshold = Some(threshold);
        self
    }
}

/// How a stuck worker was detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StuckSource {
    /// From runtime metrics (stable tokio): awake and no metrics published; duration is a lower
    /// bound, task unknown.
    RuntimeMetrics,
    /// From loopwatch's poll hooks (`--cfg tokio_unstable` + `crate::workers::install_poll_hooks`): exact
    /// duration of the current poll, with the task's spawn location.
    PollHooks,
}

/// A worker currently stuck (see the module docs of `workers` in the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StuckWorker {
    /// Worker index (`tokio.worker.index`), `0..num_workers`.
    pub index: usize,
    /// How long the worker has been stuck so far.
    pub stuck_for: Duration,
    /// Which signal found it.
    pub source: StuckSource,
    /// Where the task holding the worker was spawned (poll hooks only).
    pub location: Option<&'static std::panic::Location<'static>>,
}

/// Per-worker state published by the sampler for the gauges and [`crate::LoopwatchGuard`].
#[derive(Debug, Default)]
struct WorkerCell {
    /// Current stuck duration in µs, 0 when not stuck.
    stuck_us: AtomicU64,
    /// 1 + index into the location table of the task holding the worker; 0 = unknown.
    location: AtomicU32,
    /// 1 = runtime metrics, 2 = poll hooks.
    source: AtomicU32,
}

/// State shared between the sampler thread, the metric callbacks and the guard.
#[derive(Debug)]
pub(crate) struct WorkerShared {
    cells: Box<[WorkerCell]>,
    episodes: AtomicU64,
}

impl WorkerShared {
    pub(crate) fn new(workers: usize) -> Self {
        WorkerShared {
            cells: (0..workers).map(|_| WorkerCell::default()).collect(),
            episodes: AtomicU64::new(0),
        }
    }

    /// Workers stuck right now.
    pub(crate) fn stuck(&self) -> Vec<StuckWorker> {
        self.cells
            .iter()
            .enumerate()
            .filter_map(|(index, c)| {
                let us = c.stuck_us.load(Ordering::Acquire);
                (us > 0).then(|| StuckWorker {
                    index,
                    stuck_for: Duration::from_micros(us),
                    source: if c.source.load(Ordering::Relaxed) == 2 {
                        StuckSource::PollHooks
                    } else {
                        StuckSource::RuntimeMetrics
                    },
                    location: location_of(c.location.load(Ordering::Relaxed)),
                })
            })
            .collect()
    }

    /// Calls `f` with every worker's index, how long it has been stuck (zero when not) and,
    /// while stuck, where its task was spawned (poll hooks only).
    pub(crate) fn each(
        &self,
        mut f: impl FnMut(usize, Duration, Option<&'static std::panic::Location<'static>>),
    ) {
        for (i, c) in self.cells.iter().enumerate() {
            let us = c.stuck_us.load(Ordering::Acquire);
            let loc = (us > 0)
                .then(|| location_of(c.location.load(Ordering::Relaxed)))
                .flatten();
            f(i, Duration::from_micros(us), loc);
        }
    }

    /// Stuck episodes (a worker passing the threshold) since start.
    pub(crate) fn episodes(&self) -> u64 {
        self.episodes.load(Ordering::Relaxed)
    }
}

/// What the sampler remembers of one worker between checks.
#[derive(Debug, Clone, Copy)]
struct Seen {
    park_unpark: u64,
    busy: Duration,
    since: Instant,
}

/// Checks the workers of one runtime; runs on the `loopwatch-probe` thread (see `process::Sampler`).
pub(crate) struct WorkerWatch {
    handle: tokio::runtime::Handle,
    shared: Arc<WorkerShared>,
    threshold: Duration,
    seen: Vec<Option<Seen>>,
    in_episode: Vec<bool>,
    flush: FlushTrigger,
    runtime_name: String,
    /// Whether the metrics signal applies: `multi_thread` runtimes only (a `current_thread`
    /// runtime's one worker stuck is a stall, which the probe reports; and a `current_thread`
    /// runtime nobody drives with `block_on` would look awake).
    metrics_signal: bool,
    /// Cleared when the watched runtime shuts down (a sentinel task is dropped).
    alive: Arc<AtomicBool>,
    #[cfg(tokio_unstable)]
    hooks: hooks::SlotMap,
    /// Stall stacks, when on, and the captures taken in each worker's current episode.
    stacks: Option<Arc<Stacks>>,
    stacks_taken: Vec<u8>,
}

/// Dropped with the watched runtime's tasks at shutdown: marks the runtime gone.
struct Sentinel(Arc<AtomicBool>);

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl WorkerWatch {
    pub(crate) fn new(
        handle: tokio::runtime::Handle,
        shared: Arc<WorkerShared>,
        threshold: Duration,
        flush: FlushTrigger,
        runtime_name: String,
    ) -> Self {
        let n = shared.cells.len();
        let alive = Arc::new(AtomicBool::new(true));
        let sentinel = Sentinel(Arc::clone(&alive));
        // One task that never wakes (no cost): after the runtime shuts down, workers' metrics
        // freeze at whatever parity they had, which must not read as stuck.
        drop(handle.spawn(async move {
            let _sentinel = sentinel;
            std::future::pending::<()>().await;
        }));
        let metrics_signal = matches!(
            handle.runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread
        );
        WorkerWatch {
            handle,
            shared,
            threshold,
            seen: vec![None; n],
            in_episode: vec![false; n],
            flush,
            runtime_name,
            metrics_signal,
            alive,
            #[cfg(tokio_unstable)]
            hooks: hooks::SlotMap::new(n),
            stacks: None,
            stacks_taken: vec![0; n],
        }
    }

    /// Captures the stuck workers' stacks from now on.
    pub(crate) fn set_stacks(&mut self, stacks: Option<Arc<Stacks>>) {
        self.stacks = stacks;
    }

    /// One check of every worker.
    pub(crate) fn check(&mut self, now: Instant) {
        let m = self.handle.metrics();
        let mut n = m.num_workers().min(self.shared.cells.len());
        if !self.alive.load(Ordering::Acquire) {
            for c in self.shared.cells.iter() {
                c.stuck_us.store(0, Ordering::Release);
            }
            n = 0;
        }
        #[cfg(tokio_unstable)]
        self.hooks.refresh(&m, now);
        for w in 0..n {
            let park_unpark = m.worker_park_unpark_count(w);
            let busy = m.worker_total_busy_duration(w);
            let seen = match self.seen[w] {
                Some(s) if s.park_unpark == park_unpark && s.busy == busy => s,
                _ => Seen {
                    park_unpark,
                    busy,
                    since: now,
                },
            };
            self.seen[w] = Some(seen);
            let awake = self.metrics_signal && park_unpark.is_multiple_of(2);
            let metrics_stuck = awake
                .then(|| now.saturating_duration_since(seen.since))
                .filter(|d| *d >= self.threshold);

            #[cfg(tokio_unstable)]
            let hook = self.hooks.current_poll(w, now);
            #[cfg(not(tokio_unstable))]
            let hook: Option<(Duration, u32)> = None;

            // The hooks, when installed on this worker's thread, know the exact poll and take
            // precedence over the metrics signal.
            let found = match hook {
                Some((d, loc)) => (d >= self.threshold).then_some((d, loc, 2)),
                None => metrics_stuck.map(|d| (d, 0, 1)),
            };
            let cell = &self.shared.cells[w];
            match found {
                Some((d, loc, source)) => {
                    cell.location.store(loc, Ordering::Relaxed);
                    cell.source.store(source, Ordering::Relaxed);
                    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
                    cell.stuck_us.store(us, Ordering::Release);
                    if !self.in_episode[w] {
                        self.in_episode[w] = true;
                        self.report(w, d, loc);
                    }
                    if let Some(s) = &self.stacks
                        && let Some(nth) = stacks::decide(d, self.threshold, self.stacks_taken[w])
                    {
                        self.stacks_taken[w] = nth;
                        s.capture(stacks::Kind::Stuck, d, nth, Some(w));
                    }
                }
                None => {
                    cell.stuck_us.store(0, Ordering::Release);
                    self.in_episode[w] = false;
                    self.stacks_taken[w] = 0;
                }
            }
        }
    }

    fn report(&self, worker: usize, d: Duration, loc: u32) {
        self.shared.episodes.fetch_add(1, Ordering::Relaxed);
        match location_of(loc) {
            Some(l) => tracing::warn!(
                runtime = %self.runtime_name,
                worker,
                stuck_ms = d.as_millis() as u64,
                task.spawn_location = %l,
                "tokio.worker.stuck: worker {worker} has been in one poll for {d:?} (task spawned at {l})"
            ),
            None => tracing::warn!(
                runtime = %self.runtime_name,
                worker,
                stuck_ms = d.as_millis() as u64,
                "tokio.worker.stuck: worker {worker} has been awake without progress for {d:?}"
            ),
        }
        self.flush.request();
    }
}

/// The location interned at `1 + index` (0 = none).
fn location_of(idx: u32) -> Option<&'static std::panic::Location<'static>> {
    #[cfg(tokio_unstable)]
    {
        hooks::location(idx)
    }
    #[cfg(not(tokio_unstable))]
    {
        let _ = idx;
        None
    }
}

#[cfg(tokio_unstable)]
pub use hooks::{after_task_poll, before_task_poll, install_poll_hooks};

impl LoopwatchBuilder {
    /// Default time a worker must be stuck (awake without progress, or in one poll) before it is
    /// reported: 250 ms, the same as [`crate::config::LoopwatchBuilder::DEFAULT_STALL_THRESHOLD`].
    pub const DEFAULT_STUCK_THRESHOLD: Duration = Duration::from_millis(250);
}

/// Poll hooks: per-thread slots written on every poll, read by the sampler.
#[cfg(tokio_unstable)]
mod hooks {
    use std::panic::Location;
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};
    use std::thread::ThreadId;
    use std::time::{Duration, Instant};

    use tokio::runtime::{Builder, RuntimeMetrics, TaskMeta};

    /// Size of the spawn-location intern table; locations past it are reported as unknown.
    const LOCATIONS: usize = 1024;
    /// Linear-probe length in the intern table.
    const PROBES: usize = 16;

    static TABLE: [OnceLock<&'static Location<'static>>; LOCATIONS] =
        [const { OnceLock::new() }; LOCATIONS];
    static BASE: OnceLock<Instant> = OnceLock::new();
    static REGISTRY: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());

    /// One thread's current poll.
    #[derive(Debug)]
    pub(super) struct Slot {
        thread: ThreadId,
        /// ns since `BASE` + 1 at poll start; 0 while not polling.
        started: AtomicU64,
        /// 1 + intern index of the polled task's spawn location; 0 = unknown.
        location: AtomicU32,
        alive: AtomicBool,
    }

    struct Registered(Arc<Slot>);

    impl Drop for Registered {
        fn drop(&mut self) {
            self.0.alive.store(false, Ordering::Relaxed);
        }
    }

    thread_local! {
        static SLOT: Registered = {
            let slot = Arc::new(Slot {
                thread: std::thread::current().id(),
                started: AtomicU64::new(0),
                location: AtomicU32::new(0),
                alive: AtomicBool::new(true),
            });
            let mut r = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
            r.retain(|s| s.alive.load(Ordering::Relaxed));
            r.push(Arc::clone(&slot));
            Registered(slot)
        };
    }

    fn base() -> Instant {
        *BASE.get_or_init(Instant::now)
    }

    fn now_ns() -> u64 {
        u64::try_from(base().elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Interns `loc`; returns 1 + its index, or 0 when the table is full.
    fn intern(loc: &'static Location<'static>) -> u32 {
        let addr = std::ptr::from_ref(loc) as usize;
        let h = (addr >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize);
        let start = h >> (usize::BITS - 10);
        for i in 0..PROBES {
            let idx = (start + i) % LOCATIONS;
            let cell = &TABLE[idx];
            let found = match cell.get() {
                Some(l) => *l,
                None => *cell.get_or_init(|| loc),
            };
            if std::ptr::eq(found, loc) {
                return idx as u32 + 1;
            }
        }
        0
    }

    pub(super) fn location(idx: u32) -> Option<&'static Location<'static>> {
        let i = usize::try_from(idx).ok()?.checked_sub(1)?;
        TABLE.get(i).and_then(|c| c.get().copied())
    }

    /// Hook for `Builder::on_before_task_poll`: stamps the poll start and the task's spawn
    /// location into this thread's slot. One clock read and two relaxed/release atomic stores
    /// (plus, the first time a spawn location is seen, one entry in a fixed-size table).
    pub fn before_task_poll(meta: &TaskMeta<'_>) {
        let loc = intern(meta.spawned_at());
        let _ = SLOT.try_with(|s| {
            s.0.location.store(loc, Ordering::Relaxed);
            s.0.started
                .store(now_ns().saturating_add(1), Ordering::Release);
        });
    }

    /// Hook for `Builder::on_after_task_poll`: marks this thread's slot as not polling.
    pub fn after_task_poll(_meta: &TaskMeta<'_>) {
        let _ = SLOT.try_with(|s| s.0.started.store(0, Ordering::Release));
    }

    /// Installs loopwatch's poll hooks on a runtime builder (`--cfg tokio_unstable` only) and
    /// enables tokio's poll-time histogram (exported as `tokio.worker.poll.time.bucket`).
    ///
    /// ```ignore
    /// let mut b = tokio::runtime::Builder::new_multi_thread();
    /// loopwatch::workers::install_poll_hooks(&mut b).enable_all();
    /// let rt = b.build()?;
    /// ```
    ///
    /// This replaces any `on_before_task_poll` / `on_after_task_poll` callback set before
    /// (tokio keeps one of each); to keep your own, call [`crate::workers::before_task_poll`] and
    /// [`crate::workers::after_task_poll`] from it instead.
    pub fn install_poll_hooks(builder: &mut Builder) -> &mut Builder {
        let _ = base();
        builder
            .on_before_task_poll(before_task_poll)
            .on_after_task_poll(after_task_poll)
            .enable_metrics_poll_time_histogram()
    }

    /// Maps worker indexes to the slots of their threads.
    pub(super) struct SlotMap {
        slots: Vec<Option<(ThreadId, Arc<Slot>)>>,
        next_refresh: Option<Instant>,
    }

    impl SlotMap {
        pub(super) fn new(workers: usize) -> Self {
            SlotMap {
                slots: vec![None; workers],
                next_refresh: None,
            }
        }

        /// Re-reads the worker → thread mapping (at most every 200 ms, or when a worker has
        /// no slot yet, at most every 20 ms).
        pub(super) fn refresh(&mut self, m: &RuntimeMetrics, now: Instant) {
            if self.next_refresh.is_some_and(|t| now < t) {
                return;
            }
            let n = m.num_workers().min(self.slots.len());
            let registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
            let mut missing = false;
            for w in 0..n {
                let tid = m.worker_thread_id(w);
                let ok = matches!((&self.slots[w], tid), (Some((t, s)), Some(id)) if *t == id && s.alive.load(Ordering::Relaxed));
                if ok {
                    continue;
                }
                self.slots[w] = tid.and_then(|id| {
                    registry
                        .iter()
                        .find(|s| s.thread == id && s.alive.load(Ordering::Relaxed))
                        .map(|s| (id, Arc::clone(s)))
                });
                missing |= self.slots[w].is_none();
            }
            let wait = if missing { 20 } else { 200 };
            self.next_refresh = Some(now + Duration::from_millis(wait));
        }

        /// Duration of worker `w`'s current poll and its location index, if the worker's
        /// thread runs loopwatch's hooks and is polling.
        pub(super) fn current_poll(&self, w: usize, now: Instant) -> Option<(Duration, u32)> {
            let (_, slot) = self.slots.get(w)?.as_ref()?;
            let started = slot.started.load(Ordering::Acquire);
            if started == 0 {
                return Some((Duration::ZERO, 0));
            }
            let loc = slot.location.load(Ordering::Relaxed);
            // A poll that started and ended between the two loads is not stuck.
            if slot.started.load(Ordering::Acquire) != started {
                return Some((Duration::ZERO, 0));
            }
            let now_ns =
                u64::try_from(now.saturating_duration_since(base()).as_nanos()).unwrap_or(u64::MAX);
            Some((
                Duration::from_nanos(now_ns.saturating_sub(started - 1)),
                loc,
            ))
        }
    }
}
