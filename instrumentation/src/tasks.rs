//! Named task families: `tokio_metrics::TaskMonitor` timing (scheduled, poll, slow polls) for
//! any future, aggregated and exported per family name (attribute `tokio.task.family`).

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use tokio_metrics::{Instrumented, TaskMonitor};

impl TaskFamily {
    /// Most distinct family names; later names share the family [`OVERFLOW_FAMILY`].
    pub const MAX_FAMILIES: usize = 256;
}

/// Family that names past [`TaskFamily::MAX_FAMILIES`] fall into.
pub const OVERFLOW_FAMILY: &str = "(overflow)";

fn registry() -> &'static Mutex<Vec<TaskFamily>> {
    static REG: OnceLock<Mutex<Vec<TaskFamily>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(Vec::new()))
}

/// A named family of tasks sharing one `TaskMonitor` (cheap to clone). Instrumenting costs one
/// small allocation per future (tokio-metrics' per-task state), so use it per spawned task, not
/// per request (the route layer has its own allocation-free timing).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let jobs = loopwatch::tasks::TaskFamily::new("jobs");
/// tokio::spawn(jobs.instrument(async { /* work */ })).await.unwrap();
/// tokio::spawn(loopwatch::tasks::instrument_family("cache-refresh", async {})).await.unwrap();
/// assert_eq!(jobs.stats().instrumented_count, 1);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TaskFamily {
    name: Arc<str>,
    monitor: TaskMonitor,
}

impl TaskFamily {
    /// The family called `name`, created on first use (same name → same family).
    pub fn new(name: &str) -> TaskFamily {
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = reg.iter().find(|f| &*f.name == name) {
            return f.clone();
        }
        let name = if reg.len() >= TaskFamily::MAX_FAMILIES {
            if let Some(f) = reg.iter().find(|f| &*f.name == OVERFLOW_FAMILY) {
                return f.clone();
            }
            OVERFLOW_FAMILY
        } else {
            name
        };
        let f = TaskFamily {
            name: name.into(),
            monitor: TaskMonitor::new(),
        };
        reg.push(f.clone());
        f
    }

    /// Family name (`tokio.task.family`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Wraps `fut` so its polls and scheduling delays count towards this family.
    pub fn instrument<F: Future>(&self, fut: F) -> Instrumented<F> {
        self.monitor.instrument(fut)
    }

    /// Cumulative timing of every task of this family.
    pub fn stats(&self) -> tokio_metrics::TaskMetrics {
        self.monitor.cumulative()
    }

    /// Every family created so far.
    pub fn all() -> Vec<TaskFamily> {
        registry().lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Wraps `fut` in the family `name` ([`TaskFamily::new`] + [`TaskFamily::instrument`]).
/// Takes a short global lock to find the family: keep a [`TaskFamily`] for hot spawn sites.
pub fn instrument_family<F: Future>(name: &str, fut: F) -> Instrumented<F> {
    TaskFamily::new(name).instrument(fut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn family_times_a_slow_poll_and_scheduling() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let fam = TaskFamily::new("test-family-timing");
        rt.block_on(async {
            let t = tokio::spawn(fam.instrument(async {
                std::thread::sleep(Duration::from_millis(20)); // one slow poll
                tokio::task::yield_now().await;
            }));
            t.await.expect("join");
        });
        let s = fam.stats();
        assert_eq!(s.instrumented_count, 1);
        assert!(s.total_poll_count >= 2, "{s:?}");
        assert!(s.total_slow_poll_count >= 1, "{s:?}");
        assert!(s.total_poll_duration >= Duration::from_millis(20), "{s:?}");
        assert!(s.total_scheduled_count >= 1, "{s:?}");
        // same name, same family
        assert_eq!(
            TaskFamily::new("test-family-timing")
                .stats()
                .instrumented_count,
            1
        );
        rt.block_on(instrument_family("test-family-timing", async {}));
        assert_eq!(fam.stats().instrumented_count, 2);
        assert!(
            TaskFamily::all()
                .iter()
                .any(|f| f.name() == "test-family-timing")
        );
    }
}
