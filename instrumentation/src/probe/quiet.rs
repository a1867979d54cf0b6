//! Whether the watched runtime is quiet, read from tokio's per-worker park counts.

use std::time::{Duration, Instant};

/// Whether the watched runtime is *quiet*: every worker parked and no worker woke up since the
/// previous look (`worker_park_unpark_count` is odd while parked and changes on every wake-up).
/// A quiet runtime has no scheduling delay to measure and no stuck worker.
#[derive(Default)]
pub(super) struct Quiet {
    counts: Vec<u64>,
    /// Since when the runtime has been seen quiet; `None` while it is not.
    pub(super) since: Option<Instant>,
    /// The last look found every worker parked.
    pub(super) all_parked: bool,
    /// loopwatch's own idle probe woke a worker: the next change of counts is not activity.
    pub(super) own_wake: bool,
}

impl Quiet {
    /// Looks at the runtime's workers at `now`; returns how long it has been quiet.
    pub(super) fn observe(&mut self, handle: &tokio::runtime::Handle, now: Instant) -> Duration {
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
    pub(super) fn unparks(handle: &tokio::runtime::Handle) -> u64 {
        let m = handle.metrics();
        (0..m.num_workers())
            .map(|w| m.worker_park_unpark_count(w) / 2)
            .sum()
    }

    /// Whether a worker woke up since the last [`Quiet::observe`] (the counts changed), not
    /// counting the wake-up of loopwatch's own idle probe.
    pub(super) fn woke_since(&self, handle: &tokio::runtime::Handle) -> bool {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread;

    use super::*;

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
}
