//! One service instance as the agent knows it: its series (kept by [`crate::store`]), its
//! health hysteresis, its learned export cadence, and what its resource says of its SDK. It
//! evaluates itself: [`ServiceEntry::assess`] turns that evidence into a health state.

use std::time::{Duration, Instant};

use crate::cadence::Cadence;
use crate::config::HealthConfig;
use crate::evidence::{self, StuckWorker};
use crate::health::{Evaluation, HealthState, Lifecycle, Signals, Tracker};
use crate::history::{History, Observation};
use crate::routes::RouteWindow;
use crate::store::{Entry, ResourceInfo, SeriesMap};

/// An export interval at or above this is slow: readiness hears of a blocked event loop
/// only that late.
pub(crate) const SLOW_EXPORT: Duration = Duration::from_secs(5);

/// Everything known about one service instance.
#[derive(Debug)]
pub struct ServiceEntry {
    /// Series by identity, in key order.
    pub series: SeriesMap,
    /// When the last export for this instance arrived.
    pub last_seen: Instant,
    /// Health hysteresis state.
    pub health: Tracker,
    /// The learned export interval.
    pub(crate) cadence: Cadence,
    /// Resource `telemetry.sdk.language`, when sent.
    pub sdk_language: Option<String>,
    /// Per-route request histograms over the error window.
    pub(crate) routes: RouteWindow,
    /// Samples and episodes of the last minutes.
    pub history: History,
    /// The latest export's data window (time minus start time).
    data_window: Option<Duration>,
    /// Whether the slow-exporter warning was logged for this instance.
    warned_slow: bool,
}

impl Entry for ServiceEntry {
    fn new(now: Instant) -> Self {
        ServiceEntry {
            series: SeriesMap::default(),
            last_seen: now,
            health: Tracker::default(),
            cadence: Cadence::default(),
            sdk_language: None,
            routes: RouteWindow::default(),
            history: History::default(),
            data_window: None,
            warned_slow: false,
        }
    }
    fn series(&self) -> &SeriesMap {
        &self.series
    }
    fn series_mut(&mut self) -> &mut SeriesMap {
        &mut self.series
    }
    fn last_seen(&self) -> Instant {
        self.last_seen
    }
    fn arrived(&mut self, now: Instant, info: ResourceInfo) {
        self.last_seen = now;
        self.cadence.observe(now, info.window);
        self.data_window = info.window;
        if info.language.is_some() && self.sdk_language != info.language {
            self.sdk_language = info.language;
        }
    }
}

/// One instance evaluated at one instant.
#[derive(Debug)]
pub(crate) struct Assessed {
    pub(crate) sig: Signals,
    pub(crate) eval: Evaluation,
    pub(crate) stuck: Vec<StuckWorker>,
    pub(crate) stale_after: Duration,
    /// Whether any rule said unhealthy before this evaluation.
    pub(crate) before: bool,
}

impl ServiceEntry {
    /// Records what an applied export changed: the health tracker's windows and the routes'.
    pub(crate) fn observe(&mut self, cfg: &HealthConfig, now: Instant) {
        self.health.observe(cfg, now, &self.series);
        self.routes
            .observe(now, &self.series, cfg.error_window, self.data_window);
    }

    /// Writes an evaluation into the history at `at_ms` (milliseconds since the agent
    /// started); `draining` is the agent's own drain.
    pub(crate) fn record(&mut self, cfg: &HealthConfig, at_ms: u64, a: &Assessed, draining: bool) {
        let stuck: Vec<String> = a.stuck.iter().map(StuckWorker::reason).collect();
        let sig = &a.sig;
        self.history.record(
            at_ms,
            &Observation {
                state: a.eval.state,
                reasons: &a.eval.reasons,
                lag: sig.lag(),
                utilization: sig.utilization,
                pressure: sig.pressure(cfg),
                error_ratio: sig.error_ratio,
                heap_growth: sig.heap_growth,
                stall: sig.stall_in_progress(),
                stuck: &stuck,
                stuck_seconds: a.stuck.iter().map(|w| w.seconds).reduce(f64::max),
                draining: draining || sig.lifecycle == Some(Lifecycle::Draining),
            },
        );
    }

    /// Staleness waits for two learned intervals, and never less than `health.stale_after`.
    fn stale_after(&self, cfg: &HealthConfig) -> Duration {
        self.cadence.expected().map_or(cfg.stale_after, |c| {
            cfg.stale_after.max(c.saturating_mul(2))
        })
    }

    /// Whether an overdue export is evidence for this instance (see [`evidence`]).
    fn exporter_on_loop(&self, sig: &Signals) -> bool {
        evidence::exporter_on_loop(sig.runtime, self.sdk_language.as_deref())
    }

    /// Evaluates the instance at `now`: its evidence (series, cadence, stuck workers) through
    /// the hysteresis.
    pub(crate) fn assess(&mut self, cfg: &HealthConfig, now: Instant) -> Assessed {
        let age = now.saturating_duration_since(self.last_seen);
        let (stuck, summary) = evidence::stuck_workers(&self.series, cfg.stuck_enter, age);
        let mut sig = self.health.signals(&self.series, summary);
        if self.exporter_on_loop(&sig) {
            sig.overdue = self.cadence.overdue(now);
        }
        let stale_after = self.stale_after(cfg);
        let before = self.health.any_unhealthy();
        let mut eval = self
            .health
            .assess(cfg, now, &sig, self.last_seen, stale_after);
        if eval.state != HealthState::Stale {
            eval.reasons.extend(stuck.iter().map(StuckWorker::reason));
        }
        Assessed {
            sig,
            eval,
            stuck,
            stale_after,
            before,
        }
    }

    /// When the health timer must look again at a healthy instance: it goes stale, its export
    /// becomes overdue past `lag_enter`, or a stuck worker passes `stuck_enter`.
    pub(crate) fn next_due(&self, cfg: &HealthConfig, a: &Assessed, now: Instant) -> Instant {
        let overdue = self
            .exporter_on_loop(&a.sig)
            .then(|| self.cadence.overdue_at(cfg.lag_enter))
            .flatten();
        let stuck = a.sig.stuck.next_enter_after.map(|d| self.last_seen + d);
        let stale = self.last_seen + a.stale_after;
        [overdue, stuck]
            .into_iter()
            .flatten()
            .filter(|at| *at > now)
            .fold(stale, Instant::min)
    }

    /// The slow-exporter warning, when the learned interval is slow.
    pub(crate) fn slow_warning(&self, stale_after: Duration) -> Option<String> {
        let every = self.cadence.interval().filter(|e| *e >= SLOW_EXPORT)?;
        Some(format!(
            "exports every {:.1} s: readiness hears of a blocked event loop only with the next export \
             (up to {:.1} s late) and calls the instance stale only after {:.1} s without data; \
             export every second for readiness to follow the loop (OTEL_METRIC_EXPORT_INTERVAL=1000)",
            every.as_secs_f64(),
            every.as_secs_f64(),
            stale_after.as_secs_f64()
        ))
    }

    /// The slow-exporter warning the first time it applies (to log it once per instance).
    pub(crate) fn first_slow_warning(&mut self, stale_after: Duration) -> Option<String> {
        if self.warned_slow {
            return None;
        }
        let w = self.slow_warning(stale_after)?;
        self.warned_slow = true;
        Some(w)
    }
}
