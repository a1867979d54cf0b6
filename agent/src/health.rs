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
//! Evaluation happens on every export and on a timer, always with a monotonic [`Instant`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::HealthConfig;
use crate::store::{Series, SeriesKey, SeriesValue};

/// The runtime a service reports from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// tokio, via the `loopwatch` crate (`tokio.eventloop.*`).
    Tokio,
    /// Node.js, via `@opentelemetry/instrumentation-runtime-node` (`nodejs.eventloop.*`).
    Nodejs,
    /// No known event-loop metric seen.
    Unknown,
}

impl Runtime {
    /// Name used in JSON (`tokio`, `nodejs`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Tokio => "tokio",
            Runtime::Nodejs => "nodejs",
            Runtime::Unknown => "unknown",
        }
    }
}

/// What a metric contributes to the health model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// p99 scheduling delay over the last export window (seconds).
    DelayP99,
    /// Current in-progress stall (seconds, 0 when none).
    Stall,
    /// Busy ratio of the event loop (0..1).
    Utilization,
}

/// One row of the runtime mapping table.
#[derive(Debug, Clone, Copy)]
pub struct SignalMapping {
    /// OTel metric name.
    pub metric: &'static str,
    /// Runtime it identifies.
    pub runtime: Runtime,
    /// Signal it feeds.
    pub signal: Signal,
}

/// The runtime mapping table.
pub const SIGNALS: &[SignalMapping] = &[
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
    /// Latest current stall, seconds.
    pub stall: Option<f64>,
    /// Latest utilization ratio.
    pub utilization: Option<f64>,
}

impl Signals {
    /// lag = max(delay p99, stall), seconds; `None` when neither is known.
    pub fn lag(&self) -> Option<f64> {
        match (self.delay_p99, self.stall) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// pressure = max(lag / target_lag, utilization / target_utilization); 0 when unknown.
    pub fn pressure(&self, cfg: &HealthConfig) -> f64 {
        let lag = self
            .lag()
            .map_or(0.0, |l| l / cfg.target_lag.as_secs_f64().max(1e-9));
        let util = self
            .utilization
            .map_or(0.0, |u| u / cfg.target_utilization.max(1e-9));
        let p = lag.max(util);
        if p.is_finite() { p } else { 0.0 }
    }
}

fn unit_scale(unit: &str) -> f64 {
    match unit {
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "min" => 60.0,
        _ => 1.0,
    }
}

/// Extracts [`Signals`] from a service's series using [`SIGNALS`].
pub fn signals(series: &BTreeMap<SeriesKey, Series>) -> Signals {
    let mut out = Signals {
        runtime: Runtime::Unknown,
        delay_p99: None,
        stall: None,
        utilization: None,
    };
    for mapping in SIGNALS {
        let start = SeriesKey {
            name: mapping.metric.to_string(),
            attributes: Vec::new(),
        };
        for (key, s) in series.range(start..) {
            if key.name != mapping.metric {
                break;
            }
            let SeriesValue::Number(v) = s.value else {
                continue;
            };
            let v = match mapping.signal {
                Signal::Utilization => v,
                _ => v * unit_scale(&s.unit),
            };
            let slot = match mapping.signal {
                Signal::DelayP99 => &mut out.delay_p99,
                Signal::Stall => &mut out.stall,
                Signal::Utilization => &mut out.utilization,
            };
            *slot = Some(slot.map_or(v, |old: f64| old.max(v)));
            if out.runtime == Runtime::Unknown {
                out.runtime = mapping.runtime;
            }
        }
    }
    out
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

    /// Evaluates at `now` with the latest `lag` (seconds) and the time of the last export.
    pub fn evaluate(
        &mut self,
        cfg: &HealthConfig,
        now: Instant,
        lag: Option<f64>,
        last_seen: Instant,
    ) -> Evaluation {
        let age = now.saturating_duration_since(last_seen);
        if age >= cfg.stale_after {
            return Evaluation {
                state: HealthState::Stale,
                reasons: vec![format!(
                    "no data for {:.3} s >= {:.3} s",
                    secs(age),
                    secs(cfg.stale_after)
                )],
            };
        }
        let enter = secs(cfg.lag_enter);
        let leave = secs(cfg.lag_leave);
        let mut reasons = Vec::new();
        if let Some(lag) = lag {
            if lag >= leave {
                self.last_high = Some(now);
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
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg() -> HealthConfig {
        Config::default().health
    }

    #[test]
    fn hysteresis_enter_hold_leave() {
        let c = cfg();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut t = Tracker::default();
        assert_eq!(
            t.evaluate(&c, at(0), Some(0.05), at(0)).state,
            HealthState::Ok
        );
        // 0.2 s is above leave but below enter: stays Ok.
        assert_eq!(
            t.evaluate(&c, at(100), Some(0.2), at(100)).state,
            HealthState::Ok
        );
        let e = t.evaluate(&c, at(200), Some(1.204), at(200));
        assert_eq!(e.state, HealthState::Unhealthy);
        assert_eq!(e.reasons, vec!["lag 1.204 s >= 0.250 s".to_string()]);
        // Between leave and enter: still unhealthy, restarts the hold.
        assert_eq!(
            t.evaluate(&c, at(1200), Some(0.15), at(1200)).state,
            HealthState::Unhealthy
        );
        // Below leave, but hold (3 s since 1.2 s) not over.
        assert_eq!(
            t.evaluate(&c, at(2000), Some(0.01), at(2000)).state,
            HealthState::Unhealthy
        );
        assert_eq!(
            t.evaluate(&c, at(4100), Some(0.01), at(4000)).state,
            HealthState::Unhealthy
        );
        // Hold expires on a timer evaluation with no new export.
        let e = t.evaluate(&c, at(4200), Some(0.01), at(4000));
        assert_eq!(e.state, HealthState::Ok);
        assert!(e.reasons.is_empty());
    }

    #[test]
    fn stale_after_no_data() {
        let c = cfg();
        let t0 = Instant::now();
        let mut t = Tracker::default();
        let e = t.evaluate(&c, t0 + Duration::from_secs(5), Some(0.0), t0);
        assert_eq!(e.state, HealthState::Stale);
        assert_eq!(
            e.reasons,
            vec!["no data for 5.000 s >= 5.000 s".to_string()]
        );
        let e = t.evaluate(
            &c,
            t0 + Duration::from_secs(6),
            Some(0.0),
            t0 + Duration::from_secs(6),
        );
        assert_eq!(e.state, HealthState::Ok);
    }

    #[test]
    fn pressure_is_max_of_ratios() {
        let c = cfg();
        let s = Signals {
            runtime: Runtime::Tokio,
            delay_p99: Some(0.05),
            stall: Some(0.2),
            utilization: Some(0.4),
        };
        assert_eq!(s.lag(), Some(0.2));
        assert!((s.pressure(&c) - 2.0).abs() < 1e-9);
        let s = Signals { stall: None, ..s };
        assert!((s.pressure(&c) - 0.5).abs() < 1e-9);
    }
}
