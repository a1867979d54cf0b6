//! Export cadence per service instance, learned from arrival times.
//!
//! SDKs export on a fixed interval (OTel's default is 60 s; loopwatch's is 1 s), and some
//! send extra exports in between: loopwatch forces one when a stall passes its threshold and
//! one half way to it, and stretches quiet windows to a heartbeat. The estimate must not
//! follow those:
//!
//! - an arrival sooner than half the current estimate after the last on-cadence arrival is
//!   an extra export: it neither records a gap nor moves the anchor the next gap counts from;
//! - the cadence is the median of the last [`GAPS`] gaps, so a few long gaps (a stall, a
//!   heartbeat while quiet) or short ones (before an estimate exists) do not move it;
//! - it is *confirmed*, and used to call an export overdue, only after [`CONFIRM`] gaps.
//!
//! Before any gap exists, the first export's data window (time minus start time of its
//! points, for an SDK that just started about one interval ago) is a provisional estimate
//! that only keeps a slow exporter from going stale before its second export.

use std::time::{Duration, Instant};

/// Gaps kept for the median.
pub(crate) const GAPS: usize = 15;
/// Gaps needed before the cadence is trusted to call an export overdue.
pub(crate) const CONFIRM: usize = 3;
/// Longest provisional estimate taken from a first export's data window: a process that
/// ran long before the agent saw it (an agent restart) reports its whole uptime.
pub(crate) const MAX_PROVISIONAL: Duration = Duration::from_secs(120);

/// Arrivals closer than this are one export.
const SAME_ARRIVAL: Duration = Duration::from_millis(1);

/// The learned export cadence of one instance.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cadence {
    /// The last on-cadence arrival: the next gap is counted from here.
    anchor: Option<Instant>,
    /// The last gaps, oldest first, at most [`GAPS`].
    gaps: Vec<Duration>,
    /// From the first export's data window, until a gap is known.
    provisional: Option<Duration>,
    /// The median of `gaps`, kept on each recorded gap: it is read on every evaluation.
    median: Option<Duration>,
}

impl Cadence {
    /// Records an export that arrived at `now`; `window` is the longest time minus start
    /// time among its points, when it had any.
    pub(crate) fn observe(&mut self, now: Instant, window: Option<Duration>) {
        let Some(anchor) = self.anchor else {
            self.anchor = Some(now);
            self.provisional = window
                .filter(|w| !w.is_zero())
                .map(|w| w.min(MAX_PROVISIONAL));
            return;
        };
        let gap = now.saturating_duration_since(anchor);
        // A request carrying one instance in several batches arrives once.
        if gap < SAME_ARRIVAL || self.median().is_some_and(|c| gap < c / 2) {
            return;
        }
        if self.gaps.len() == GAPS {
            self.gaps.remove(0);
        }
        self.gaps.push(gap);
        self.anchor = Some(now);
        let mut sorted = self.gaps.clone();
        sorted.sort_unstable();
        self.median = sorted.get(sorted.len() / 2).copied();
    }

    fn median(&self) -> Option<Duration> {
        self.median
    }

    /// The learned interval: the median of the recorded gaps; `None` until one is known.
    pub(crate) fn interval(&self) -> Option<Duration> {
        self.median()
    }

    /// The interval, or the provisional estimate of the first export: what staleness waits
    /// for.
    pub(crate) fn expected(&self) -> Option<Duration> {
        self.median().or(self.provisional)
    }

    /// The interval once [`CONFIRM`] gaps agree on it (enough to call an export overdue).
    pub(crate) fn confirmed(&self) -> Option<Duration> {
        (self.gaps.len() >= CONFIRM)
            .then(|| self.median())
            .flatten()
    }

    /// How late the next on-cadence export is at `now`: time since the anchor beyond the
    /// confirmed interval; `None` while not confirmed or not late.
    pub(crate) fn overdue(&self, now: Instant) -> Option<Overdue> {
        let every = self.confirmed()?;
        let since = now.saturating_duration_since(self.anchor?);
        (since > every).then_some(Overdue { since, every })
    }

    /// When the next export becomes `late` overdue (for the health timer).
    pub(crate) fn overdue_at(&self, late: Duration) -> Option<Instant> {
        Some(self.anchor? + self.confirmed()? + late)
    }
}

/// An export that has not arrived on time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Overdue {
    /// Time since the last on-cadence export.
    pub(crate) since: Duration,
    /// The confirmed interval.
    pub(crate) every: Duration,
}

impl Overdue {
    /// The time beyond the interval: the least the event loop has been blocked, seconds.
    pub(crate) fn late_seconds(&self) -> f64 {
        self.since.saturating_sub(self.every).as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn fed(arrivals: &[u64]) -> (Cadence, Instant) {
        let t0 = Instant::now();
        let mut c = Cadence::default();
        for a in arrivals {
            c.observe(t0 + ms(*a), None);
        }
        (c, t0)
    }

    #[test]
    fn unknown_until_a_gap_then_the_median() {
        let (c, _) = fed(&[0]);
        assert_eq!(c.interval(), None);
        let (c, _) = fed(&[0, 1000, 2000, 3010, 4000]);
        assert_eq!(c.interval(), Some(ms(1000)));
        assert_eq!(c.confirmed(), Some(ms(1000)));
    }

    #[test]
    fn extra_exports_do_not_shorten_it() {
        // A periodic 1 s exporter with a forced export 300 ms and 550 ms into two windows.
        let (c, _) = fed(&[0, 1000, 1300, 2000, 2550, 3000, 4000]);
        assert_eq!(c.interval(), Some(ms(1000)));
    }

    #[test]
    fn a_stall_or_heartbeats_do_not_lengthen_it() {
        // One 3 s stall and two 2.5 s heartbeats among 1 s exports.
        let (c, _) = fed(&[0, 1000, 2000, 5000, 6000, 7000, 9500, 12000, 13000]);
        assert_eq!(c.interval(), Some(ms(1000)));
    }

    #[test]
    fn a_changed_interval_is_learned() {
        let mut arrivals: Vec<u64> = (0..5).map(|i| i * 1000).collect();
        arrivals.extend((1..=10).map(|i| 4000 + i * 5000));
        let (c, _) = fed(&arrivals);
        assert_eq!(c.interval(), Some(ms(5000)));
    }

    #[test]
    fn first_export_window_is_provisional() {
        let t0 = Instant::now();
        let mut c = Cadence::default();
        c.observe(t0, Some(Duration::from_secs(60)));
        assert_eq!(c.interval(), None);
        assert_eq!(c.expected(), Some(Duration::from_secs(60)));
        let mut c = Cadence::default();
        c.observe(t0, Some(Duration::from_secs(86_400)));
        assert_eq!(c.expected(), Some(MAX_PROVISIONAL));
        c.observe(t0 + ms(1000), None);
        assert_eq!(c.expected(), Some(ms(1000)));
    }

    #[test]
    fn overdue_only_once_confirmed_and_late() {
        let (c, t0) = fed(&[0, 1000]);
        assert_eq!(c.overdue(t0 + ms(5000)), None, "one gap is not confirmed");
        let (c, t0) = fed(&[0, 1000, 2000, 3000]);
        assert_eq!(c.overdue(t0 + ms(3900)), None);
        let o = c.overdue(t0 + ms(4420)).expect("overdue");
        assert!((o.late_seconds() - 0.42).abs() < 1e-9, "{o:?}");
        assert_eq!(o.every, ms(1000));
        assert_eq!(c.overdue_at(ms(250)), Some(t0 + ms(4250)));
    }
}
