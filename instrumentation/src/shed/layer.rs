//! The shedding layer: [`ShedLayer`], its builder, service and future.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use tower::{Layer, Service};

use super::{Overload, Pressure, Thresholds};

impl ShedLayerBuilder {
    /// Default scheduling delay above which [`ShedLayer`] sheds: 200 ms.
    pub const DEFAULT_SHED_MAX_DELAY: Duration = Duration::from_millis(200);
    /// Default `Retry-After` of a shed response: 1 s.
    pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
    /// Paths never shed by default (the local health router's routes).
    pub const DEFAULT_EXEMPT_PATHS: [&str; 2] = ["/livez", "/readyz"];
}

/// Builder of [`ShedLayer`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ShedLayerBuilder {
    thresholds: Thresholds,
    retry_after: Duration,
    exempt: Vec<String>,
}

impl ShedLayerBuilder {
    /// Shed while the scheduling delay ([`Pressure::scheduling_delay`]) is at or over `limit`;
    /// default [`ShedLayerBuilder::DEFAULT_SHED_MAX_DELAY`].
    pub fn max_delay(mut self, limit: Duration) -> Self {
        self.thresholds.max_delay = limit;
        self
    }
    /// Also shed while utilization ([`Pressure::utilization`], 0..=1) is at or over `limit`;
    /// off by default.
    pub fn max_utilization(mut self, limit: f64) -> Self {
        self.thresholds.max_utilization = Some(limit);
        self
    }
    /// Also shed while `f` returns true (e.g. heap growth over a limit). Called per request:
    /// keep it to a few atomic loads.
    pub fn also_when(mut self, f: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.thresholds.custom = Some(Arc::new(f));
        self
    }
    /// `Retry-After` of shed responses (whole seconds, at least 1); default [`ShedLayerBuilder::DEFAULT_RETRY_AFTER`].
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }
    /// Adds a path (exact match on the URI path) that is never shed. [`ShedLayerBuilder::DEFAULT_EXEMPT_PATHS`]
    /// are exempt unless [`ShedLayerBuilder::clear_exempt`] is called.
    pub fn exempt(mut self, path: impl Into<String>) -> Self {
        self.exempt.push(path.into());
        self
    }
    /// Removes every exempt path, the defaults included.
    pub fn clear_exempt(mut self) -> Self {
        self.exempt.clear();
        self
    }
    /// Builds the layer.
    pub fn build(self) -> ShedLayer {
        let secs = self.retry_after.as_secs().max(1);
        let retry_after =
            HeaderValue::from_str(&secs.to_string()).unwrap_or(HeaderValue::from_static("1"));
        ShedLayer {
            inner: Arc::new(ShedInner {
                thresholds: self.thresholds,
                retry_after,
                exempt: self.exempt,
                shed: AtomicU64::new(0),
            }),
        }
    }
}

#[derive(Debug)]
struct ShedInner {
    thresholds: Thresholds,
    retry_after: HeaderValue,
    exempt: Vec<String>,
    shed: AtomicU64,
}

/// Marks a response [`ShedLayer`] produced, so that the route layer records it with
/// `error.type` = [`crate::http::SHED_ERROR_TYPE`] instead of as a server error.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shed;

/// Tower layer answering `503` + `Retry-After` while the runtime is overloaded. Reads the
/// pressure per request (a few atomics); requests to exempt paths always pass.
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use loopwatch::shed::{Pressure, ShedLayer};
///
/// let pressure = Pressure::manual(); // from a running loopwatch: guard.pressure()
/// let app: Router = Router::new()
///     .route("/", get(|| async { "ok" }))
///     .layer(ShedLayer::builder(pressure).max_delay(Duration::from_millis(100)).build());
/// ```
#[derive(Debug, Clone)]
pub struct ShedLayer {
    inner: Arc<ShedInner>,
}

impl ShedLayer {
    /// A builder reading `pressure`.
    pub fn builder(pressure: Pressure) -> ShedLayerBuilder {
        ShedLayerBuilder {
            thresholds: Thresholds {
                pressure,
                max_delay: ShedLayerBuilder::DEFAULT_SHED_MAX_DELAY,
                max_utilization: None,
                custom: None,
            },
            retry_after: ShedLayerBuilder::DEFAULT_RETRY_AFTER,
            exempt: ShedLayerBuilder::DEFAULT_EXEMPT_PATHS
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
        }
    }

