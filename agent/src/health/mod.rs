//! Health engine: event-loop lag, utilization, hysteresis, staleness and pressure per
//! service instance.
//!
//! Runtimes are mapped onto one model by a small table ([`SIGNALS`]): each known metric
//! name feeds one [`Signal`] of one [`Runtime`]. Values are converted to seconds from the
//! metric's unit (`s`, `ms`, `us`, `ns`; anything else is taken as seconds). When a metric
//! has several series (e.g. several tokio runtimes), the maximum is used.
//!
//! - lag = max(delay p99, current stall)
//! - Ok -> Unhealthy when lag >= `lag_enter`; Unhealthy -> Ok only when lag < `lag_leave`
//!   and at least `hold` has passed since lag was last seen >= `lag_leave`.
//! - Stale when no export arrived for `stale_after` (overrides the lag state).
//! - pressure = max(lag / `target_lag`, utilization / `target_utilization`).
//!
//! - Go: `go.schedule.duration` (histogram, s): the p99 of the observations that arrived
//!   since the previous export (bucket upper bound) is the delay p99.
//! - Per-route error ratio from `http.server.request.duration` (histogram) counts: a series is
//!   an error when `http.response.status_code` >= 500 or `error.type` is present; per
//!   `http.route` (missing: `""`), over the sliding `error_window`, counted only with at least
//!   `error_min_requests` requests in the window. Enter/leave levels and `error_hold`.
//! - Heap growth from `loopwatch.heap.growth_rate` (gauge, By/s, max over series), with
//!   enter/leave levels and `heap_hold`.
//! - Lifecycle from `loopwatch.lifecycle.state` (gauge: 0 running, 1 draining, 2 stopped).
//! - Active requests: sum of every `http.server.active_requests` series (drain).
//!
//! Evaluation happens on every export and on a timer, always with a monotonic [`Instant`].

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::cadence::Overdue;
use crate::config::{HealthConfig, StuckPolicy};
use crate::evidence::StuckSummary;
use crate::routes;
use crate::store::{Series, SeriesKey, SeriesMap, SeriesValue};

/// The runtime a service reports from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// tokio, via the `loopwatch` crate (`tokio.eventloop.*`).
    Tokio,
    /// Node.js, via `@opentelemetry/instrumentation-runtime-node` (`nodejs.eventloop.*`).
    Nodejs,
    /// Go, via `go.schedule.duration`.
    Go,
    /// Only generic HTTP server metrics (`http.server.request.duration`).
    Http,
    /// No known event-loop metric seen.
    Unknown,
}

impl Runtime {
    /// Name used in JSON (`tokio`, `nodejs`, `go`, `http`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Tokio => "tokio",
            Runtime::Nodejs => "nodejs",
            Runtime::Go => "go",
            Runtime::Http => "http",
            Runtime::Unknown => "unknown",
        }
    }
}

/// What a metric contributes to the health model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// p99 scheduling delay over the last export window (seconds).
    DelayP99,
    /// Longest scheduling delay over the last export window (seconds).
    DelayMax,
    /// Current in-progress stall (seconds, 0 when none).
    Stall,
    /// Busy ratio of the event loop (0..1).
    Utilization,
}

/// One row of the runtime mapping table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SignalMapping {
    /// OTel metric name.
    pub metric: &'static str,
    /// Runtime it identifies.
    pub runtime: Runtime,
    /// Signal it feeds.
    pub signal: Signal,
}

/// The runtime mapping table.
pub(crate) const SIGNALS: &[SignalMapping] = &[
    SignalMapping {
        metric: "tokio.eventloop.delay.p99",
        runtime: Runtime::Tokio,
        signal: Signal::DelayP99,
    },
    SignalMapping {
        metric: "tokio.eventloop.stall.duration",
        runtime: Runtime::Tokio,
        signal: Signal::Stall,
    },
    SignalMapping {
        metric: "tokio.eventloop.utilization",
        runtime: Runtime::Tokio,
        signal: Signal::Utilization,
    },
    SignalMapping {
        metric: "nodejs.eventloop.delay.p99",
        runtime: Runtime::Nodejs,
        signal: Signal::DelayP99,
    },
    SignalMapping {
        metric: "nodejs.eventloop.delay.max",
        runtime: Runtime::Nodejs,
        signal: Signal::DelayMax,
    },
    SignalMapping {
        metric: "nodejs.eventloop.utilization",
        runtime: Runtime::Nodejs,
        signal: Signal::Utilization,
    },
];

