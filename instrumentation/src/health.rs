//! Local health router (`/livez`, `/readyz`) for services without the sidecar, or as the
//! service's own probe endpoints next to it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::shed::{OverloadFn, Pressure, Thresholds};
use crate::shutdown::{Lifecycle, LifecycleState};

impl HealthBuilder {
    /// Default scheduling delay above which local `/readyz` answers 503: 200 ms.
    pub const DEFAULT_READY_MAX_DELAY: Duration = Duration::from_millis(200);
}

/// Builder of [`Health`].
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct HealthBuilder {
    pressure: Option<Pressure>,
    lifecycle: Option<Lifecycle>,
    max_delay: Option<Duration>,
    max_utilization: Option<f64>,
    liveness_stall: Option<Duration>,
}

impl HealthBuilder {
    /// Pressure to judge readiness by ([`crate::LoopwatchGuard::pressure`]); without one,
    /// readiness only reflects the lifecycle.
    pub fn pressure(mut self, pressure: Pressure) -> Self {
        self.pressure = Some(pressure);
        self
    }
    /// Lifecycle: readiness is 503 while draining or stopped.
    pub fn lifecycle(mut self, lifecycle: Lifecycle) -> Self {
        self.lifecycle = Some(lifecycle);
        self
    }
    /// Readiness 503 at or over this scheduling delay; default [`HealthBuilder::DEFAULT_READY_MAX_DELAY`].
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = Some(d);
        self
    }
    /// Readiness 503 at or over this utilization (0..=1); off by default.
    pub fn max_utilization(mut self, u: f64) -> Self {
        self.max_utilization = Some(u);
        self
    }
    /// Opt-in: `/livez` answers 503 while the scheduling delay is at or over `d` (a deadlock
    /// that only a restart fixes). Note that a fully blocked runtime cannot answer at all.
    pub fn liveness_stall(mut self, d: Duration) -> Self {
        self.liveness_stall = Some(d);
        self
    }
    /// Builds the health state.
    pub fn build(self) -> Health {
        let thresholds = self.pressure.map(|pressure| Thresholds {
            pressure,
            max_delay: self
                .max_delay
                .unwrap_or(HealthBuilder::DEFAULT_READY_MAX_DELAY),
            max_utilization: self.max_utilization,
            custom: None::<OverloadFn>,
        });
        Health {
            inner: Arc::new(HealthInner {
                thresholds,
                lifecycle: self.lifecycle.unwrap_or_default(),
                liveness_stall: self.liveness_stall,
            }),
        }
    }
}

#[derive(Debug)]
struct HealthInner {
    thresholds: Option<Thresholds>,
    lifecycle: Lifecycle,
    liveness_stall: Option<Duration>,
}

/// Local liveness and readiness (cheap to clone).
///
/// ```
/// use loopwatch::health::Health;
/// use loopwatch::shed::Pressure;
/// use loopwatch::shutdown::Lifecycle;
/// let lifecycle = Lifecycle::new(); // from a running loopwatch: guard.lifecycle()
/// let health = Health::builder().pressure(Pressure::manual()).lifecycle(lifecycle).build();
/// let app: axum::Router = axum::Router::new().merge(health.router());
/// assert!(health.readiness().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<HealthInner>,
}

impl Health {
    /// A builder with the defaults.
    pub fn builder() -> HealthBuilder {
        HealthBuilder::default()
    }

    /// `Ok(())` when ready, else why not (`draining`, `stopped`, or the overload).
    pub fn readiness(&self) -> Result<(), String> {
        match self.inner.lifecycle.state() {
            LifecycleState::Running => {}
            LifecycleState::Draining => return Err("draining".to_owned()),
            _ => return Err("stopped".to_owned()),
        }
        match self.inner.thresholds.as_ref().and_then(Thresholds::check) {
            Some(o) => Err(format!("overloaded: {o}")),
            None => Ok(()),
        }
    }

    /// `Ok(())` when live; with [`HealthBuilder::liveness_stall`] not live while stalled that long.
    pub fn liveness(&self) -> Result<(), String> {
        if let (Some(limit), Some(t)) = (self.inner.liveness_stall, &self.inner.thresholds) {
            let d = t.pressure.scheduling_delay();
            if d >= limit {
                return Err(format!(
                    "stalled: scheduling delay {:.0} ms >= {:.0} ms",
                    d.as_secs_f64() * 1e3,
                    limit.as_secs_f64() * 1e3
                ));
            }
        }
        Ok(())
    }

    /// A router with `GET /livez` and `GET /readyz`: 200 `{"status":"ok"}` or 503
    /// `{"status":"unavailable","reason":"..."}`. Merge it into the app.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }
}

fn answer(r: Result<(), String>) -> Response {
    let (code, body) = match r {
        Ok(()) => (StatusCode::OK, "{\"status\":\"ok\"}\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{{\"status\":\"unavailable\",\"reason\":\"{}\"}}\n",
                reason.replace(['"', '\\'], "'")
            ),
        ),
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn livez(State(h): State<Health>) -> Response {
    answer(h.liveness())
}

async fn readyz(State(h): State<Health>) -> Response {
    answer(h.readiness())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn call(app: &Router, path: &str) -> (u16, String) {
        let resp = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).expect("req"))
            .await
            .expect("infallible");
        let code = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 4096)
            .await
            .unwrap_or_default();
        (code, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn readyz_follows_pressure_and_lifecycle() {
        let p = Pressure::manual();
        let l = Lifecycle::new();
        let h = Health::builder()
            .pressure(p.clone())
            .lifecycle(l.clone())
            .max_delay(Duration::from_millis(50))
            .liveness_stall(Duration::from_secs(5))
            .build();
        let app = h.router();
        assert_eq!(call(&app, "/readyz").await.0, 200);
        p.set_delay(Duration::from_millis(60));
        let (code, body) = call(&app, "/readyz").await;
        assert_eq!(code, 503);
        assert!(
            body.contains("overloaded: scheduling delay 60.0 ms"),
            "{body}"
        );
        assert_eq!(call(&app, "/livez").await.0, 200);
        p.set_delay(Duration::from_secs(6));
        assert_eq!(call(&app, "/livez").await.0, 503);
        p.set_delay(Duration::ZERO);
        l.set(LifecycleState::Draining);
        let (code, body) = call(&app, "/readyz").await;
        assert_eq!((code, body.contains("draining")), (503, true), "{body}");
        assert_eq!(call(&app, "/livez").await.0, 200);
    }
}
