//! Graceful shutdown: the lifecycle state exported as `loopwatch.lifecycle.state`, and
//! [`GracefulShutdown`], which turns SIGTERM into drain → stop accepting → wait for in-flight
//! requests (bounded) → return, so that the caller flushes telemetry last.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::flush::FlushTrigger;
#[cfg(feature = "axum")]
use crate::http::RouteMetrics;

impl GracefulShutdownBuilder {
    /// Default wait between "draining" (readiness 503, agent told) and closing the listener: 5 s,
    /// long enough for the endpoints controller and load balancers to stop sending traffic.
    pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);
    /// Default deadline for in-flight requests after the listener closed: 20 s (fits the default
    /// Kubernetes `terminationGracePeriodSeconds` of 30 s together with the drain delay).
    pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(20);
}

/// Value of the `loopwatch.lifecycle.state` gauge. The numbers are a contract with the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LifecycleState {
    /// 0: serving.
    Running = 0,
    /// 1: shutting down; readiness is 503, in-flight requests finish.
    Draining = 1,
    /// 2: stopped; the final export carries this value.
    Stopped = 2,
}

impl LifecycleState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => LifecycleState::Running,
            1 => LifecycleState::Draining,
            _ => LifecycleState::Stopped,
        }
    }
}

#[derive(Debug)]
struct LifecycleInner {
    state: AtomicU8,
    flush: Option<FlushTrigger>,
}

/// Shared lifecycle state of the service (cheap to clone). From a running loopwatch
/// ([`crate::LoopwatchGuard::lifecycle`]) every change forces an export, so the agent hears of
/// it at once; [`crate::LoopwatchGuard::shutdown`] sets [`LifecycleState::Stopped`] before the
/// final export.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    inner: Arc<LifecycleInner>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle::new()
    }
}

impl Lifecycle {
    /// A standalone lifecycle (not exported), starting at [`LifecycleState::Running`].
    pub fn new() -> Self {
        Lifecycle {
            inner: Arc::new(LifecycleInner {
                state: AtomicU8::new(0),
                flush: None,
            }),
        }
    }

    pub(crate) fn with_flush(flush: FlushTrigger) -> Self {
        Lifecycle {
            inner: Arc::new(LifecycleInner {
                state: AtomicU8::new(0),
                flush: Some(flush),
            }),
        }
    }

    /// Current state.
    pub fn state(&self) -> LifecycleState {
        LifecycleState::from_u8(self.inner.state.load(Ordering::Acquire))
    }

    /// Moves forward to `state` (never backwards: a stopped service stays stopped) and forces an
    /// export when it changed.
    pub fn set(&self, state: LifecycleState) {
        let new = state as u8;
        let old = self.inner.state.fetch_max(new, Ordering::AcqRel);
        if old < new
            && let Some(f) = &self.inner.flush
        {
            f.request();
        }
    }

    /// Whether the service is draining or stopped (readiness must be 503).
    pub fn is_shutting_down(&self) -> bool {
        self.state() != LifecycleState::Running
    }

    pub(crate) fn raw(&self) -> u8 {
        self.inner.state.load(Ordering::Acquire)
    }
}

/// How [`GracefulShutdown::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownOutcome {
    /// The server returned by itself before any shutdown signal (e.g. an accept error).
    ServerExited,
    /// Drained: the server finished and no request was active.
    Drained,
    /// The deadline passed with requests still active; they were dropped.
    DeadlineExceeded {
        /// Requests still active at the deadline.
        active: i64,
    },
}

/// Builder of [`GracefulShutdown`].
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct GracefulShutdownBuilder {
    lifecycle: Option<Lifecycle>,
    #[cfg(feature = "axum")]
    routes: Option<RouteMetrics>,
    drain_delay: Option<Duration>,
    deadline: Option<Duration>,
    os_signals: Option<bool>,
}