/// The health-relevant values extracted from a service's series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signals {
    /// Detected runtime.
    pub runtime: Runtime,
    /// Latest delay p99, seconds.
    pub delay_p99: Option<f64>,
    /// Latest longest delay of a window, seconds.
    pub delay_max: Option<f64>,
    /// The export that is late, for an exporter on the event loop.
    pub(crate) overdue: Option<Overdue>,
    /// Stuck workers against the workers reporting.
    pub stuck: StuckSummary,
    /// Shed responses over all responses in the error window.
    pub shed_ratio: Option<f64>,
    /// Errors over all responses in the error window.
    pub error_ratio: Option<f64>,
    /// Latest current stall, seconds.
    pub stall: Option<f64>,
    /// Latest utilization ratio.
    pub utilization: Option<f64>,
    /// Heap growth, bytes per second (max over series).
    pub heap_growth: Option<f64>,
    /// Lifecycle state reported by the service (max over series).
    pub lifecycle: Option<Lifecycle>,
    /// Sum of all `http.server.active_requests` series.
    pub active_requests: Option<f64>,
}

/// Lifecycle state a service reports in `loopwatch.lifecycle.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lifecycle {
    /// 0: serving.
    Running,
    /// 1: draining (no new work).
    Draining,
    /// 2: stopped (sent with the final export).
    Stopped,
}

impl Lifecycle {
    /// From the gauge value (rounded; values above 2 count as stopped).
    pub fn from_value(v: f64) -> Option<Lifecycle> {
        match v.round() {
            x if x < -0.5 || !x.is_finite() => None,
            x if x < 0.5 => Some(Lifecycle::Running),
            x if x < 1.5 => Some(Lifecycle::Draining),
            _ => Some(Lifecycle::Stopped),
        }
    }
    /// Name used in JSON (`running`, `draining`, `stopped`).
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Running => "running",
            Lifecycle::Draining => "draining",
            Lifecycle::Stopped => "stopped",
        }
    }
}

/// Metric carrying the service lifecycle state.
pub(crate) const LIFECYCLE_METRIC: &str = "loopwatch.lifecycle.state";
/// Metric carrying in-flight requests (UpDownCounter).
pub(crate) const ACTIVE_REQUESTS_METRIC: &str = "http.server.active_requests";
/// Metric carrying heap growth (gauge, By/s).
pub(crate) const HEAP_GROWTH_METRIC: &str = "loopwatch.heap.growth_rate";
/// Go scheduling latency histogram.
pub(crate) const GO_SCHEDULE_METRIC: &str = "go.schedule.duration";

impl Signals {
    /// lag = max(delay p99, delay max, stall, time an export is overdue), seconds; `None`
    /// when none is known.
    pub fn lag(&self) -> Option<f64> {
        let overdue = self.overdue.map(|o| o.late_seconds());
        [self.delay_p99, self.delay_max, self.stall, overdue]
            .into_iter()
            .flatten()
            .reduce(f64::max)
    }

    /// The current stall in progress, seconds: the reported one, or the overdue export's
    /// lateness for an exporter on the event loop.
    pub fn stall_in_progress(&self) -> Option<f64> {
        let overdue = self.overdue.map(|o| o.late_seconds());
        [self.stall, overdue].into_iter().flatten().reduce(f64::max)
    }

