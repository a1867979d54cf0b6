//! The health metrics the agent derives per service instance: one table, rendered by
//! `/metrics` ([`crate::prometheus`]) and by the upstream export ([`crate::export`]).

use crate::health::HealthState;
use crate::state::ServiceView;

/// One derived gauge.
pub(crate) struct Derived {
    /// OTel name (upstream export).
    pub(crate) otel: &'static str,
    /// Prometheus family name.
    pub(crate) prometheus: &'static str,
    /// OTel unit.
    pub(crate) unit: &'static str,
    /// Description and HELP text.
    pub(crate) help: &'static str,
    /// The value for one instance; `None`: not exported for it.
    pub(crate) get: fn(&ServiceView) -> Option<f64>,
}

fn flag(b: bool) -> Option<f64> {
    Some(if b { 1.0 } else { 0.0 })
}

/// Every derived gauge.
pub(crate) const DERIVED: &[Derived] = &[
    Derived {
        otel: "loopwatch.service.lag",
        prometheus: "loopwatch_service_lag_seconds",
        unit: "s",
        help: "Event-loop lag of the service: max(delay p99, delay max, stall in progress, overdue export), in seconds.",
        get: |v| v.lag_seconds,
    },
    Derived {
        otel: "loopwatch.service.ready",
        prometheus: "loopwatch_service_ready",
        unit: "",
        help: "1 when the service is neither unhealthy nor stale, else 0.",
        get: |v| flag(v.state == HealthState::Ok),
    },
    Derived {
        otel: "loopwatch.service.stale",
        prometheus: "loopwatch_service_stale",
        unit: "",
        help: "1 when no data arrived from the service for max(health.stale_after, 2 export intervals), else 0.",
        get: |v| flag(v.state == HealthState::Stale),
    },
    Derived {
        otel: "loopwatch.service.utilization",
        prometheus: "loopwatch_service_utilization_ratio",
        unit: "1",
        help: "Event-loop utilization (busy ratio, 0..1) of the service.",
        get: |v| v.utilization,
    },
    Derived {
        otel: "loopwatch.pressure",
        prometheus: "loopwatch_pressure",
        unit: "",
        help: "Autoscaling pressure: max(lag / target_lag, utilization / target_utilization), scaled by the capacity stuck workers take, at least 1 + shed ratio while shedding; 1 = at target.",
        get: |v| Some(v.pressure),
    },
    Derived {
        otel: "loopwatch.service.last_seen_age",
        prometheus: "loopwatch_service_last_seen_age_seconds",
        unit: "s",
        help: "Seconds since the last OTLP export from the service.",
        get: |v| Some(v.last_seen_age_seconds),
    },
    Derived {
        otel: "loopwatch.service.stuck_workers",
        prometheus: "loopwatch_service_stuck_workers",
        unit: "{worker}",
        help: "Workers stuck for at least health.stuck_enter (tokio.worker.stuck.duration).",
        get: |v| Some(v.stuck_workers.len() as f64),
    },
    Derived {
        otel: "loopwatch.service.export_interval",
        prometheus: "loopwatch_service_export_interval_seconds",
        unit: "s",
        help: "The service's export interval, learned from arrivals.",
        get: |v| v.export_interval_seconds,
    },
    Derived {
        otel: "loopwatch.service.shed_ratio",
        prometheus: "loopwatch_service_shed_ratio",
        unit: "1",
        help: "Responses the service's own load shedding produced, over all responses in health.error_window.",
        get: |v| v.shed_ratio,
    },
];
