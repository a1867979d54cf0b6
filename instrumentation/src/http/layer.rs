//! The tower layer: per-request recording on the hot path, the request span, and the
//! response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::{Request, Response};
use tokio_metrics::{Instrumented, TaskMonitor};
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;

use super::*;

/// Tower layer recording `http.server.*` metrics per route; made by [`RouteMetrics::layer`].
#[derive(Clone)]
pub struct RouteLayer {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for RouteLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteLayer")
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;
    fn layer(&self, service: S) -> Self::Service {
        RouteService {
            inner: Arc::clone(&self.inner),
            service,
        }
    }
}

/// The service produced by [`RouteLayer`].
#[derive(Clone)]
pub struct RouteService<S> {
    pub(super) inner: Arc<Inner>,
    pub(super) service: S,
}

impl<S> std::fmt::Debug for RouteService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteService")
    }
}

impl<S, B, ResBody> Service<Request<B>> for RouteService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = RouteFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = &*self.inner;
        let route = inner.route_id(req.extensions().get::<MatchedPath>());
        let method = method_code(req.method());
        inner.bins.start(method);
        if let Some(p) = &inner.pressure {
            // One relaxed load; wakes the probe thread once per quiet -> busy transition, so
            // a block that starts with this request is probed from its start.
            p.wake_probe();
        }
        // DEBUG: the `info` filter most services run leaves the span out, so by default it
        // costs one level check per request.
        let span = if inner.trace_spans && tracing::level_enabled!(tracing::Level::DEBUG) {
            request_span(inner, route, method)
        } else {
            None
        };
        let monitor = inner
            .monitors
            .as_ref()
            .and_then(|m| m.get(route))
            .map(|m| m.get_or_init(TaskMonitor::new));
        let rec = Rec {
            inner: Arc::clone(&self.inner),
            start: 0,
            delayed_at_start: 0,
            poll_ns: 0,
            polls: 0,
            slow: 0,
            route: route as u16,
            method: method as u8,
            done: false,
            span,
        };
        if let Some(m) = monitor {
            let fut = call_in_span(&mut self.service, req, rec.span.as_deref());
            return RouteFuture {
                fut: MaybeMonitored::Monitored {
                    fut: Box::pin(m.instrument(fut)),
                },
                rec,
            };
        }
        // Built as the tail expression, so the inner future is written in place (a local
        // would cost a copy of the whole future).
        if rec.span.is_none() {
            RouteFuture {
                fut: MaybeMonitored::Plain {
                    fut: self.service.call(req),
                },
                rec,
            }
        } else {
            RouteFuture {
                fut: MaybeMonitored::Plain {
                    fut: call_in_span(&mut self.service, req, rec.span.as_deref()),
                },
                rec,
            }
        }
    }
}

/// Calls the inner service with the request's span (if any) entered.
pub(super) fn call_in_span<S: Service<R>, R>(
    service: &mut S,
    req: R,
    span: Option<&SpanState>,
) -> S::Future {
    let _e = span.map(|s| s.span.enter());
    service.call(req)
}

/// The request's `http.request` span; `None` (nothing allocated or formatted) unless a
/// subscriber enables `loopwatch::http` at DEBUG.
#[cold]
pub(super) fn request_span(inner: &Inner, route: usize, method: usize) -> Option<Box<SpanState>> {
    let span = tracing::debug_span!(
        target: "loopwatch::http",
        "http.request",
        otel.name = Empty,
        http.request.method = METHODS[method],
        http.route = inner.route_name(route).unwrap_or(OVERFLOW_ROUTE),
        http.response.status_code = Empty,
        loopwatch.waited_ms = Empty,
        loopwatch.stall_before_ms = Empty,
        loopwatch.poll_ms = Empty,
        loopwatch.polls = Empty,
    );
    if span.is_disabled() {
        return None;
    }
    let route_name = inner.route_name(route).unwrap_or(OVERFLOW_ROUTE);
    span.record(
        "otel.name",
        tracing::field::display(format_args!("{} {route_name}", METHODS[method])),
    );
    Some(Box::new(SpanState {
        span,
        stall_before_us: 0,
    }))
}