    /// pressure = max(lag / target_lag, utilization / target_utilization), scaled up by the
    /// capacity stuck workers take away (N / (N - stuck)), and at least 1 + the shed ratio
    /// while the service sheds load; 0 when unknown.
    pub fn pressure(&self, cfg: &HealthConfig) -> f64 {
        let lag = self
            .lag()
            .map_or(0.0, |l| l / cfg.target_lag.as_secs_f64().max(1e-9));
        let util = self
            .utilization
            .map_or(0.0, |u| u / cfg.target_utilization.max(1e-9));
        let mut p = lag.max(util);
        let StuckSummary { stuck, workers, .. } = self.stuck;
        if stuck > 0 && workers > 0 {
            p *= workers as f64 / workers.saturating_sub(stuck).max(1) as f64;
        }
        if let Some(shed) = self.shed_ratio.filter(|r| *r > 0.0) {
            p = p.max(1.0 + shed);
        }
        if p.is_finite() { p } else { 0.0 }
    }
}

/// Extracts [`Signals`] from a service's series using [`SIGNALS`].
pub(crate) fn signals(series: &SeriesMap) -> Signals {
    let mut out = Signals {
        runtime: Runtime::Unknown,
        delay_p99: None,
        delay_max: None,
        overdue: None,
        stuck: StuckSummary::default(),
        shed_ratio: None,
        error_ratio: None,
        stall: None,
        utilization: None,
        heap_growth: None,
        lifecycle: None,
        active_requests: None,
    };
    for (_, s) in named(series, HEAP_GROWTH_METRIC) {
        if let SeriesValue::Number(v) = s.value {
            out.heap_growth = Some(out.heap_growth.map_or(v, |o: f64| o.max(v)));
        }
    }
    for (_, s) in named(series, LIFECYCLE_METRIC) {
        if let SeriesValue::Number(v) = s.value
            && let Some(l) = Lifecycle::from_value(v)
        {
            out.lifecycle = Some(out.lifecycle.map_or(l, |o| o.max(l)));
        }
    }
    for (_, s) in named(series, ACTIVE_REQUESTS_METRIC) {
        if let SeriesValue::Number(v) = s.value {
            out.active_requests = Some(out.active_requests.unwrap_or(0.0) + v);
        }
    }
    for mapping in SIGNALS {
        for (_, s) in named(series, mapping.metric) {
            let SeriesValue::Number(v) = s.value else {
                continue;
            };
            let v = match mapping.signal {
                Signal::Utilization => v,
                _ => v * s.seconds_per_unit(),
            };
            // Delays, stalls and utilization are never negative: a negative (or NaN) report
            // is ignored rather than turned into negative lag or pressure.
            if v.is_nan() || v < 0.0 {
                continue;
            }
            let slot = match mapping.signal {
                Signal::DelayP99 => &mut out.delay_p99,
                Signal::DelayMax => &mut out.delay_max,
                Signal::Stall => &mut out.stall,
                Signal::Utilization => &mut out.utilization,
            };
            *slot = Some(slot.map_or(v, |old: f64| old.max(v)));
            if out.runtime == Runtime::Unknown {
                out.runtime = mapping.runtime;
            }
        }
    }
    if out.runtime == Runtime::Unknown {
        if named(series, GO_SCHEDULE_METRIC).next().is_some() {
            out.runtime = Runtime::Go;
        } else if routes::request_series(series).next().is_some() {
            out.runtime = Runtime::Http;
        }
    }
    out
}

/// The series of metric `name`, in key order.
fn named<'a>(
    series: &'a SeriesMap,
    name: &'a str,
) -> impl Iterator<Item = (&'a SeriesKey, &'a Series)> + 'a {
    series.named(name)
}

/// Requests, errors and shed responses per route from the request-duration histograms
/// (cumulative counts, [`routes::request_series`]), borrowing the route names from the
/// series keys.
pub(crate) fn route_counts(series: &SeriesMap) -> BTreeMap<&str, Counts> {
    let mut out: BTreeMap<&str, Counts> = BTreeMap::new();
    for (class, s) in routes::request_series(series) {
        let SeriesValue::Histogram { count, .. } = &s.value else {
            continue;
        };
        let e = out.entry(class.route).or_insert((0, 0, 0));
        e.0 = e.0.saturating_add(*count);
        if class.error {
            e.1 = e.1.saturating_add(*count);
        }
        if class.shed {
            e.2 = e.2.saturating_add(*count);
        }
    }
    out
}

