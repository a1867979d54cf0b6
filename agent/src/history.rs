//! What happened to one service instance: a fixed-size ring of one sample per second (lag,
//! utilization, pressure, error ratio, heap growth, state, stuck workers) and a bounded list
//! of episodes (unhealthy, stale, draining, stalls, stuck workers) with their reasons.
//!
//! Every evaluation of the instance ([`History::record`]) writes the sample of its second;
//! several evaluations within one second keep the worst of each value. A second without an
//! evaluation stays empty (the instance exported nothing and nobody asked).
//!
//! Memory per instance is bounded by [`History::MAX_BYTES`]: the ring grows in steps of
//! [`History::GROW`] samples up to [`History::SECONDS`], and at most [`History::EPISODES`]
//! episodes are kept, each with at most [`History::REASON_BYTES`] of reasons. An instance
//! the store forgets drops its history with it.

use std::collections::VecDeque;

use crate::health::HealthState;

/// One second of one instance. Values absent in that second are NaN.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Seconds since the agent started (`u32::MAX`: an empty slot).
    sec: u32,
    lag: f32,
    utilization: f32,
    pressure: f32,
    error_ratio: f32,
    heap_growth: f32,
    state: u8,
    stuck: u8,
}

const EMPTY: Sample = Sample {
    sec: u32::MAX,
    lag: f32::NAN,
    utilization: f32::NAN,
    pressure: f32::NAN,
    error_ratio: f32::NAN,
    heap_growth: f32::NAN,
    state: 0,
    stuck: 0,
};

/// The larger of two values where NaN means absent.
fn worst(a: f32, b: f32) -> f32 {
    if a.is_nan() { b } else { a.max(b) }
}

fn to_f32(v: Option<f64>) -> f32 {
    v.filter(|v| v.is_finite()).map_or(f32::NAN, |v| v as f32)
}

/// What an episode was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpisodeKind {
    /// The instance was not ready: lag, errors, heap growth or stuck workers (by policy).
    Unhealthy,
    /// No export arrived for `stale_after`.
    Stale,
    /// The service (lifecycle) or the agent (`POST /drain`) was draining.
    Draining,
    /// The event loop was stalled (a reported stall, or an overdue export of an exporter on
    /// the loop).
    Stall,
    /// At least one worker was stuck for `health.stuck_enter`.
    Stuck,
}

impl EpisodeKind {
    /// Name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            EpisodeKind::Unhealthy => "unhealthy",
            EpisodeKind::Stale => "stale",
            EpisodeKind::Draining => "draining",
            EpisodeKind::Stall => "stall",
            EpisodeKind::Stuck => "stuck",
        }
    }
    const ALL: [EpisodeKind; 5] = [
        EpisodeKind::Unhealthy,
        EpisodeKind::Stale,
        EpisodeKind::Draining,
        EpisodeKind::Stall,
        EpisodeKind::Stuck,
    ];
}

/// One episode; times in milliseconds since the agent started.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    /// What it was.
    pub kind: EpisodeKind,
    /// When it began (for a stall or a stuck worker: when the stall began, as reported).
    pub start_ms: u64,
    /// When it ended (`None`: still going on).
    pub end_ms: Option<u64>,
    /// Why: the reasons when it began (truncated to [`History::REASON_BYTES`]).
    pub reasons: Vec<String>,
    /// The largest lag seen during it, seconds (unhealthy: lag; stuck: the longest stuck
    /// duration; otherwise `None`, the duration says it all).
    pub peak_seconds: Option<f64>,
}

/// One evaluation, as the history keeps it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observation<'a> {
    pub(crate) state: HealthState,
    pub(crate) reasons: &'a [String],
    pub(crate) lag: Option<f64>,
    pub(crate) utilization: Option<f64>,
    pub(crate) pressure: f64,
    pub(crate) error_ratio: Option<f64>,
    pub(crate) heap_growth: Option<f64>,
    /// The stall in progress, seconds.
    pub(crate) stall: Option<f64>,
    /// Stuck workers' reasons, and the longest stuck duration.
    pub(crate) stuck: &'a [String],
    pub(crate) stuck_seconds: Option<f64>,
    pub(crate) draining: bool,
}

