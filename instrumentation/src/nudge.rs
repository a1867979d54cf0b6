//! The probe thread's idle flag and the means to wake it: a leaf shared by the probe, the
//! layers that nudge it and the [`crate::UnparkHook`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Microseconds since a process-wide origin (the first call): wake-up times as one atomic.
fn micros() -> u64 {
    u64::try_from(origin().elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// The probe thread's idle flag and the means to wake it: shared by the probe thread, the
/// nudges of the route layer and [`crate::shed::ShedLayer`], and an [`crate::UnparkHook`].
#[derive(Debug, Default)]
pub(crate) struct Nudge {
    /// True while the probe thread sleeps an idle tick; a nudge takes it and unparks the thread.
    idle_sleep: AtomicBool,
    /// Worker wake-ups reported by the hook.
    unparks: AtomicU64,
    /// The probe thread wants the time of the next wake-up (it saw every worker parked).
    wake_wanted: AtomicBool,
    /// When the first wake-up after `wake_wanted` happened: [`micros`] + 1, 0 for none.
    woke_at_us: AtomicU64,
    /// This nudge belongs to an [`crate::UnparkHook`] (wake-ups of the runtime are reported).
    hook: bool,
    /// A running loopwatch uses this nudge.
    claimed: AtomicBool,
    /// The `loopwatch-probe` thread while it runs. Locked only to wake it or to set it.
    thread: Mutex<Option<Thread>>,
}

impl Nudge {
    /// A nudge without a hook (wake-ups come only from requests).
    pub(crate) fn unhooked() -> Arc<Self> {
        Arc::new(Nudge::default())
    }

    /// A nudge whose wake-ups an [`crate::UnparkHook`] reports.
    pub(crate) fn hooked_new() -> Arc<Self> {
        Arc::new(Nudge {
            hook: true,
            ..Nudge::default()
        })
    }

    /// Whether wake-ups of the runtime are reported by an [`crate::UnparkHook`].
    pub(crate) fn hooked(&self) -> bool {
        self.hook
    }

    /// Worker wake-ups reported so far (0 without a hook, or a hook not installed).
    pub(crate) fn unparks(&self) -> u64 {
        self.unparks.load(Ordering::SeqCst)
    }

    /// Marks this nudge used by a starting loopwatch; `None` if a running one already uses it.
    /// The claim ends when the returned [`Claim`] is dropped: with the probe thread that owns
    /// it, or with a start that fails before that thread runs.
    pub(crate) fn claim(self: &Arc<Self>) -> Option<Claim> {
        (!self.claimed.swap(true, Ordering::AcqRel)).then(|| Claim(Arc::clone(self)))
    }

    /// The probe thread that wakes on nudges.
    pub(crate) fn set_thread(&self, t: Thread) {
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
    }

    /// The probe thread is about to sleep an idle tick; it must look at the runtime once more
    /// after this (a wake-up reported before the flag was set did not wake it).
    pub(crate) fn begin_idle(&self) {
        self.idle_sleep.store(true, Ordering::SeqCst);
    }

    /// Ends an idle sleep; returns whether it was still idle (not nudged).
    pub(crate) fn end_idle(&self) -> bool {
        self.idle_sleep.swap(false, Ordering::AcqRel)
    }

    /// Whether the probe thread is (still) in an idle sleep, i.e. was not nudged.
    pub(crate) fn is_idle(&self) -> bool {
        self.idle_sleep.load(Ordering::Acquire)
    }

    #[cfg(feature = "axum")]
    /// A nudge from work starting on the watched runtime: if the probe thread sleeps an idle
    /// tick, wakes it now. Otherwise one relaxed load; the wake-up (one `unpark`) happens once
    /// per quiet → busy transition. Best effort without a hook: a nudge racing with the probe
    /// thread falling asleep is seen at its next idle tick at the latest.
    pub(crate) fn wake_if_idle(&self) {
        if self.idle_sleep.load(Ordering::Relaxed) && self.idle_sleep.swap(false, Ordering::AcqRel)
        {
            self.unpark_thread();
        }
    }

    /// A worker of the watched runtime woke up. The count and the flag are both sequentially
    /// consistent: either the probe thread's second look sees this count, or this sees its
    /// flag (no lost wake-up).
    pub(crate) fn on_unpark(&self) {
        self.unparks.fetch_add(1, Ordering::SeqCst);
        // One clock read for the first wake-up after a tick that saw the runtime parked (at
        // most one per probe interval); one relaxed load for the others.
        if self.wake_wanted.load(Ordering::Relaxed)
            && self.wake_wanted.swap(false, Ordering::AcqRel)
        {
            self.woke_at_us
                .store(micros().saturating_add(1), Ordering::Release);
        }
        if self.idle_sleep.load(Ordering::SeqCst) && self.idle_sleep.swap(false, Ordering::AcqRel) {
            self.unpark_thread();
        }
    }

    /// Asks the hook for the time of the next wake-up (forgetting the last one).
    pub(crate) fn want_wake_time(&self) {
        if self.hook {
            self.woke_at_us.store(0, Ordering::Relaxed);
            self.wake_wanted.store(true, Ordering::Release);
        }
    }

    /// When the first wake-up after [`Nudge::want_wake_time`] happened, if the hook saw one.
    pub(crate) fn woke_at(&self) -> Option<Instant> {
        match self.woke_at_us.load(Ordering::Acquire) {
            0 => None,
            v => Some(origin() + Duration::from_micros(v - 1)),
        }
    }

    fn unpark_thread(&self) {
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            t.unpark();
        }
    }
}

/// A running loopwatch's use of a [`Nudge`]; dropping it forgets the probe thread and frees
/// the hook for another loopwatch.
pub(crate) struct Claim(Arc<Nudge>);

impl Drop for Claim {
    fn drop(&mut self) {
        *self.0.thread.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.0.claimed.store(false, Ordering::Release);
    }
}
