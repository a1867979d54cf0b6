//! `POST /drain[?timeout=20s]`, for a Kubernetes `preStop` hook.
//!
//! Accepted from a loopback peer, or from any peer with `Authorization: Bearer <drain.token>`
//! when a token is configured (otherwise 403; a wrong or missing token: 401). Other methods:
//! 405. A `timeout` that does not parse: 400. The timeout defaults to `drain.timeout` and is
//! capped at `drain.max_timeout`.
//!
//! It marks the agent draining (`/readyz` answers 503 with reason `draining` from then on),
//! then waits until every tracked, non-stale service reports `http.server.active_requests`
//! summing to 0 in an export that arrived *after* the drain began (a value from before may be
//! up to one export interval old and miss a request that started since; services that never
//! sent the metric count as 0 at once), or the deadline passes, and answers 200 with
//! `{"drained":true|false,"waited_seconds":S,"timeout_seconds":T,"active_requests":N,
//! "services":[{"service","instance","active_requests":N|null,"lifecycle":..|null}]}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::parse_duration;
use crate::health::HealthState;
use crate::state::{AgentState, ServiceView};

/// The peer address of an admin connection (connect info for any listener with socket
/// addresses, e.g. [`crate::deadline::DeadlineListener`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, crate::deadline::DeadlineListener>,
    > for Peer
{
    fn connect_info(
        stream: axum::serve::IncomingStream<'_, crate::deadline::DeadlineListener>,
    ) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// Query of `POST /drain`.
#[derive(Debug, Deserialize)]
pub(crate) struct DrainQuery {
    timeout: Option<String>,
}

/// How often the drain loop re-checks without a new export.
const POLL: Duration = Duration::from_millis(100);

fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Compares without early exit (the token is a secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Checks the peer and the bearer token; `Err` is the refusal response.
pub fn authorize(
    state: &AgentState,
    peer: &SocketAddr,
    headers: &HeaderMap,
) -> Result<(), Box<Response>> {
    if is_loopback(peer) {
        return Ok(());
    }
    let token = &state.config().drain.token;
    if token.is_empty() {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "drain is accepted from loopback only (no drain.token configured)",
        )));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if same(t.as_bytes(), token.as_bytes()) => Ok(()),
        _ => {
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            Err(Box::new(r))
        }
    }
}

/// In-flight requests of the services that count for draining (non-stale), rounded.
pub(crate) fn active(views: &[ServiceView]) -> (u64, Vec<Value>) {
    let mut total = 0u64;
    let mut services = Vec::new();
    for v in views {
        if v.state == HealthState::Stale {
            continue;
        }
        let n = v
            .active_requests
            .filter(|x| x.is_finite())
            .map(|x| x.round().max(0.0) as u64);
        total = total.saturating_add(n.unwrap_or(0));
        services.push(json!({
            "service": v.key.service,
            "instance": v.key.instance,
            "active_requests": n,
            "lifecycle": v.lifecycle.map(|l| l.as_str()),
        }));
    }
    (total, services)
}

/// Whether every non-stale service that reports `http.server.active_requests` has exported
/// within the last `since` (that is, after the drain began), so its count is current.
fn all_reported_since(views: &[ServiceView], since: Duration) -> bool {
    views.iter().all(|v| {
        v.state == HealthState::Stale
            || v.active_requests.is_none()
            || v.last_seen_age_seconds < since.as_secs_f64()
    })
}

/// The `POST /drain` handler.
pub(crate) async fn handler(
    State(state): State<Arc<AgentState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Query(q): Query<DrainQuery>,
) -> Response {
    if let Err(r) = authorize(&state, &peer, &headers) {
        return *r;
    }
    let cfg = &state.config().drain;
    let timeout = match q.timeout.as_deref() {
        None => cfg.timeout,
        Some(t) => match parse_duration(t) {
            Ok(d) => d,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("timeout: {e}")),
        },
    }
    .min(cfg.max_timeout);
    state.set_draining();
    tracing::info!(%peer, ?timeout, "drain requested");
    let start = Instant::now();
    let deadline = start + timeout;
    let (drained, total, services) = loop {
        let changed = state.changed();
        let views = state.evaluate(Instant::now());
        let (total, services) = active(&views);
        if total == 0 && all_reported_since(&views, start.elapsed()) {
            break (true, total, services);
        }
        let now = Instant::now();
        if now >= deadline {
            break (false, total, services);
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep(POLL.min(deadline - now)) => {}
        }
    };
    let waited = start.elapsed().as_secs_f64();
    tracing::info!(drained, waited, active_requests = total, "drain answered");
    Json(json!({
        "drained": drained,
        "waited_seconds": waited,
        "timeout_seconds": timeout.as_secs_f64(),
        "active_requests": total,
        "services": services,
    }))
    .into_response()
}