/// One sample as read back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleView {
    /// Seconds since the agent started.
    pub sec: u32,
    /// State in that second (the worst seen).
    pub state: HealthState,
    /// lag, seconds.
    pub lag_seconds: Option<f64>,
    /// Utilization ratio.
    pub utilization: Option<f64>,
    /// Pressure.
    pub pressure: Option<f64>,
    /// Error ratio over the error window.
    pub error_ratio: Option<f64>,
    /// Heap growth, bytes per second.
    pub heap_growth: Option<f64>,
    /// Stuck workers.
    pub stuck_workers: u8,
}

/// The history of one instance.
#[derive(Debug, Clone, Default)]
pub struct History {
    ring: Vec<Sample>,
    /// The newest second written.
    newest: Option<u32>,
    episodes: VecDeque<Episode>,
    /// Per [`EpisodeKind`], whether the newest episode of that kind is still open.
    open: [bool; 5],
}

fn state_code(s: HealthState) -> u8 {
    match s {
        HealthState::Ok => 0,
        HealthState::Unhealthy => 1,
        HealthState::Stale => 2,
    }
}

fn state_of(code: u8) -> HealthState {
    match code {
        1 => HealthState::Unhealthy,
        2 => HealthState::Stale,
        _ => HealthState::Ok,
    }
}

/// A reason without its figures: what it is about (`lag `, `route "/a" error ratio `).
fn cause(reason: &str) -> &str {
    reason
        .find(|c: char| c.is_ascii_digit())
        .map_or(reason, |i| &reason[..i])
}

/// Appends the reasons of causes an episode does not name yet (an episode that began with
/// lag and went on with errors says both), within [`History::REASON_BYTES`].
fn add_new_causes(kept: &mut Vec<String>, reasons: &[String]) {
    let new: Vec<String> = reasons
        .iter()
        .filter(|r| !kept.iter().any(|k| cause(k) == cause(r)))
        .cloned()
        .collect();
    if new.is_empty() {
        return;
    }
    let used: usize = kept.iter().map(String::len).sum();
    kept.extend(truncated(&new, History::REASON_BYTES.saturating_sub(used)));
}

fn truncated(reasons: &[String], budget: usize) -> Vec<String> {
    let mut left = budget;
    let mut out = Vec::new();
    for r in reasons {
        if left == 0 {
            break;
        }
        let mut end = r.len().min(left);
        while !r.is_char_boundary(end) {
            end -= 1;
        }
        out.push(r[..end].to_owned());
        left -= end;
    }
    out
}

impl History {
    /// Seconds kept: 15 minutes at one sample a second.
    pub const SECONDS: usize = 900;
    /// Samples the ring grows by (one minute).
    pub const GROW: usize = 60;
    /// Episodes kept (the oldest is dropped first).
    pub const EPISODES: usize = 32;
    /// Reason bytes kept per episode.
    pub const REASON_BYTES: usize = 512;
    /// The most heap one instance's history holds.
    pub const MAX_BYTES: usize = Self::SECONDS * std::mem::size_of::<Sample>()
        + Self::EPISODES * (std::mem::size_of::<Episode>() + Self::REASON_BYTES + 4 * 24);

    /// Records one evaluation at `at_ms` (milliseconds since the agent started).
    pub(crate) fn record(&mut self, at_ms: u64, o: &Observation<'_>) {
        let sec = u32::try_from(at_ms / 1000).unwrap_or(u32::MAX - 1);
        self.write_sample(sec, o);
        self.track_episodes(at_ms, o);
    }

    fn write_sample(&mut self, sec: u32, o: &Observation<'_>) {
        if self.newest.is_some_and(|n| sec < n) {
            return; // the clock is monotonic; an older second is already past
        }
        let slot = sec as usize % Self::SECONDS;
        while self.ring.len() <= slot && self.ring.len() < Self::SECONDS {
            let grow = Self::GROW.min(Self::SECONDS - self.ring.len());
            self.ring.reserve_exact(grow);
            self.ring.extend(std::iter::repeat_n(EMPTY, grow));
        }
        let s = &mut self.ring[slot];
        if s.sec != sec {
            *s = Sample { sec, ..EMPTY };
        }
        s.lag = worst(s.lag, to_f32(o.lag));
        s.utilization = worst(s.utilization, to_f32(o.utilization));
        s.pressure = worst(s.pressure, to_f32(Some(o.pressure)));
        s.error_ratio = worst(s.error_ratio, to_f32(o.error_ratio));
        s.heap_growth = worst(s.heap_growth, to_f32(o.heap_growth));
        s.state = s.state.max(state_code(o.state));
        s.stuck = s.stuck.max(u8::try_from(o.stuck.len()).unwrap_or(u8::MAX));
        self.newest = Some(sec);
    }

