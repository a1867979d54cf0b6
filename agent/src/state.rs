//! Shared agent state: the series store, health evaluation and self-telemetry counters.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;

use crate::config::Config;
use crate::entry::{Assessed, ServiceEntry};
use crate::evidence::StuckWorker;
use crate::export::Pipeline;
use crate::health::{HealthState, Lifecycle, Runtime};
use crate::history::{Episode, SampleView};
use crate::routes::RouteStats;
use crate::store::{
    CapError, DropReason, Limits, MAX_TOTAL_BYTES, Prepared, ServiceKey, Store, prepare,
    prepare_wire,
};

/// Why a request was refused (label `reason` of `loopwatch_agent_requests_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// Body could not be decoded (400 / INVALID_ARGUMENT).
    Malformed,
    /// Body over `receiver.max_body_bytes` after decompression (413).
    TooLarge,
    /// Content type or encoding not supported (415).
    UnsupportedMediaType,
    /// `receiver.max_services` reached (429 / RESOURCE_EXHAUSTED).
    TooManyServices,
    /// `receiver.max_series_per_service` reached (429 / RESOURCE_EXHAUSTED).
    TooManySeries,
    /// Fixed series memory budget reached (429 / RESOURCE_EXHAUSTED).
    Memory,
    /// Body not received within [`crate::deadline::BODY_TIMEOUT`] (408).
    Timeout,
}

impl RefuseReason {
    /// All reasons, for exposition.
    pub const ALL: [RefuseReason; 7] = [
        RefuseReason::Malformed,
        RefuseReason::TooLarge,
        RefuseReason::UnsupportedMediaType,
        RefuseReason::TooManyServices,
        RefuseReason::TooManySeries,
        RefuseReason::Memory,
        RefuseReason::Timeout,
    ];
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::Malformed => "malformed",
            RefuseReason::TooLarge => "too_large",
            RefuseReason::UnsupportedMediaType => "unsupported_media_type",
            RefuseReason::TooManyServices => "too_many_services",
            RefuseReason::TooManySeries => "too_many_series",
            RefuseReason::Memory => "memory",
            RefuseReason::Timeout => "timeout",
        }
    }
}

impl From<CapError> for RefuseReason {
    fn from(e: CapError) -> Self {
        match e {
            CapError::TooManyServices(_) => RefuseReason::TooManyServices,
            CapError::TooManySeries(_) => RefuseReason::TooManySeries,
            CapError::Memory(_) => RefuseReason::Memory,
        }
    }
}

/// Self-telemetry counters (monotonic since start).
#[derive(Debug, Default)]
pub struct Telemetry {
    /// Metric datapoints accepted.
    pub datapoints_received: AtomicU64,
    /// Spans received over OTLP (forwarded upstream when an exporter is configured).
    pub spans_received: AtomicU64,
    /// Log records received over OTLP (forwarded upstream when an exporter is configured).
    pub log_records_received: AtomicU64,
    /// Connections closed by a header or idle deadline ([`crate::deadline`]).
    pub connections_timed_out: std::sync::Arc<AtomicU64>,
    /// Open, refused (over a cap) and failed-accept connections ([`crate::conn`]).
    pub connections: std::sync::Arc<crate::conn::ConnStats>,
    refused: [AtomicU64; 7],
    dropped: [AtomicU64; 4],
}

impl Telemetry {
    /// Counts one refused request.
    pub fn refuse(&self, reason: RefuseReason) {
        let i = RefuseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }
    /// Refused requests so far for `reason`.
    pub fn refused(&self, reason: RefuseReason) -> u64 {
        let i = RefuseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.refused[i].load(Ordering::Relaxed)
    }
    /// Counts dropped datapoints.
    pub fn drop_points(&self, reason: DropReason, n: u64) {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.dropped[i].fetch_add(n, Ordering::Relaxed);
    }
    /// Dropped datapoints so far for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.dropped[i].load(Ordering::Relaxed)
    }
}

/// A service instance that sent nothing for this many times `health.stale_after` (5 min with
/// the defaults) is forgotten: its series, its slot under the services cap and its entry in
/// `/readyz` and `/v1/status`.
pub const EVICT_AFTER_STALE: u32 = 60;