impl GracefulShutdownBuilder {
    /// Lifecycle to move to draining (use [`crate::LoopwatchGuard::lifecycle`] so the agent
    /// hears of it); default a standalone [`Lifecycle`].
    pub fn lifecycle(mut self, lifecycle: Lifecycle) -> Self {
        self.lifecycle = Some(lifecycle);
        self
    }
    /// Route metrics whose active-request count must reach 0; without them only the server's
    /// own completion is awaited.
    #[cfg(feature = "axum")]
    pub fn routes(mut self, routes: RouteMetrics) -> Self {
        self.routes = Some(routes);
        self
    }
    /// Time between "draining" and closing the listener; default [`GracefulShutdownBuilder::DEFAULT_DRAIN_DELAY`].
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = Some(delay);
        self
    }
    /// Bound on waiting for in-flight requests after the listener closed; default
    /// [`GracefulShutdownBuilder::DEFAULT_DRAIN_DEADLINE`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }
    /// Whether SIGTERM / SIGINT (Ctrl-C) start the shutdown; default true. Without them only
    /// [`GracefulShutdown::trigger`] does.
    pub fn os_signals(mut self, on: bool) -> Self {
        self.os_signals = Some(on);
        self
    }
    /// Builds the helper.
    pub fn build(self) -> GracefulShutdown {
        let (tx, _) = tokio::sync::watch::channel(Phase::Running);
        GracefulShutdown {
            inner: Arc::new(ShutdownInner {
                lifecycle: self.lifecycle.unwrap_or_default(),
                #[cfg(feature = "axum")]
                routes: self.routes,
                drain_delay: self
                    .drain_delay
                    .unwrap_or(GracefulShutdownBuilder::DEFAULT_DRAIN_DELAY),
                deadline: self
                    .deadline
                    .unwrap_or(GracefulShutdownBuilder::DEFAULT_DRAIN_DEADLINE),
                os_signals: self.os_signals.unwrap_or(true),
                phase: tx,
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd)]
enum Phase {
    Running,
    Triggered,
    Closing,
}

#[derive(Debug)]
struct ShutdownInner {
    lifecycle: Lifecycle,
    #[cfg(feature = "axum")]
    routes: Option<RouteMetrics>,
    drain_delay: Duration,
    deadline: Duration,
    os_signals: bool,
    phase: tokio::sync::watch::Sender<Phase>,
}

/// Graceful shutdown helper (cheap to clone).
///
/// On SIGTERM (or SIGINT, or [`GracefulShutdown::trigger`]): the lifecycle goes to
/// [`LifecycleState::Draining`] (local `/readyz` answers 503, `loopwatch.lifecycle.state` = 1
/// is exported at once), then after the drain delay [`GracefulShutdown::signal`] completes, so
/// the server stops accepting; [`GracefulShutdown::run`] then waits for the server and for active
/// requests to reach 0, bounded by the deadline. Finally call
/// [`crate::LoopwatchGuard::shutdown`]: it exports `loopwatch.lifecycle.state` = 2 with the final
/// metrics.
///
/// ```no_run
/// # async fn demo(guard: loopwatch::LoopwatchGuard) -> std::io::Result<()> {
/// use axum::{Router, routing::get};
/// let routes = guard.route_metrics();
/// let shutdown = loopwatch::shutdown::GracefulShutdown::builder()
///     .lifecycle(guard.lifecycle())
///     .routes(routes.clone())
///     .build();
/// let app = Router::new().route("/", get(|| async { "hi" })).layer(routes.layer());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.signal());
/// let outcome = shutdown.run(server).await;
/// println!("{outcome:?}");
/// guard.shutdown(); // final export (lifecycle 2), outside the async context in real code
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct GracefulShutdown {
    inner: Arc<ShutdownInner>,
}

async fn os_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

impl GracefulShutdown {
    /// A builder with the defaults.
    pub fn builder() -> GracefulShutdownBuilder {
        GracefulShutdownBuilder::default()
    }

    /// Starts the shutdown now, as SIGTERM would.
    pub fn trigger(&self) {
        self.inner.phase.send_if_modified(|p| {
            if *p == Phase::Running {
                *p = Phase::Triggered;
                true
            } else {
                false
            }
        });
    }

    /// The lifecycle this helper drives.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.inner.lifecycle
    }

    /// Completes when the server must stop accepting: after SIGTERM/SIGINT/[`trigger`], the
    /// lifecycle is set to draining and the drain delay has passed. Pass it to
    /// `axum::serve(..).with_graceful_shutdown(..)`. Must be called from a tokio runtime.
    ///
    /// [`trigger`]: GracefulShutdown::trigger
    pub fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            let mut rx = inner.phase.subscribe();
            let triggered = async {
                let _ = rx.wait_for(|p| *p >= Phase::Triggered).await;
            };
            if inner.os_signals {
                tokio::select! {
                    () = os_signal() => {},
                    () = triggered => {},
                }
            } else {
                triggered.await;
            }
            inner.phase.send_if_modified(|p| {
                if *p == Phase::Running {
                    *p = Phase::Triggered;
                    true
                } else {
                    false
                }
            });
            inner.lifecycle.set(LifecycleState::Draining);
            tracing::info!(
                drain_delay_ms = inner.drain_delay.as_millis() as u64,
                "loopwatch: shutdown requested; draining (readiness 503) before closing the listener"
            );
            tokio::time::sleep(inner.drain_delay).await;
            tracing::info!("loopwatch: drain delay over; closing the listener");
            inner.phase.send_replace(Phase::Closing);
        }
    }

    /// Runs `server` (e.g. `axum::serve(..).with_graceful_shutdown(shutdown.signal())`) to
    /// completion; once the listener is closing, bounds the remaining wait by the deadline, then
    /// waits (within the same deadline) for active requests to reach 0.
    pub async fn run<F: IntoFuture>(&self, server: F) -> ShutdownOutcome {
        let mut rx = self.inner.phase.subscribe();
        let server = server.into_future();
        tokio::pin!(server);
        let closing = async {
            let _ = rx.wait_for(|p| *p == Phase::Closing).await;
        };
        let closing_first = tokio::select! {
            _ = &mut server => false,
            () = closing => true,
        };
        let deadline_at = if closing_first {
            let at = Instant::now() + self.inner.deadline;
            if tokio::time::timeout_at(at.into(), &mut server)
                .await
                .is_err()
            {
                let active = self.active();
                tracing::warn!(
                    active,
                    "loopwatch: drain deadline passed; dropping the server"
                );
                return ShutdownOutcome::DeadlineExceeded { active };
            }
            at
        } else {
            if *self.inner.phase.borrow() == Phase::Running {
                return ShutdownOutcome::ServerExited;
            }
            Instant::now() + self.inner.deadline
        };
        // The server is done; requests handed to detached tasks may still be running.
        loop {
            let active = self.active();
            if active <= 0 {
                tracing::info!("loopwatch: drained, no active requests");
                return ShutdownOutcome::Drained;
            }
            if Instant::now() >= deadline_at {
                tracing::warn!(
                    active,
                    "loopwatch: drain deadline passed with active requests"
                );
                return ShutdownOutcome::DeadlineExceeded { active };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Requests in flight (0 without route metrics to count them).
    fn active(&self) -> i64 {
        #[cfg(feature = "axum")]
        {
            self.inner
                .routes
                .as_ref()
                .map(RouteMetrics::active_requests)
                .unwrap_or(0)
        }
        #[cfg(not(feature = "axum"))]
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_only_moves_forward() {
        let l = Lifecycle::new();
        assert_eq!(l.state(), LifecycleState::Running);
        l.set(LifecycleState::Draining);
        assert!(l.is_shutting_down());
        l.set(LifecycleState::Stopped);
        l.set(LifecycleState::Draining);
        assert_eq!(l.state(), LifecycleState::Stopped);
        assert_eq!(l.raw(), 2);
    }

    #[tokio::test]
    async fn trigger_drains_then_closes_and_waits_for_the_server() {
        let sd = GracefulShutdown::builder()
            .os_signals(false)
            .drain_delay(Duration::from_millis(100))
            .deadline(Duration::from_secs(30))
            .build();
        let signal = sd.signal();
        let server = async move {
            signal.await;
            // in-flight work after the listener closed
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let sd2 = sd.clone();
        let run = tokio::spawn(async move { sd2.run(server).await });
        tokio::task::yield_now().await;
        assert_eq!(sd.lifecycle().state(), LifecycleState::Running);
        sd.trigger();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(sd.lifecycle().state(), LifecycleState::Draining);
        assert_eq!(run.await.expect("join"), ShutdownOutcome::Drained);
    }

    #[tokio::test]
    async fn deadline_bounds_a_stuck_server() {
        let sd = GracefulShutdown::builder()
            .os_signals(false)
            .drain_delay(Duration::from_millis(10))
            .deadline(Duration::from_millis(100))
            .build();
        sd.trigger();
        let signal = sd.signal();
        let server = async move {
            signal.await;
            std::future::pending::<()>().await;
        };
        assert!(matches!(
            sd.run(server).await,
            ShutdownOutcome::DeadlineExceeded { .. }
        ));
    }
}