/// Sum of the per-bucket counts of every `go.schedule.duration` series, with their bounds.
fn go_schedule(series: &SeriesMap) -> Option<(Vec<f64>, Vec<u64>, f64)> {
    let mut acc: Option<(Vec<f64>, Vec<u64>, f64)> = None;
    for (_, s) in named(series, GO_SCHEDULE_METRIC) {
        if let SeriesValue::Histogram { bounds, counts, .. } = &s.value {
            match &mut acc {
                None => acc = Some((bounds.clone(), counts.clone(), s.seconds_per_unit())),
                Some((b, c, _)) if b == bounds && c.len() == counts.len() => {
                    for (x, y) in c.iter_mut().zip(counts) {
                        *x = x.saturating_add(*y);
                    }
                }
                Some(_) => {}
            }
        }
    }
    acc
}

/// p99 (bucket upper bound; the last finite bound for the overflow bucket) of bucket counts.
pub(crate) fn histogram_p99(bounds: &[f64], counts: &[u64]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total as f64 * 0.99).ceil() as u64;
    let mut seen = 0u64;
    for (i, c) in counts.iter().enumerate() {
        seen = seen.saturating_add(*c);
        if seen >= rank {
            return bounds.get(i).or(bounds.last()).copied();
        }
    }
    bounds.last().copied()
}

/// A threshold with hysteresis: active at `value >= enter`; inactive again only once the
/// value has stayed below `leave` for `hold`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Band {
    active: bool,
    last_high: Option<Instant>,
}

impl Band {
    /// Updates with `value` (`None`: nothing measured, counts as below `leave`) at `now`;
    /// returns whether the band is active and, while holding, how long it has been low.
    pub(crate) fn update(
        &mut self,
        value: Option<f64>,
        enter: f64,
        leave: f64,
        hold: Duration,
        now: Instant,
    ) -> (bool, Option<Duration>) {
        let v = value.unwrap_or(0.0);
        if v >= leave {
            self.last_high = Some(now);
        }
        if !self.active && v >= enter {
            self.active = true;
        }
        if self.active && v < leave {
            let low_for = self
                .last_high
                .map_or(hold, |t| now.saturating_duration_since(t));
            if low_for >= hold {
                self.active = false;
            } else {
                return (true, Some(low_for));
            }
        }
        (self.active, None)
    }

    /// Whether the band is active.
    pub(crate) fn is_active(&self) -> bool {
        self.active
    }
}

/// Maximum snapshots kept for the error window (older ones are dropped first).
const MAX_ERROR_SNAPSHOTS: usize = 4096;

/// (requests, errors, shed) of one route.
pub(crate) type Counts = (u64, u64, u64);

/// [`Counts`] per `http.route`.
pub(crate) type RouteCounts = BTreeMap<String, Counts>;

/// Per-route counts over time, for the sliding error ratio.
#[derive(Debug, Clone, Default)]
struct ErrorWindow {
    snapshots: VecDeque<(Instant, RouteCounts)>,
}

impl ErrorWindow {
    fn observe(&mut self, now: Instant, counts: BTreeMap<&str, Counts>, window: Duration) {
        let unchanged = self.snapshots.back().is_some_and(|(_, c)| {
            c.len() == counts.len()
                && c.iter()
                    .zip(&counts)
                    .all(|((r, n), (r2, n2))| r == r2 && n == n2)
        });
        if !unchanged {
            let owned = counts.into_iter().map(|(r, n)| (r.to_owned(), n)).collect();
            self.snapshots.push_back((now, owned));
        }
        self.prune(now, window);
    }