    fn track_episodes(&mut self, at_ms: u64, o: &Observation<'_>) {
        let back = |secs: Option<f64>| {
            let ms = secs
                .filter(|s| s.is_finite() && *s > 0.0)
                .map_or(0.0, |s| s * 1e3);
            at_ms.saturating_sub(ms as u64)
        };
        for kind in EpisodeKind::ALL {
            let (active, start, reasons, peak): (bool, u64, &[String], Option<f64>) = match kind {
                EpisodeKind::Unhealthy => {
                    (o.state == HealthState::Unhealthy, at_ms, o.reasons, o.lag)
                }
                EpisodeKind::Stale => (o.state == HealthState::Stale, at_ms, o.reasons, None),
                EpisodeKind::Draining => (o.draining, at_ms, &[], None),
                EpisodeKind::Stall => (o.stall.is_some_and(|s| s > 0.0), back(o.stall), &[], None),
                EpisodeKind::Stuck => (
                    !o.stuck.is_empty(),
                    back(o.stuck_seconds),
                    o.stuck,
                    o.stuck_seconds,
                ),
            };
            self.track(kind, active, at_ms, start, reasons, peak);
        }
    }

    fn track(
        &mut self,
        kind: EpisodeKind,
        active: bool,
        at_ms: u64,
        start_ms: u64,
        reasons: &[String],
        peak: Option<f64>,
    ) {
        let i = kind as usize;
        let open = self.open[i]
            .then(|| self.episodes.iter_mut().rev().find(|e| e.kind == kind))
            .flatten();
        match (open, active) {
            (Some(e), true) => {
                if let Some(p) = peak.filter(|p| p.is_finite()) {
                    e.peak_seconds = Some(e.peak_seconds.map_or(p, |q| q.max(p)));
                }
                add_new_causes(&mut e.reasons, reasons);
            }
            (Some(e), false) => {
                e.end_ms = Some(at_ms);
                self.open[i] = false;
            }
            (None, true) => {
                if self.episodes.len() >= Self::EPISODES
                    && let Some(old) = self.episodes.pop_front()
                {
                    self.open[old.kind as usize] &=
                        self.episodes.iter().any(|e| e.kind == old.kind);
                }
                self.episodes.push_back(Episode {
                    kind,
                    start_ms,
                    end_ms: None,
                    reasons: truncated(reasons, Self::REASON_BYTES),
                    peak_seconds: peak.filter(|p| p.is_finite()),
                });
                self.open[i] = true;
            }
            (None, false) => self.open[i] = false,
        }
    }

    /// The samples of the last [`History::SECONDS`] before `now_sec`, oldest first.
    pub fn samples(&self, now_sec: u32) -> Vec<SampleView> {
        let from = now_sec.saturating_sub(Self::SECONDS as u32 - 1);
        let mut out: Vec<SampleView> = self
            .ring
            .iter()
            .filter(|s| s.sec != u32::MAX && s.sec >= from && s.sec <= now_sec)
            .map(|s| {
                let v = |x: f32| (!x.is_nan()).then_some(f64::from(x));
                SampleView {
                    sec: s.sec,
                    state: state_of(s.state),
                    lag_seconds: v(s.lag),
                    utilization: v(s.utilization),
                    pressure: v(s.pressure),
                    error_ratio: v(s.error_ratio),
                    heap_growth: v(s.heap_growth),
                    stuck_workers: s.stuck,
                }
            })
            .collect();
        out.sort_by_key(|s| s.sec);
        out
    }

    /// Episodes, oldest first.
    pub fn episodes(&self) -> impl Iterator<Item = &Episode> {
        self.episodes.iter()
    }

