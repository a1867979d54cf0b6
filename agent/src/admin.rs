//! Admin HTTP server: `/livez`, `/readyz`, `/metrics`, `/v1/status`, `/v1/pressure`, the
//! status page `/` and `POST /drain` ([`crate::drain`]; the only endpoint that changes state).
//! The exact shapes are in the README, section "The agent".
//!
//! - `GET /livez` -> 200 `{"status":"ok"}`; `GET /livez?service=NAME` with
//!   `health.liveness_stall` set -> 503 `{"status":"stalled","reasons":[{"service","instance",
//!   "reason"}]}` while a stall in progress of that service lasts longer.
//! - `GET /readyz[?service=NAME]` -> 200 `{"status":"ready","services":N}`, or 503
//!   `{"status":"not_ready","reasons":[{"service":..,"instance":..,"state":"unhealthy|stale","reason":..}]}`
//!   when any (matching) service instance is unhealthy or stale, or reports lifecycle
//!   `draining`/`stopped` (state `draining`/`stopped`), or after `POST /drain` (every entry
//!   state `draining`, reason `draining`; with no services one entry with empty service).
//!   No services -> 200 with 0. A stale or stopped instance is left out once a newer
//!   instance of the same service reports (a restart: new `service.instance.id`).
//! - `GET /metrics` -> Prometheus text exposition 0.0.4 (see [`crate::prometheus`]).
//! - `GET /v1/status` -> `{"services":[{"service","instance","state","reasons","lag_seconds",
//!   "stall_seconds","delay_p99_seconds","utilization","pressure","last_seen_age_seconds",
//!   "runtime","heap_growth_bytes_per_second","active_requests","lifecycle",
//!   "export_interval_seconds","warnings","stall_in_progress_seconds","shed_ratio",
//!   "shed_by_route":[{"route","shed","requests"}],
//!   "stuck_workers":[{"worker","seconds","location"}],
//!   "routes":[{"route","method","requests","requests_per_second","error_ratio","p50_seconds",
//!   "p95_seconds","p99_seconds"}]}],"draining":B}`;
//!   unknown numbers are `null`.
//! - `GET /v1/history?service=NAME[&instance=ID]` -> [`crate::history_api`].
//! - `GET /v1/pressure` -> `{"services":[{"service","instance","pressure"}],"max":M}` (0 when
//!   no services).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::health::{HealthState, Lifecycle};
use crate::prometheus;
use crate::state::{AgentState, ServiceView};

/// Builds the admin router.
pub(crate) fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/pressure", get(pressure))
        .route("/v1/history", get(crate::history_api::handler))
        .route("/drain", post(crate::drain::handler))
        .route("/", get(crate::status_page::index))
        .route("/status.js", get(crate::status_page::script))
        .with_state(state)
}

/// `/livez[?service=NAME]`: the agent's own liveness, or with `health.liveness_stall` set
/// and a service named, 503 while that service's stall in progress (for an exporter on the
/// event loop: its overdue export) lasts longer than the setting.
async fn livez(State(state): State<Arc<AgentState>>, Query(q): Query<ReadyQuery>) -> Response {
    let (Some(service), Some(limit)) = (q.service, state.config().health.liveness_stall) else {
        return Json(json!({"status": "ok"})).into_response();
    };
    let views = state.evaluate(Instant::now());
    let (code, body) = liveness(&views, &service, limit);
    (code, Json(body)).into_response()
}

/// The `/livez?service=` answer: 503 with the stalled instances when a stall in progress of
/// a live (not superseded) instance of `service` lasts longer than `limit`.
pub(crate) fn liveness(
    views: &[ServiceView],
    service: &str,
    limit: Duration,
) -> (StatusCode, Value) {
    let newest_live = newest_live_ages(views);
    let reasons: Vec<Value> = views
        .iter()
        .filter(|v| v.key.service == service && !superseded(v, &newest_live))
        .filter_map(|v| {
            let stall = v.stall_in_progress_seconds?;
            (stall > limit.as_secs_f64()).then(|| {
                json!({
                    "service": v.key.service,
                    "instance": v.key.instance,
                    "reason": format!(
                        "stall in progress {stall:.3} s > health.liveness_stall {:.3} s",
                        limit.as_secs_f64()
                    ),
                })
            })
        })
        .collect();
    if reasons.is_empty() {
        (StatusCode::OK, json!({"status": "ok"}))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "stalled", "reasons": reasons}),
        )
    }
}

/// Query of `/readyz`.
#[derive(Debug, Deserialize)]
struct ReadyQuery {
    service: Option<String>,
}