    fn prune(&mut self, now: Instant, window: Duration) {
        let cutoff = now.checked_sub(window);
        // Keep exactly one snapshot at or before the cutoff (the baseline).
        while self.snapshots.len() > MAX_ERROR_SNAPSHOTS
            || (self.snapshots.len() > 1
                && cutoff.is_some_and(|c| self.snapshots.get(1).is_some_and(|(t, _)| *t <= c)))
        {
            self.snapshots.pop_front();
        }
    }

    /// [`Counts`] per route within the window, ordered by route.
    fn in_window(&self) -> Vec<(&str, Counts)> {
        let (Some((_, base)), Some((_, last))) = (self.snapshots.front(), self.snapshots.back())
        else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(last.len());
        for (route, (t, e, s)) in last {
            let (bt, be, bs) = base.get(route).copied().unwrap_or((0, 0, 0));
            let delta = if *t < bt || *e < be || *s < bs {
                (*t, *e, *s) // counter reset
            } else {
                (t - bt, e - be, s - bs)
            };
            out.push((route.as_str(), delta));
        }
        out
    }
}

/// Health state of a service instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// Reporting, lag below thresholds.
    Ok,
    /// Lag entered the unhealthy band and has not recovered yet.
    Unhealthy,
    /// No export for `stale_after`.
    Stale,
}

impl HealthState {
    /// Name used in JSON (`ok`, `unhealthy`, `stale`).
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Ok => "ok",
            HealthState::Unhealthy => "unhealthy",
            HealthState::Stale => "stale",
        }
    }
}