/// A read-only view of one service instance at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceView {
    /// Identity.
    pub key: ServiceKey,
    /// Health state.
    pub state: HealthState,
    /// Reasons for the state (empty when Ok).
    pub reasons: Vec<String>,
    /// Detected runtime.
    pub runtime: Runtime,
    /// lag = max(delay p99, stall), seconds.
    pub lag_seconds: Option<f64>,
    /// Current stall, seconds.
    pub stall_seconds: Option<f64>,
    /// Delay p99, seconds.
    pub delay_p99_seconds: Option<f64>,
    /// Utilization ratio.
    pub utilization: Option<f64>,
    /// Pressure (1.0 = at target).
    pub pressure: f64,
    /// Seconds since the last export.
    pub last_seen_age_seconds: f64,
    /// Heap growth, bytes per second.
    pub heap_growth: Option<f64>,
    /// Lifecycle state the service reported (`loopwatch.lifecycle.state`).
    pub lifecycle: Option<Lifecycle>,
    /// Sum of `http.server.active_requests` (in-flight requests).
    pub active_requests: Option<f64>,
    /// The learned export interval, seconds.
    pub export_interval_seconds: Option<f64>,
    /// What readiness cannot see for this instance, and the fix.
    pub warnings: Vec<String>,
    /// Workers stuck for at least `health.stuck_enter`.
    pub stuck_workers: Vec<StuckWorker>,
    /// The stall in progress (reported, or an overdue export of an exporter on the loop).
    pub stall_in_progress_seconds: Option<f64>,
    /// Shed responses over all responses in the error window.
    pub shed_ratio: Option<f64>,
    /// Per route with shed responses in the error window: (route, shed, requests).
    pub shed_routes: Vec<(String, u64, u64)>,
    /// Per-route traffic over the error window, worst first.
    pub routes: Vec<RouteStats>,
}

/// The history of one service instance at one instant.
#[derive(Debug, Clone)]
pub struct HistoryView {
    /// Identity.
    pub key: ServiceKey,
    /// Samples of the last [`crate::history::History::SECONDS`], oldest first.
    pub samples: Vec<SampleView>,
    /// Episodes, oldest first.
    pub episodes: Vec<Episode>,
}

/// State shared by the receivers, the admin server and the health timer.
#[derive(Debug)]
pub struct AgentState {
    config: Config,
    store: Mutex<Store<ServiceEntry>>,
    /// Self-telemetry counters.
    pub telemetry: Telemetry,
    /// Upstream export pipeline (inactive without `exporter.endpoint`).
    pub export: Pipeline,
    /// The last stall reports (stacks) per instance, from received logs.
    pub(crate) stalls: crate::stalls::Stalls,
    draining: AtomicBool,
    changed: tokio::sync::Notify,
    /// Wakes the health timer when a service turns unhealthy (its holds need the tick).
    unhealthy: tokio::sync::Notify,
    /// The agent's start: history times are milliseconds since it.
    epoch: Instant,
    /// The same as Unix time, seconds.
    epoch_unix: f64,
}

impl AgentState {
    /// Fresh state for `config`.
    pub fn new(config: Config) -> Self {
        let limits = Limits {
            max_services: config.receiver.max_services,
            max_series_per_service: config.receiver.max_series_per_service,
            max_total_bytes: MAX_TOTAL_BYTES,
        };
        AgentState {
            export: Pipeline::new(config.exporter.clone()),
            store: Mutex::new(Store::new(limits)),
            telemetry: Telemetry::default(),
            stalls: crate::stalls::Stalls::default(),
            draining: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
            unhealthy: tokio::sync::Notify::new(),
            epoch: Instant::now(),
            epoch_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            config,
        }
    }

    /// Marks the agent draining (readiness 503 with reason `draining`); it stays draining.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Whether `POST /drain` has been called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Resolves at the next accepted metrics export (or [`AgentState::set_draining`]).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// The effective configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Locks the store (a poisoned lock is recovered: the store stays consistent per update).
    pub fn store(&self) -> MutexGuard<'_, Store<ServiceEntry>> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ingests an OTLP metrics request: decode, check caps, apply, evaluate health of the
    /// touched services. Returns the number of accepted datapoints.
    pub fn ingest_metrics(&self, req: &ExportMetricsServiceRequest) -> Result<u64, CapError> {
        self.ingest_prepared(prepare(req), Some(req), Instant::now())
    }