/// A request's enabled span, boxed so that requests without one carry a single pointer.
pub(super) struct SpanState {
    pub(super) span: Span,
    /// Runtime stall that ended right before the first poll.
    pub(super) stall_before_us: u64,
}

/// Per-request state; recording as cancelled on drop if the request never completed.
pub(super) struct Rec {
    pub(super) inner: Arc<Inner>,
    /// Raw clock reading at the first poll (the request's start as far as the layer can
    /// tell: right after `call`); 0 until then.
    pub(super) start: u64,
    /// Probe's delay clock (µs) at the end of the first poll; only read for requests that
    /// needed more than one poll (a one-poll request spent no time outside its polls).
    pub(super) delayed_at_start: u64,
    pub(super) poll_ns: u64,
    pub(super) polls: u32,
    pub(super) slow: u32,
    pub(super) route: u16,
    pub(super) method: u8,
    /// Recorded (completed, or cancelled on drop).
    pub(super) done: bool,
    pub(super) span: Option<Box<SpanState>>,
}

impl Rec {
    /// Records the request once: `dur_ns` from the first poll to its end.
    pub(super) fn finish(&mut self, dur_ns: u64, status: u16, kind: u64) {
        self.done = true;
        let inner = &*self.inner;
        let method = usize::from(self.method);
        // Runtime lateness during the request: probe-measured delay between the end of the
        // first poll and the end, at most the time the request spent outside its own polls
        // (zero for a request done in one poll: the probe is not consulted).
        let outside_ns = dur_ns.saturating_sub(self.poll_ns);
        let waited_ns = match &inner.pressure {
            Some(p) if outside_ns > 0 => {
                let us = p
                    .delayed_clock_us_now()
                    .saturating_sub(self.delayed_at_start);
                us.saturating_mul(1000).min(outside_ns)
            }
            _ => 0,
        };
        let sample = bins::Sample {
            series: series_id(usize::from(self.route), method, status, kind),
            bucket: bucket_of_ns(dur_ns),
            dur_ns,
            polls: u64::from(self.polls),
            slow_polls: u64::from(self.slow),
            poll_ns: self.poll_ns,
            waited_ns,
        };
        if !inner.bins.record(&sample) {
            inner.unrecorded_by_method[method].fetch_add(1, Ordering::Release);
        }
        if let Some(s) = &self.span {
            self.record_span(s, dur_ns, status, waited_ns);
        } else if waited_ns >= inner.wait_event_ns && waited_ns > 0 {
            warn_waited(waited_ns, dur_ns, self.poll_ns);
        }
    }

