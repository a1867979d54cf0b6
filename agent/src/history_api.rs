//! `GET /v1/history?service=NAME[&instance=ID]`: the history of a service's instances
//! ([`crate::history`]) as JSON. Times are Unix seconds. The exact shape is in the README,
//! section "History".
//!
//! - 200 `{"service","now","step_seconds":1,"instances":[{"instance","samples":[{"time",
//!   "state","lag_seconds","utilization","pressure","error_ratio",
//!   "heap_growth_bytes_per_second","stuck_workers"}],"episodes":[{"kind","start","end",
//!   "duration_seconds","ongoing","reasons","peak_seconds"}]}]}`; unknown numbers are `null`.
//! - 400 without `service`; 404 when no instance matches.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::history::Episode;
use crate::state::{AgentState, HistoryView};

/// Query of `/v1/history`.
#[derive(Debug, Deserialize)]
pub(crate) struct HistoryQuery {
    service: Option<String>,
    instance: Option<String>,
}

fn finite(v: Option<f64>) -> Value {
    v.filter(|x| x.is_finite())
        .map_or(Value::Null, |x| json!(x))
}

fn episode_json(state: &AgentState, e: &Episode, now_ms: u64) -> Value {
    let end = e.end_ms.unwrap_or(now_ms);
    json!({
        "kind": e.kind.as_str(),
        "start": state.unix_time(e.start_ms),
        "end": e.end_ms.map(|ms| state.unix_time(ms)),
        "duration_seconds": end.saturating_sub(e.start_ms) as f64 / 1e3,
        "ongoing": e.end_ms.is_none(),
        "reasons": e.reasons,
        "peak_seconds": finite(e.peak_seconds),
    })
}

/// The JSON of one instance's history.
fn instance_json(state: &AgentState, h: &HistoryView, now_ms: u64) -> Value {
    let samples: Vec<Value> = h
        .samples
        .iter()
        .map(|s| {
            json!({
                "time": state.unix_time(u64::from(s.sec) * 1000),
                "state": s.state.as_str(),
                "lag_seconds": finite(s.lag_seconds),
                "utilization": finite(s.utilization),
                "pressure": finite(s.pressure),
                "error_ratio": finite(s.error_ratio),
                "heap_growth_bytes_per_second": finite(s.heap_growth),
                "stuck_workers": s.stuck_workers,
            })
        })
        .collect();
    let episodes: Vec<Value> = h
        .episodes
        .iter()
        .map(|e| episode_json(state, e, now_ms))
        .collect();
    json!({ "instance": h.key.instance, "samples": samples, "episodes": episodes })
}

/// `GET /v1/history`.
pub(crate) async fn handler(
    State(state): State<Arc<AgentState>>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let Some(service) = q.service.filter(|s| !s.is_empty()) else {
        let body = json!({ "error": "missing query parameter: service" });
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    };
    let now = Instant::now();
    let views = state.history(&service, q.instance.as_deref(), now);
    if views.is_empty() {
        let body = json!({ "error": format!("no instance of service {service:?}") });
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    let now_ms = u64::from(state.uptime_seconds(now)) * 1000;
    let instances: Vec<Value> = views
        .iter()
        .map(|h| instance_json(&state, h, now_ms))
        .collect();
    Json(json!({
        "service": service,
        "now": state.unix_time(now_ms),
        "step_seconds": 1,
        "instances": instances,
    }))
    .into_response()
}