    /// Heap bytes held.
    pub fn approx_bytes(&self) -> usize {
        self.ring.capacity() * std::mem::size_of::<Sample>()
            + self.episodes.capacity() * std::mem::size_of::<Episode>()
            + self
                .episodes
                .iter()
                .map(|e| {
                    e.reasons.capacity() * 24
                        + e.reasons.iter().map(|r| r.capacity()).sum::<usize>()
                })
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs<'a>(state: HealthState, reasons: &'a [String], lag: f64) -> Observation<'a> {
        Observation {
            state,
            reasons,
            lag: Some(lag),
            utilization: Some(0.5),
            pressure: lag / 0.1,
            error_ratio: None,
            heap_growth: None,
            stall: None,
            stuck: &[],
            stuck_seconds: None,
            draining: false,
        }
    }

    #[test]
    fn a_second_keeps_the_worst_and_the_ring_wraps() {
        let mut h = History::default();
        h.record(1_000, &obs(HealthState::Ok, &[], 0.01));
        h.record(1_900, &obs(HealthState::Unhealthy, &[], 0.5));
        h.record(1_950, &obs(HealthState::Ok, &[], 0.02));
        let s = h.samples(1);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].state, HealthState::Unhealthy);
        assert_eq!(s[0].lag_seconds, Some(0.5));
        for sec in 0..2000u64 {
            h.record(sec * 1000 + 2_000, &obs(HealthState::Ok, &[], 0.01));
        }
        let s = h.samples(2001);
        assert_eq!(s.len(), History::SECONDS);
        assert_eq!(s[0].sec, 2001 - History::SECONDS as u32 + 1);
        assert_eq!(h.ring.capacity(), History::SECONDS);
        assert!(h.approx_bytes() <= History::MAX_BYTES);
    }

    #[test]
    fn episodes_open_close_and_stay_bounded() {
        let mut h = History::default();
        let why = vec!["lag 0.800 s >= 0.250 s".to_owned()];
        h.record(10_000, &obs(HealthState::Unhealthy, &why, 0.8));
        h.record(11_000, &obs(HealthState::Unhealthy, &why, 1.2));
        h.record(14_000, &obs(HealthState::Ok, &[], 0.01));
        let e: Vec<_> = h.episodes().collect();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].kind, EpisodeKind::Unhealthy);
        assert_eq!((e[0].start_ms, e[0].end_ms), (10_000, Some(14_000)));
        assert_eq!(e[0].reasons, why);
        assert_eq!(e[0].peak_seconds, Some(1.2));

        // A new cause during an episode is added once; new figures of a known cause are not.
        let errors = vec![
            "lag 0.900 s >= 0.250 s".to_owned(),
            "route \"/fail\" error ratio 1.000 >= 0.050 (40/40 in 30 s)".to_owned(),
        ];
        h.record(15_000, &obs(HealthState::Unhealthy, &why, 0.8));
        h.record(16_000, &obs(HealthState::Unhealthy, &errors, 0.9));
        h.record(17_000, &obs(HealthState::Unhealthy, &errors, 0.9));
        h.record(18_000, &obs(HealthState::Ok, &[], 0.0));
        let e = h.episodes().last().unwrap();
        assert_eq!(e.reasons, [why[0].clone(), errors[1].clone()]);

        // A stall band starts when the stall began.
        let mut o = obs(HealthState::Ok, &[], 0.3);
        o.stall = Some(0.3);
        h.record(20_000, &o);
        h.record(21_000, &obs(HealthState::Ok, &[], 0.0));
        let stall = h.episodes().last().unwrap();
        assert_eq!(
            (stall.kind, stall.start_ms, stall.end_ms),
            (EpisodeKind::Stall, 19_700, Some(21_000))
        );

        let long = vec!["x".repeat(4000)];
        for i in 0..100u64 {
            h.record(30_000 + i * 2000, &obs(HealthState::Unhealthy, &long, 1.0));
            h.record(31_000 + i * 2000, &obs(HealthState::Ok, &[], 0.0));
        }
        assert_eq!(h.episodes().count(), History::EPISODES);
        assert!(h.episodes().all(|e| e.end_ms.is_some()));
        assert_eq!(
            h.episodes().last().unwrap().reasons[0].len(),
            History::REASON_BYTES
        );
        assert!(
            h.approx_bytes() <= History::MAX_BYTES,
            "{}",
            h.approx_bytes()
        );
    }
}
