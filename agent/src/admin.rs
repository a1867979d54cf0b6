//! Admin HTTP server (read-only): `/livez`, `/readyz`, `/metrics`, `/v1/status`,
//! `/v1/pressure`.
//!
//! - `GET /livez` -> 200 `{"status":"ok"}`.
//! - `GET /readyz[?service=NAME]` -> 200 `{"status":"ready","services":N}`, or 503
//!   `{"status":"not_ready","reasons":[{"service":..,"instance":..,"state":"unhealthy|stale","reason":..}]}`
//!   when any (matching) service instance is unhealthy or stale. No services -> 200 with 0.
//! - `GET /metrics` -> Prometheus text exposition 0.0.4 (see [`crate::prometheus`]).
//! - `GET /v1/status` -> `{"services":[{"service","instance","state","reasons","lag_seconds",
//!   "stall_seconds","delay_p99_seconds","utilization","pressure","last_seen_age_seconds",
//!   "runtime"}]}`; unknown numbers are `null`.
//! - `GET /v1/pressure` -> `{"services":[{"service","instance","pressure"}],"max":M}` (0 when
//!   no services).

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::health::HealthState;
use crate::prometheus;
use crate::state::{AgentState, ServiceView};

/// Builds the admin router.
pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/pressure", get(pressure))
        .with_state(state)
}

async fn livez() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Query of `/readyz`.
#[derive(Debug, Deserialize)]
struct ReadyQuery {
    service: Option<String>,
}

/// The `/readyz` answer for these views: status code and JSON body.
pub fn readiness(views: &[ServiceView], service: Option<&str>) -> (StatusCode, Value) {
    let scoped: Vec<&ServiceView> = views
        .iter()
        .filter(|v| service.is_none_or(|s| v.key.service == s))
        .collect();
    let mut reasons = Vec::new();
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

async fn readyz(State(state): State<Arc<AgentState>>, Query(q): Query<ReadyQuery>) -> Response {
    let views = state.evaluate(Instant::now());
    let (code, body) = readiness(&views, q.service.as_deref());
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
            })
        })
        .collect();
    Json(json!({ "services": services }))
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