/// Hysteresis state of one service instance.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    unhealthy: bool,
    last_high: Option<Instant>,
    errors: ErrorWindow,
    routes: BTreeMap<String, Band>,
    heap: Band,
    stuck: Band,
    go_prev: Option<Vec<u64>>,
    go_p99: Option<f64>,
    rules_unhealthy: bool,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Resulting state.
    pub state: HealthState,
    /// Human-readable reasons (empty when Ok).
    pub reasons: Vec<String>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Tracker {
    /// Whether the lag hysteresis currently says unhealthy (ignores staleness).
    pub fn is_unhealthy(&self) -> bool {
        self.unhealthy
    }

    /// Whether any rule (lag, error ratio, heap growth) currently says unhealthy.
    pub fn any_unhealthy(&self) -> bool {
        self.unhealthy || self.rules_unhealthy
    }

    /// Records what a new export changed: route counts for the error window and the Go
    /// scheduling histogram delta. Call after every applied export.
    pub fn observe(&mut self, cfg: &HealthConfig, now: Instant, series: &SeriesMap) {
        let counts = route_counts(series);
        if !counts.is_empty() || !self.errors.snapshots.is_empty() {
            self.errors.observe(now, counts, cfg.error_window);
        }
        if let Some((bounds, counts, scale)) = go_schedule(series) {
            let delta: Vec<u64> = match &self.go_prev {
                Some(prev)
                    if prev.len() == counts.len()
                        && prev.iter().zip(&counts).all(|(p, c)| c >= p) =>
                {
                    counts.iter().zip(prev).map(|(c, p)| c - p).collect()
                }
                _ => counts.clone(),
            };
            if delta.iter().any(|c| *c > 0) {
                self.go_p99 = histogram_p99(&bounds, &delta).map(|p| p * scale);
            } else if self.go_prev.is_some() {
                self.go_p99 = Some(0.0);
            }
            self.go_prev = Some(counts);
        }
    }

    /// Routes with shed responses in the error window: (route, shed, requests).
    pub fn shed_routes(&self) -> Vec<(String, u64, u64)> {
        self.errors
            .in_window()
            .into_iter()
            .filter(|(_, c)| c.2 > 0)
            .map(|(r, c)| (r.to_owned(), c.2, c.0))
            .collect()
    }

    /// [`signals`] plus what only the tracker knows (Go p99 from histogram deltas, the
    /// shed ratio of the error window) and the stuck workers' summary.
    pub fn signals(&self, series: &SeriesMap, stuck: StuckSummary) -> Signals {
        let mut s = signals(series);
        if s.delay_p99.is_none() && s.runtime == Runtime::Go {
            s.delay_p99 = self.go_p99;
        }
        s.stuck = stuck;
        let (requests, errors, shed) =
            self.errors
                .in_window()
                .iter()
                .fold((0u64, 0u64, 0u64), |(r, e, sh), (_, c)| {
                    (
                        r.saturating_add(c.0),
                        e.saturating_add(c.1),
                        sh.saturating_add(c.2),
                    )
                });
        s.shed_ratio = (requests > 0).then(|| shed as f64 / requests as f64);
        s.error_ratio = (requests > 0).then(|| errors as f64 / requests as f64);
        s
    }

    /// Full evaluation: staleness (after `stale_after`, which follows the learned export
    /// cadence), lag hysteresis, per-route error ratio, heap growth and stuck workers.
    pub fn assess(
        &mut self,
        cfg: &HealthConfig,
        now: Instant,
        sig: &Signals,
        last_seen: Instant,
        stale_after: Duration,
    ) -> Evaluation {
        // A reported lag describes the export window that ended when it arrived; an overdue
        // export is lag at this very moment.
        let overdue_now = sig
            .overdue
            .is_some_and(|o| Some(o.late_seconds()) == sig.lag());
        let lag_at = if overdue_now { now } else { last_seen };
        let mut e = self.evaluate(cfg, now, sig.lag(), lag_at, last_seen, stale_after);
        if e.state == HealthState::Stale {
            return e;
        }
        if let Some(o) = sig.overdue.filter(|o| Some(o.late_seconds()) == sig.lag()) {
            // The lag is the overdue export: say so instead of a bare number.
            for r in e.reasons.iter_mut().filter(|r| r.starts_with("lag ")) {
                *r = format!(
                    "no export for {:.2} s (every {:.2} s): event loop blocked, {r}",
                    secs(o.since),
                    secs(o.every)
                );
            }
        }
        self.errors.prune(now, cfg.error_window);
        let mut rules = false;
        let window = self.errors.in_window();
        let in_window = |route: &str| window.binary_search_by(|(r, _)| (*r).cmp(route)).is_ok();
        for (route, (requests, errors, shed)) in &window {
            let total = &requests.saturating_sub(*shed);
            let ratio = (*total >= cfg.error_min_requests as u64 && *total > 0)
                .then(|| *errors as f64 / *total as f64);
            if !self.routes.contains_key(*route) {
                self.routes.insert((*route).to_owned(), Band::default());
            }
            let Some(band) = self.routes.get_mut(*route) else {
                continue;
            };
            let (active, holding) = band.update(
                ratio,
                cfg.error_ratio_enter,
                cfg.error_ratio_leave,
                cfg.error_hold,
                now,
            );
            if active {
                rules = true;
                let r = ratio.unwrap_or(0.0);
                let (level, which) = if r >= cfg.error_ratio_enter {
                    (cfg.error_ratio_enter, "")
                } else {
                    (cfg.error_ratio_leave, ", leave threshold")
                };
                e.reasons.push(match holding {
                    None => format!(
                        "route {route:?} error ratio {r:.3} >= {level:.3} ({errors}/{total} in {} s{which})",
                        secs(cfg.error_window)
                    ),
                    Some(low) => format!(
                        "route {route:?} error ratio {r:.3} < {:.3} for {:.3} s, holding {:.3} s",
                        cfg.error_ratio_leave,
                        secs(low),
                        secs(cfg.error_hold)
                    ),
                });
            }
        }
        // Routes that vanished from the window: let them recover through the hold.
        for (route, band) in self.routes.iter_mut() {
            if !in_window(route) {
                let (active, _) = band.update(
                    None,
                    cfg.error_ratio_enter,
                    cfg.error_ratio_leave,
                    cfg.error_hold,
                    now,
                );
                if active {
                    rules = true;
                    e.reasons.push(format!(
                        "route {route:?} error ratio recovering (no requests)"
                    ));
                }
            }
        }
        self.routes.retain(|r, b| b.is_active() || in_window(r));
        let (heap, holding) = self.heap.update(
            sig.heap_growth,
            cfg.heap_growth_enter,
            cfg.heap_growth_leave,
            cfg.heap_hold,
            now,
        );
        if heap {
            rules = true;
            let g = sig.heap_growth.unwrap_or(0.0);
            e.reasons.push(match holding {
                None if g >= cfg.heap_growth_enter => format!(
                    "heap growth {g:.0} By/s >= {:.0} By/s",
                    cfg.heap_growth_enter
                ),
                None => format!(
                    "heap growth {g:.0} By/s >= {:.0} By/s (leave threshold)",
                    cfg.heap_growth_leave
                ),
                Some(low) => format!(
                    "heap growth {g:.0} By/s < {:.0} By/s for {:.3} s, holding {:.3} s",
                    cfg.heap_growth_leave,
                    secs(low),
                    secs(cfg.heap_hold)
                ),
            });
        }
        let enter = secs(cfg.stuck_enter);
        let longest = (sig.stuck.stuck > 0).then_some(sig.stuck.longest);
        let (stuck, holding) = self.stuck.update(longest, enter, enter, cfg.hold, now);
        if stuck && cfg.stuck_workers == StuckPolicy::Unready {
            rules = true;
            if let Some(low) = holding {
                e.reasons.push(format!(
                    "no worker stuck for {:.3} s, holding {:.3} s",
                    secs(low),
                    secs(cfg.hold)
                ));
            }
        }
        self.rules_unhealthy = rules;
        if rules {
            e.state = HealthState::Unhealthy;
        }
        e
    }

    /// Evaluates at `now` with the latest `lag` (seconds, observed at `lag_at`) and the time
    /// of the last export; stale after `stale_after` without one. The hold runs from when a
    /// lag at or above `lag_leave` was observed, so re-reading the same report on a timer does
    /// not extend it.
    pub fn evaluate(
        &mut self,
        cfg: &HealthConfig,
        now: Instant,
        lag: Option<f64>,
        lag_at: Instant,
        last_seen: Instant,
        stale_after: Duration,
    ) -> Evaluation {
        let age = now.saturating_duration_since(last_seen);
        if age >= stale_after {
            return Evaluation {
                state: HealthState::Stale,
                reasons: vec![format!(
                    "no data for {:.3} s >= {:.3} s",
                    secs(age),
                    secs(stale_after)
                )],
            };
        }
        let enter = secs(cfg.lag_enter);
        let leave = secs(cfg.lag_leave);
        let mut reasons = Vec::new();
        if let Some(lag) = lag {
            if lag >= leave {
                self.last_high = Some(self.last_high.map_or(lag_at, |t| t.max(lag_at)));
            }
            if !self.unhealthy && lag >= enter {
                self.unhealthy = true;
            } else if self.unhealthy && lag < leave {
                let below_for = self
                    .last_high
                    .map_or(cfg.hold, |t| now.saturating_duration_since(t));
                if below_for >= cfg.hold {
                    self.unhealthy = false;
                } else {
                    reasons.push(format!(
                        "lag {lag:.3} s < {leave:.3} s for {:.3} s, holding {:.3} s",
                        secs(below_for),
                        secs(cfg.hold)
                    ));
                }
            }
            if self.unhealthy && lag >= enter {
                reasons.push(format!("lag {lag:.3} s >= {enter:.3} s"));
            } else if self.unhealthy && lag >= leave {
                reasons.push(format!("lag {lag:.3} s >= {leave:.3} s (leave threshold)"));
            }
        } else if self.unhealthy {
            reasons.push("lag unknown since becoming unhealthy".into());
        }
        Evaluation {
            state: if self.unhealthy {
                HealthState::Unhealthy
            } else {
                HealthState::Ok
            },
            reasons,
        }
    }
}

#[cfg(test)]
mod tests;