/// The `/readyz` answer for these views: status code and JSON body. `draining`: the agent
/// got `POST /drain`.
pub(crate) fn readiness(
    views: &[ServiceView],
    service: Option<&str>,
    draining: bool,
) -> (StatusCode, Value) {
    let newest_live = newest_live_ages(views);
    let scoped: Vec<&ServiceView> = views
        .iter()
        .filter(|v| service.is_none_or(|s| v.key.service == s))
        .filter(|v| !superseded(v, &newest_live))
        .collect();
    let mut reasons = Vec::new();
    if draining {
        for v in &scoped {
            reasons.push(json!({
                "service": v.key.service,
                "instance": v.key.instance,
                "state": "draining",
                "reason": "draining",
            }));
        }
        if scoped.is_empty() {
            reasons.push(
                json!({"service": "", "instance": "", "state": "draining", "reason": "draining"}),
            );
        }
    }
    for v in &scoped {
        if let Some(l @ (Lifecycle::Draining | Lifecycle::Stopped)) = v.lifecycle {
            reasons.push(json!({
                "service": v.key.service,
                "instance": v.key.instance,
                "state": l.as_str(),
                "reason": format!("service reports lifecycle {}", l.as_str()),
            }));
        }
    }
    for v in &scoped {
        if v.state == HealthState::Ok {
            continue;
        }
        let texts = if v.reasons.is_empty() {
            vec![v.state.as_str().to_string()]
        } else {
            v.reasons.clone()
        };
        for r in texts {
            reasons.push(json!({
                "service": v.key.service,
                "instance": v.key.instance,
                "state": v.state.as_str(),
                "reason": r,
            }));
        }
    }
    if reasons.is_empty() {
        (
            StatusCode::OK,
            json!({"status": "ready", "services": scoped.len()}),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not_ready", "reasons": reasons}),
        )
    }
}

/// A departed instance: stale, or it reported lifecycle `stopped`.
fn departed(v: &ServiceView) -> bool {
    v.state == HealthState::Stale || v.lifecycle == Some(Lifecycle::Stopped)
}

/// Per service name, the age of the freshest instance that has not departed.
fn newest_live_ages(views: &[ServiceView]) -> HashMap<&str, f64> {
    let mut ages: HashMap<&str, f64> = HashMap::new();
    for v in views.iter().filter(|v| !departed(v)) {
        let age = ages.entry(&v.key.service).or_insert(f64::INFINITY);
        *age = age.min(v.last_seen_age_seconds);
    }
    ages
}

/// Whether `v` is a departed instance that a newer instance of the same service replaced:
/// another instance of that service sent data more recently and has not departed. A restarted
/// service gets a new `service.instance.id`; the old one must not hold readiness at 503 until
/// the agent restarts. (It still shows in `/v1/status` as stale.)
fn superseded(v: &ServiceView, newest_live: &HashMap<&str, f64>) -> bool {
    departed(v)
        && newest_live
            .get(v.key.service.as_str())
            .is_some_and(|&age| age < v.last_seen_age_seconds)
}

async fn readyz(State(state): State<Arc<AgentState>>, Query(q): Query<ReadyQuery>) -> Response {
    let views = state.evaluate(Instant::now());
    let (code, body) = readiness(&views, q.service.as_deref(), state.is_draining());
    (code, Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AgentState>>) -> Response {
    let views = state.evaluate(Instant::now());
    let text = prometheus::render(&state, &views);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(prometheus::CONTENT_TYPE),
        )],
        text,
    )
        .into_response()
}

fn finite(v: Option<f64>) -> Value {
    v.filter(|x| x.is_finite())
        .map_or(Value::Null, |x| json!(x))
}

async fn status(State(state): State<Arc<AgentState>>) -> Json<Value> {
    let views = state.evaluate(Instant::now());
    let mut body = status_json(&views, state.is_draining());
    state.stalls.annotate(&mut body);
    Json(body)
}

