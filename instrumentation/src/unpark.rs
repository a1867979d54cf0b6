//! The watched runtime's unpark hook: wakes the idle `loopwatch-probe` thread the moment a
//! worker of the runtime wakes up, so that the probe thread can sleep long while the runtime is
//! quiet without seeing a block that starts from quiet any later.

use std::sync::Arc;

use crate::nudge::Nudge;

/// Lets loopwatch's probe thread sleep while the watched runtime is quiet: install it as the
/// runtime's `on_thread_unpark` hook and give it to [`crate::LoopwatchBuilder::unpark_hook`].
///
/// Without it, the probe thread of a quiet runtime (every worker parked) looks at the runtime
/// every 25 ms (40 wake-ups a second), because a block may start from quiet in work that no
/// request announces (a timer, a message). With it, a worker waking up wakes the probe thread
/// at once, so the probe thread sleeps until the next heartbeat export while the runtime is
/// quiet (one wake-up per 2.5 s with loopwatch's own pipeline, or per export interval if
/// longer; no idle probe wakes the runtime) and still probes a block from
/// its start.
///
/// Cost on the runtime: per worker wake-up (not per task or request), one thread-local read,
/// one atomic increment and one load; one `unpark` of the probe thread per quiet → busy
/// transition. (The first wake-up of each thread also notes it for stall stacks: one short
/// lock and one allocation.)
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hook = loopwatch::UnparkHook::new();
/// let mut builder = tokio::runtime::Builder::new_multi_thread();
/// hook.install(&mut builder).enable_all();
/// let rt = builder.build()?;
/// let guard = rt.block_on(async {
///     loopwatch::Loopwatch::builder()
///         .meter_provider(opentelemetry_sdk::metrics::SdkMeterProvider::builder().build())
///         .unpark_hook(hook)
///         .start()
/// })?;
/// guard.shutdown();
/// # Ok(())
/// # }
/// ```
///
/// One hook per runtime and per running loopwatch: starting a second loopwatch with a hook a
/// running one uses fails with [`crate::StartError::InvalidConfig`] (key `unpark_hook`). A hook
/// given to loopwatch but not installed on the watched runtime is noticed (the runtime wakes
/// without the hook reporting it) and then ignored, with a warning.
#[derive(Debug, Clone)]
pub struct UnparkHook {
    pub(crate) nudge: Arc<Nudge>,
    /// The runtime's threads, noted as they start, for stall stacks.
    pub(crate) threads: Arc<crate::threads::Threads>,
}

impl Default for UnparkHook {
    fn default() -> Self {
        Self::new()
    }
}

impl UnparkHook {
    /// A new hook, not yet installed.
    pub fn new() -> Self {
        UnparkHook {
            nudge: Nudge::hooked_new(),
            threads: Arc::new(crate::threads::Threads::new()),
        }
    }

    /// Sets `builder`'s `on_thread_unpark` to this hook, and its `on_thread_start` to note
    /// each runtime thread for stall stacks (replacing earlier ones; if you have your own, call
    /// [`UnparkHook::on_unpark`] and [`UnparkHook::on_thread_start`] from them instead).
    pub fn install<'b>(
        &self,
        builder: &'b mut tokio::runtime::Builder,
    ) -> &'b mut tokio::runtime::Builder {
        let threads = Arc::clone(&self.threads);
        builder
            .on_thread_unpark(self.callback())
            .on_thread_start(move || threads.note_current())
    }

    /// Notes the calling thread as one of the runtime's, so that stall stacks can capture it
    /// before the probe has run on it: call it from your own `on_thread_start` hook.
    pub fn on_thread_start(&self) {
        self.threads.note_current();
    }

    /// The hook as a closure for `tokio::runtime::Builder::on_thread_unpark`.
    pub fn callback(&self) -> impl Fn() + Send + Sync + 'static {
        let nudge = Arc::clone(&self.nudge);
        let threads = Arc::clone(&self.threads);
        move || {
            threads.note_driver();
            nudge.on_unpark();
        }
    }

    /// Reports one wake-up of a worker, and notes the calling thread as one that drives the
    /// runtime (for stall stacks: the `block_on` thread of a `current_thread` runtime is seen
    /// nowhere else before a probe runs on it): call it from your own `on_thread_unpark` hook.
    pub fn on_unpark(&self) {
        self.threads.note_driver();
        self.nudge.on_unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn nudge_wakes_an_idle_probe_thread_once() {
        let n = Nudge::unhooked();
        n.set_thread(std::thread::current());
        n.wake_if_idle(); // not sleeping an idle tick: nothing to take
        assert!(!n.is_idle());
        n.begin_idle();
        n.wake_if_idle();
        assert!(!n.is_idle(), "flag taken");
        assert!(!n.end_idle(), "nudged");
        // The unpark token is set: this returns at once (bounded in case it were not).
        std::thread::park_timeout(Duration::from_secs(30));
    }

    #[test]
    fn hook_counts_wake_ups_and_wakes_an_idle_probe_thread() {
        let hook = UnparkHook::new();
        let n = Arc::clone(&hook.nudge);
        assert!(n.hooked() && !Nudge::unhooked().hooked());
        n.set_thread(std::thread::current());
        hook.on_unpark();
        assert_eq!(n.unparks(), 1);
        assert!(!n.is_idle());
        n.begin_idle();
        (hook.callback())();
        assert_eq!(n.unparks(), 2);
        assert!(!n.end_idle(), "the hook took the idle flag");
        std::thread::park_timeout(Duration::from_secs(30));
    }

    #[test]
    fn hook_times_the_first_wake_up_after_the_probe_asks() {
        let hook = UnparkHook::new();
        let n = Arc::clone(&hook.nudge);
        hook.on_unpark();
        assert_eq!(n.woke_at(), None, "not asked");
        n.want_wake_time();
        let before = std::time::Instant::now();
        hook.on_unpark();
        let first = n.woke_at().expect("timed");
        assert!(
            first + Duration::from_micros(1) >= before,
            "{first:?} {before:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
        hook.on_unpark();
        assert_eq!(n.woke_at(), Some(first), "only the first wake-up is timed");
        n.want_wake_time();
        assert_eq!(n.woke_at(), None, "asking again forgets it");
        let unhooked = Nudge::unhooked();
        unhooked.want_wake_time();
        unhooked.on_unpark();
        assert_eq!(unhooked.woke_at(), None, "no hook, no times");
    }

    #[test]
    fn hook_on_a_real_runtime_reports_its_wake_ups() {
        let hook = UnparkHook::new();
        let mut b = tokio::runtime::Builder::new_current_thread();
        hook.install(&mut b).enable_all();
        let rt = b.build().expect("runtime");
        rt.block_on(async {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        assert!(hook.nudge.unparks() >= 3, "{}", hook.nudge.unparks());
    }

    #[test]
    fn a_hook_is_claimed_by_one_running_loopwatch() {
        let hook = UnparkHook::new();
        let claim = hook.nudge.claim().expect("free");
        assert!(hook.nudge.claim().is_none(), "in use");
        drop(claim); // that probe thread stopped
        assert!(hook.nudge.claim().is_some());
    }
}