    /// [`AgentState::ingest_metrics`] as if it arrived at `now` (simulated time in tests; no
    /// earlier than the previous call's).
    pub fn ingest_metrics_at(
        &self,
        req: &ExportMetricsServiceRequest,
        now: Instant,
    ) -> Result<u64, CapError> {
        self.ingest_prepared(prepare(req), Some(req), now)
    }

    /// Milliseconds from the agent's start to `now`.
    fn at_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Unix time (seconds) of `ms` milliseconds after the agent's start.
    pub fn unix_time(&self, ms: u64) -> f64 {
        self.epoch_unix + ms as f64 / 1e3
    }

    /// Seconds from the agent's start to `now`.
    pub fn uptime_seconds(&self, now: Instant) -> u32 {
        u32::try_from(self.at_ms(now) / 1000).unwrap_or(u32::MAX)
    }

    /// [`AgentState::ingest_metrics`] for an OTLP/protobuf body, read by the borrowing
    /// decoder of the common export shape (no owned request is built). `None` when that
    /// decoder does not apply to the body (or the body is malformed), or when the upstream
    /// exporter needs the decoded request: the caller then decodes with prost.
    pub fn ingest_metrics_protobuf(&self, body: &[u8]) -> Option<Result<u64, CapError>> {
        if self.export.enabled() {
            return None;
        }
        let req = crate::wire::decode(body)?;
        Some(self.ingest_prepared(prepare_wire(&req), None, Instant::now()))
    }

    fn ingest_prepared(
        &self,
        prepared: Prepared<'_>,
        req: Option<&ExportMetricsServiceRequest>,
        now: Instant,
    ) -> Result<u64, CapError> {
        for (reason, n) in &prepared.dropped {
            self.telemetry.drop_points(*reason, *n);
        }
        let accepted = prepared.datapoints();
        let mut store = self.store();
        match store.apply(prepared, now) {
            Ok(touched) => {
                self.telemetry
                    .datapoints_received
                    .fetch_add(accepted, Ordering::Relaxed);
                let cfg = &self.config.health;
                let (at_ms, draining) = (self.at_ms(now), self.is_draining());
                for key in &touched {
                    if let Some(s) = store.service_mut(key) {
                        s.observe(cfg, now);
                        let a = s.assess(cfg, now);
                        s.record(cfg, at_ms, &a, draining);
                        self.transition(key, a.before, s.health.any_unhealthy(), &a.eval.reasons);
                    }
                }
                drop(store);
                if let Some(req) = req {
                    self.export.add_metrics(req, &touched);
                }
                self.changed.notify_waiters();
                Ok(accepted)
            }
            Err(e) => {
                drop(store);
                self.telemetry.refuse(e.into());
                Err(e)
            }
        }
    }

    /// Re-evaluates every service at `now` (staleness, hold expiry) and returns views.
    pub fn evaluate(&self, now: Instant) -> Vec<ServiceView> {
        let cfg = &self.config.health;
        let mut out = Vec::new();
        self.reassess(now, |key, s, a| {
            let sig = &a.sig;
            let every = s.cadence.interval();
            let warnings = s.slow_warning(a.stale_after).into_iter().collect();
            out.push(ServiceView {
                key: key.clone(),
                state: a.eval.state,
                reasons: a.eval.reasons,
                runtime: sig.runtime,
                lag_seconds: sig.lag(),
                stall_seconds: sig.stall,
                delay_p99_seconds: sig.delay_p99,
                utilization: sig.utilization,
                pressure: sig.pressure(cfg),
                last_seen_age_seconds: now.saturating_duration_since(s.last_seen).as_secs_f64(),
                heap_growth: sig.heap_growth,
                lifecycle: sig.lifecycle,
                active_requests: sig.active_requests,
                export_interval_seconds: every.map(|e| e.as_secs_f64()),
                warnings,
                stuck_workers: a.stuck,
                stall_in_progress_seconds: sig.stall_in_progress(),
                shed_ratio: sig.shed_ratio,
                shed_routes: s.health.shed_routes(),
                routes: s.routes.stats(&s.series, s.last_seen),
            });
        });
        out
    }