    /// Requests shed since the layer was built.
    pub fn shed_count(&self) -> u64 {
        self.inner.shed.load(Ordering::Relaxed)
    }

    /// Why a request arriving now would be shed, or `None`.
    pub fn overloaded(&self) -> Option<Overload> {
        self.inner.thresholds.check()
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = ShedService<S>;
    fn layer(&self, service: S) -> Self::Service {
        ShedService {
            inner: Arc::clone(&self.inner),
            service,
        }
    }
}

/// The service produced by [`ShedLayer`].
#[derive(Debug, Clone)]
pub struct ShedService<S> {
    inner: Arc<ShedInner>,
    service: S,
}

impl<S, B> Service<Request<B>> for ShedService<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = future::ShedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.inner.thresholds.pressure.wake_probe();
        let path = req.uri().path();
        if !self.inner.exempt.iter().any(|p| p == path)
            && let Some(why) = self.inner.thresholds.check()
        {
            {
                self.inner.shed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(reason = %why, "loopwatch: shedding request");
                let mut resp = Response::new(Body::from("overloaded, retry later\n"));
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, self.inner.retry_after.clone());
                // Marks the response for the route layer: shed, not an error.
                resp.extensions_mut().insert(Shed);
                return future::ShedFuture::Shed { resp: Some(resp) };
            }
        }
        future::ShedFuture::Inner {
            fut: self.service.call(req),
        }
    }
}

/// The shedding layer's response future.
pub mod future {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use axum::body::Body;
    use axum::http::Response;

    pin_project_lite::pin_project! {
        /// Response future of [`super::ShedService`].
        #[project = ShedProj]
        #[allow(missing_docs)]
        pub enum ShedFuture<F> {
            /// Passed through.
            Inner { #[pin] fut: F },
            /// Shed: answers at once.
            Shed { resp: Option<Response<Body>> },
        }
    }

    impl<F, E> Future for ShedFuture<F>
    where
        F: Future<Output = Result<Response<Body>, E>>,
    {
        type Output = Result<Response<Body>, E>;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            match self.project() {
                ShedProj::Inner { fut } => fut.poll(cx),
                ShedProj::Shed { resp } => match resp.take() {
                    Some(r) => Poll::Ready(Ok(r)),
                    None => Poll::Pending, // polled after completion: never again ready
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn status(app: &Router, path: &str) -> (StatusCode, Option<String>) {
        let resp = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let retry = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (resp.status(), retry)
    }

    #[tokio::test]
    async fn sheds_over_threshold_and_exempts_health_routes() {
        let p = Pressure::manual();
        let layer = ShedLayer::builder(p.clone())
            .max_delay(Duration::from_millis(100))
            .retry_after(Duration::from_secs(3))
            .build();
        let app = Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/readyz", get(|| async { "ready" }))
            .layer(layer.clone());

        assert_eq!(status(&app, "/").await, (StatusCode::OK, None));
        p.set_delay(Duration::from_millis(150));
        assert_eq!(
            status(&app, "/").await,
            (StatusCode::SERVICE_UNAVAILABLE, Some("3".to_owned()))
        );
        assert_eq!(status(&app, "/readyz").await.0, StatusCode::OK);
        assert!(matches!(layer.overloaded(), Some(Overload::Delay { .. })));
        assert_eq!(layer.shed_count(), 1);
        p.set_delay(Duration::from_millis(99));
        assert_eq!(status(&app, "/").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn utilization_and_custom_signals() {
        let p = Pressure::manual();
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = Arc::clone(&flag);
        let layer = ShedLayer::builder(p.clone())
            .max_utilization(0.9)
            .also_when(move || f.load(Ordering::Relaxed))
            .build();
        let app = Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(layer);
        p.set_utilization(0.95);
        assert_eq!(status(&app, "/").await.0, StatusCode::SERVICE_UNAVAILABLE);
        p.set_utilization(0.5);
        assert_eq!(status(&app, "/").await.0, StatusCode::OK);
        flag.store(true, Ordering::Relaxed);
        assert_eq!(status(&app, "/").await.0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