    #[cold]
    pub(super) fn record_span(&self, s: &SpanState, dur_ns: u64, status: u16, waited_ns: u64) {
        let inner = &*self.inner;
        let span = &s.span;
        if status != 0 {
            span.record("http.response.status_code", status);
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        span.record("loopwatch.waited_ms", ms(waited_ns));
        let before_ns = s.stall_before_us.saturating_mul(1000);
        span.record("loopwatch.stall_before_ms", ms(before_ns));
        if before_ns >= inner.wait_event_ns && before_ns > 0 {
            tracing::warn!(
                parent: span,
                stall_before_ms = before_ns / 1_000_000,
                duration_ms = dur_ns / 1_000_000,
                "request started right after a {} ms runtime stall: it may have waited up to that long before it was polled",
                before_ns / 1_000_000
            );
        }
        span.record("loopwatch.poll_ms", ms(self.poll_ns));
        span.record("loopwatch.polls", self.polls);
        if waited_ns >= inner.wait_event_ns && waited_ns > 0 {
            tracing::warn!(
                parent: span,
                waited_ms = waited_ns / 1_000_000,
                duration_ms = dur_ns / 1_000_000,
                poll_ms = self.poll_ns / 1_000_000,
                "request waited {} ms behind a blocked runtime",
                waited_ns / 1_000_000
            );
        }
    }
}

/// The "waited behind a blocked runtime" warning of a request without a span (rare path).
#[cold]
pub(super) fn warn_waited(waited_ns: u64, dur_ns: u64, poll_ns: u64) {
    tracing::warn!(
        target: "loopwatch::http",
        waited_ms = waited_ns / 1_000_000,
        duration_ms = dur_ns / 1_000_000,
        poll_ms = poll_ns / 1_000_000,
        "request waited {} ms behind a blocked runtime",
        waited_ns / 1_000_000
    );
}

impl Drop for Rec {
    fn drop(&mut self) {
        if !self.done {
            let dur_ns = match self.start {
                0 => 0,
                start => self
                    .inner
                    .clock
                    .delta_as_nanos(start, self.inner.clock.raw()),
            };
            self.finish(dur_ns, 0, KIND_CANCELLED);
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`RouteService`].
    pub struct RouteFuture<F> {
        #[pin]
        fut: MaybeMonitored<F>,
        rec: Rec,
    }
}

pin_project_lite::pin_project! {
    /// The inner future, wrapped in the route's `TaskMonitor` when enabled (boxed: that mode
    /// allocates per task anyway, and the plain future stays as small as the inner one).
    #[project = MaybeProj]
    enum MaybeMonitored<F> {
        Plain { #[pin] fut: F },
        Monitored { fut: Pin<Box<Instrumented<F>>> },
    }
}

impl<F: Future> Future for MaybeMonitored<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            MaybeProj::Plain { fut } => fut.poll(cx),
            MaybeProj::Monitored { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<F, ResBody, E> Future for RouteFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let rec = this.rec;
        if rec.done {
            return this.fut.poll(cx);
        }
        let clock = &rec.inner.clock;
        let t0 = clock.raw();
        if rec.start == 0 {
            // A raw reading of 0 would only mean "not started" again: harmless.
            rec.start = t0;
            if let Some(s) = &mut rec.span
                && let Some(p) = &rec.inner.pressure
            {
                s.stall_before_us = p.stall_before_us(Instant::now());
            }
        }
        let res = match &rec.span {
            None => this.fut.poll(cx),
            Some(s) => {
                let _e = s.span.enter();
                this.fut.poll(cx)
            }
        };
        let t1 = clock.raw();
        let d = clock.delta_as_nanos(t0, t1);
        rec.poll_ns = rec.poll_ns.saturating_add(d);
        rec.polls = rec.polls.saturating_add(1);
        if d >= rec.inner.slow_poll_ns {
            rec.slow = rec.slow.saturating_add(1);
        }
        match &res {
            Poll::Ready(r) => {
                let (status, kind) = match r {
                    Ok(resp) => {
                        let s = resp.status().as_u16();
                        let kind = if s < 500 {
                            KIND_OK
                        } else if resp.extensions().get::<crate::shed::Shed>().is_some() {
                            KIND_SHED
                        } else {
                            KIND_5XX
                        };
                        (s, kind)
                    }
                    Err(_) => (0, KIND_SERVICE_ERROR),
                };
                // One poll: the request's duration is that poll's (no second subtraction).
                let dur_ns = if rec.polls == 1 {
                    d
                } else {
                    clock.delta_as_nanos(rec.start, t1)
                };
                rec.finish(dur_ns, status, kind);
            }
            Poll::Pending if rec.polls == 1 => {
                // Lateness is counted from here: the request now waits outside its polls.
                if let Some(p) = &rec.inner.pressure {
                    rec.delayed_at_start = p.delayed_clock_us_now();
                }
            }
            Poll::Pending => {}
        }
        res
    }
}