    /// Re-evaluates every service at `now` (staleness, hold expiry, forgetting departed
    /// instances) without building views: the health timer's tick. Returns when the next
    /// tick is due: in `period` while a service is unhealthy (its hold and leave levels are
    /// re-checked every `period`, as the lag may only be reported once per export), else at
    /// the first moment a service can go stale (`last_seen + stale_after`) or be forgotten,
    /// and never later than `stale_after` from now (a service that reports after this call
    /// goes stale no earlier than that). An evaluation that makes a service unhealthy wakes
    /// the timer early: [`AgentState::turned_unhealthy`].
    pub fn reevaluate(&self, now: Instant, period: Duration) -> Instant {
        let cfg = &self.config.health;
        let evict_after = cfg.stale_after.saturating_mul(EVICT_AFTER_STALE);
        let mut due = now + cfg.stale_after;
        self.reassess(now, |_, s, a| {
            let at = if s.health.any_unhealthy() && a.eval.state != HealthState::Stale {
                now + period
            } else if a.eval.state == HealthState::Stale {
                s.last_seen + evict_after
            } else {
                s.next_due(cfg, &a, now)
            };
            due = due.min(at);
        });
        due
    }

    /// The history of `service` (every instance, or only `instance`) at `now`, after
    /// evaluating every service at `now`.
    pub fn history(&self, service: &str, instance: Option<&str>, now: Instant) -> Vec<HistoryView> {
        self.reassess(now, |_, _, _| {});
        let now_sec = self.uptime_seconds(now);
        self.store()
            .services()
            .filter(|(k, _)| k.service == service && instance.is_none_or(|i| k.instance == i))
            .map(|(k, s)| HistoryView {
                key: k.clone(),
                samples: s.history.samples(now_sec),
                episodes: s.history.episodes().cloned().collect(),
            })
            .collect()
    }

    /// Heap bytes of every instance's history (the sum of [`crate::history::History::approx_bytes`]).
    pub fn history_bytes(&self) -> usize {
        self.store()
            .services()
            .map(|(_, s)| s.history.approx_bytes())
            .sum()
    }

    /// Resolves when an evaluation (an export, a probe, a tick) turned a service unhealthy
    /// since the last call (a permit is kept when nobody waits): the health timer then ticks
    /// every period again.
    pub fn turned_unhealthy(&self) -> tokio::sync::futures::Notified<'_> {
        self.unhealthy.notified()
    }

    /// Logs a change of a service's health and wakes the health timer when it turned
    /// unhealthy.
    fn transition(&self, key: &ServiceKey, before: bool, after: bool, reasons: &[String]) {
        log_transition(key, before, after, reasons);
        if after && !before {
            self.unhealthy.notify_one();
        }
    }

    fn reassess(&self, now: Instant, mut each: impl FnMut(&ServiceKey, &ServiceEntry, Assessed)) {
        let cfg = &self.config.health;
        let mut store = self.store();
        let forgotten =
            store.evict_departed(now, cfg.stale_after.saturating_mul(EVICT_AFTER_STALE));
        if forgotten > 0 {
            self.stalls
                .retain(&store.services().map(|(k, _)| k.clone()).collect());
            tracing::info!(
                forgotten,
                "forgot departed service instances (no data for 60 x health.stale_after)"
            );
        }
        let (at_ms, draining) = (self.at_ms(now), self.is_draining());
        for (key, s) in store.services_mut() {
            let a = s.assess(cfg, now);
            s.record(cfg, at_ms, &a, draining);
            self.transition(key, a.before, s.health.any_unhealthy(), &a.eval.reasons);
            if let Some(w) = s.first_slow_warning(a.stale_after) {
                tracing::warn!(service = %key.service, instance = %key.instance, "{w}");
            }
            each(key, s, a);
        }
    }
}

fn log_transition(key: &ServiceKey, before: bool, after: bool, reasons: &[String]) {
    if before != after {
        if after {
            tracing::warn!(service = %key.service, instance = %key.instance, reasons = ?reasons, "service unhealthy");
        } else {
            tracing::info!(service = %key.service, instance = %key.instance, "service recovered");
        }
    }
}