/// The `/v1/status` body for these views.
pub(crate) fn status_json(views: &[ServiceView], draining: bool) -> Value {
    let services: Vec<Value> = views
        .iter()
        .map(|v| {
            json!({
                "service": v.key.service,
                "instance": v.key.instance,
                "state": v.state.as_str(),
                "reasons": v.reasons,
                "lag_seconds": finite(v.lag_seconds),
                "stall_seconds": finite(v.stall_seconds),
                "delay_p99_seconds": finite(v.delay_p99_seconds),
                "utilization": finite(v.utilization),
                "pressure": finite(Some(v.pressure)),
                "last_seen_age_seconds": finite(Some(v.last_seen_age_seconds)),
                "runtime": v.runtime.as_str(),
                "heap_growth_bytes_per_second": finite(v.heap_growth),
                "active_requests": finite(v.active_requests),
                "lifecycle": v.lifecycle.map(|l| l.as_str()),
                "export_interval_seconds": finite(v.export_interval_seconds),
                "warnings": v.warnings,
                "stall_in_progress_seconds": finite(v.stall_in_progress_seconds),
                "shed_ratio": finite(v.shed_ratio),
                "shed_by_route": v.shed_routes.iter().map(|(route, shed, requests)| json!({
                    "route": route,
                    "shed": shed,
                    "requests": requests,
                })).collect::<Vec<_>>(),
                "stuck_workers": v.stuck_workers.iter().map(|w| json!({
                    "worker": w.worker,
                    "seconds": finite(Some(w.seconds)),
                    "location": w.location,
                })).collect::<Vec<_>>(),
                "routes": v.routes.iter().map(|r| json!({
                    "route": r.route,
                    "method": r.method,
                    "requests": r.requests,
                    "requests_per_second": finite(Some(r.requests_per_second)),
                    "error_ratio": finite(Some(r.error_ratio)),
                    "p50_seconds": finite(r.p50_seconds),
                    "p95_seconds": finite(r.p95_seconds),
                    "p99_seconds": finite(r.p99_seconds),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "services": services, "draining": draining })
}

async fn pressure(State(state): State<Arc<AgentState>>) -> Json<Value> {
    let views = state.evaluate(Instant::now());
    let max = views.iter().map(|v| v.pressure).fold(0.0_f64, f64::max);
    let services: Vec<Value> = views
        .iter()
        .map(|v| {
            json!({
                "service": v.key.service,
                "instance": v.key.instance,
                "pressure": finite(Some(v.pressure)),
            })
        })
        .collect();
    Json(json!({ "services": services, "max": max }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Runtime;
    use crate::store::ServiceKey;

    fn view(service: &str, instance: &str, state: HealthState, age: f64) -> ServiceView {
        ServiceView {
            key: ServiceKey {
                service: service.into(),
                instance: instance.into(),
            },
            state,
            reasons: Vec::new(),
            runtime: Runtime::Tokio,
            lag_seconds: None,
            stall_seconds: None,
            delay_p99_seconds: None,
            utilization: None,
            pressure: 0.0,
            last_seen_age_seconds: age,
            heap_growth: None,
            lifecycle: None,
            active_requests: None,
            export_interval_seconds: None,
            warnings: Vec::new(),
            stuck_workers: Vec::new(),
            stall_in_progress_seconds: None,
            shed_ratio: None,
            shed_routes: Vec::new(),
            routes: Vec::new(),
        }
    }

    #[test]
    fn a_restarted_instance_replaces_the_departed_one() {
        let old = view("svc", "a", HealthState::Stale, 30.0);
        let new = view("svc", "b", HealthState::Ok, 0.5);
        // Alone, the departed instance holds readiness at 503.
        assert_eq!(
            readiness(std::slice::from_ref(&old), None, false).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // With a live successor it is ignored, in either order.
        let (code, body) = readiness(&[old.clone(), new.clone()], None, false);
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["services"], 1);
        // A stopped (graceful shutdown) predecessor is replaced too.
        let mut stopped = view("svc", "a", HealthState::Ok, 10.0);
        stopped.lifecycle = Some(Lifecycle::Stopped);
        assert_eq!(
            readiness(&[new.clone(), stopped], None, false).0,
            StatusCode::OK
        );
        // An unhealthy successor still makes the agent not ready.
        let sick = view("svc", "b", HealthState::Unhealthy, 0.5);
        assert_eq!(
            readiness(&[old.clone(), sick], None, false).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // Another service does not replace it, and a stale successor does not either.
        let other = view("other", "c", HealthState::Ok, 0.5);
        assert_eq!(
            readiness(&[old.clone(), other], None, false).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let stale_new = view("svc", "b", HealthState::Stale, 6.0);
        assert_eq!(
            readiness(&[old, stale_new], None, false).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn liveness_fails_only_past_the_stall_limit_of_the_named_service() {
        let limit = Duration::from_secs(30);
        let mut stalled = view("svc", "a", HealthState::Unhealthy, 0.5);
        stalled.stall_in_progress_seconds = Some(31.0);
        let mut short = view("svc", "b", HealthState::Unhealthy, 0.5);
        short.stall_in_progress_seconds = Some(29.0);
        let (code, body) = liveness(&[stalled.clone(), short.clone()], "svc", limit);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["reasons"].as_array().map(Vec::len), Some(1), "{body}");
        assert_eq!(body["reasons"][0]["instance"], "a");
        assert_eq!(liveness(&[short], "svc", limit).0, StatusCode::OK);
        assert_eq!(
            liveness(&[stalled.clone()], "other", limit).0,
            StatusCode::OK
        );
        // A stale instance replaced by a live one no longer counts.
        let mut old = stalled;
        old.state = HealthState::Stale;
        old.last_seen_age_seconds = 40.0;
        let new = view("svc", "c", HealthState::Ok, 0.5);
        assert_eq!(liveness(&[old, new], "svc", limit).0, StatusCode::OK);
    }
}
