//! # loopwatch-agent
//!
//! The loopwatch sidecar: receives OTLP metrics from a service (any OTel SDK), keeps an
//! event-loop health model per service instance, and serves Kubernetes probes,
//! Prometheus metrics and autoscaling pressure.
//!
//! ## Guide to the modules
//!
//! - [`config`]: configuration keys, defaults, TOML/env/flag loading, duration parsing.
//!   The key table lives there (and in the README, section "Configuration").
//! - [`receiver`]: OTLP receivers, [`receiver::grpc`] (tonic, port 4317) and
//!   [`receiver::http`] (axum, port 4318; protobuf, JSON, gzip, chunked).
//!   Traces and logs are counted and forwarded upstream through [`export`].
//! - `wire`: the borrowing decoder of the common OTLP/protobuf metrics export (the
//!   HTTP receiver's fast path; anything else is decoded with prost).
//! - [`store`]: per-service series (latest value; delta sums/histograms accumulate) with caps.
//! - [`health`]: lag/utilization model across runtimes (tokio, Node.js, Go, plain HTTP),
//!   hysteresis, staleness, pressure, per-route error ratio, heap growth, lifecycle.
//! - [`state`]: the shared state tying store, health and self-telemetry together.
//! - [`admin`]: `/livez`, `/readyz`, `/metrics`, `/v1/status`, `/v1/pressure`, `/`,
//!   `POST /drain` ([`drain`]); the status page assets are in [`status_page`].
//! - [`export`]: upstream OTLP exporter (interval batching, bounded queue, retry).
//! - SIGTERM: [`RunningAgent::wait_for_final_exports`] then [`RunningAgent::shutdown`]
//!   (flushes upstream). Endpoints and JSON shapes: the README, section "The agent".
//! - [`prometheus`]: the text exposition and OTel -> Prometheus naming.
//! - [`deadline`]: header/idle deadlines and body timeouts for the HTTP servers.
//! - [`conn`]: connection caps, accept-error backoff, and the gRPC preface/idle deadlines.
//!
//! ## Embedding (tests do this)
//!
//! ```no_run
//! # async fn run() -> Result<(), loopwatch_agent::StartError> {
//! use std::net::SocketAddr;
//! let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
//! let config = loopwatch_agent::config::Config::builder()
//!     .grpc_listen(any)
//!     .http_listen(any)
//!     .admin_listen(any)
//!     .build()
//!     .expect("valid config");
//! let agent = loopwatch_agent::start(config).await?;
//! println!("{}", agent.listening_line());
//! agent.shutdown().await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod admin;
mod cadence;
pub mod config;
mod conn;
mod deadline;
mod derived;
mod drain;
mod entry;
mod evidence;
mod export;
mod health;
mod history;
mod history_api;
mod prometheus;
mod receiver;
mod routes;
mod self_telemetry;
mod stalls;
mod state;
mod status_page;
mod store;
mod wire;

/// What the agent's own tests reach beyond the public API (not a stable interface).
#[doc(hidden)]
pub mod testing {
    pub use crate::drain::authorize;
    pub use crate::export::ExportDrop;
    pub use crate::health::HealthState;
    /// Seconds one instance's history keeps.
    pub const HISTORY_SECONDS: usize = crate::history::History::SECONDS;
    /// The most heap one instance's history holds.
    pub const HISTORY_MAX_BYTES: usize = crate::history::History::MAX_BYTES;
    pub use crate::prometheus::render as render_metrics;
    pub use crate::receiver::budget::BYTES_PER_NODE;
    pub use crate::receiver::http::router as http_router;
    pub use crate::state::{AgentState, EVICT_AFTER_STALE};
}

use config::Config;
use state::AgentState;

/// Failure to start the agent.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot bind {what} listener on {addr}: {source}")]
    Bind {
        /// Which listener (`grpc`, `http`, `admin`).
        what: &'static str,
        /// The configured address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A running agent: bound addresses and a handle to stop it.
#[derive(Debug)]
pub struct RunningAgent {
    /// Bound OTLP/gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound OTLP/HTTP address.
    pub http_addr: SocketAddr,
    /// Bound admin address.
    pub admin_addr: SocketAddr,
    state: Arc<AgentState>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    export_stop: watch::Sender<Option<Instant>>,
    export_task: Option<JoinHandle<()>>,
}

/// How long [`RunningAgent::shutdown`] waits for the servers to finish in-flight requests,
/// and then for the upstream flush. Not `shutdown.grace` (default 10 s): that is the wait for
/// the services' final exports, which comes before ([`RunningAgent::wait_for_final_exports`]).
pub const STOP_GRACE: Duration = Duration::from_secs(5);

impl RunningAgent {
    /// The startup line printed by the binary:
    /// `loopwatch-agent listening grpc=ADDR http=ADDR admin=ADDR`.
    pub fn listening_line(&self) -> String {
        format!(
            "loopwatch-agent listening grpc={} http={} admin={}",
            self.grpc_addr, self.http_addr, self.admin_addr
        )
    }

    /// The shared state (store, health, telemetry).
    pub fn state(&self) -> &Arc<AgentState> {
        &self.state
    }

    /// Whether every tracked service is done: reported lifecycle `stopped`
    /// (`loopwatch.lifecycle.state` = 2) or went stale. True with no services.
    pub fn services_done(&self) -> bool {
        self.state.evaluate(Instant::now()).iter().all(|v| {
            v.state == health::HealthState::Stale || v.lifecycle == Some(health::Lifecycle::Stopped)
        })
    }

    /// The SIGTERM wait: keeps receiving until [`RunningAgent::services_done`] or `grace`
    /// passes. Returns whether every service finished in time.
    pub async fn wait_for_final_exports(&self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        loop {
            let changed = self.state.changed();
            if self.services_done() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep((deadline - now).min(Duration::from_millis(100))) => {}
            }
        }
    }

    /// Stops all servers gracefully (bounded by [`STOP_GRACE`]), then flushes the
    /// upstream exporter: the last metrics batch is queued and the queue is sent for up to
    /// [`STOP_GRACE`] (the rest is dropped and counted as `shutdown`).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(STOP_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
        if let Some(task) = self.export_task {
            let views = self.state.evaluate(Instant::now());
            self.state.export.flush_interval(&self.state, &views);
            let _ = self.export_stop.send(Some(Instant::now() + STOP_GRACE));
            let abort = task.abort_handle();
            if tokio::time::timeout(STOP_GRACE + Duration::from_secs(1), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Health timer period while a service is unhealthy: a quarter of the shortest timing
/// setting, within 50 ms..1 s.
fn tick(config: &Config) -> Duration {
    (config.health.hold.min(config.health.stale_after) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Binds all listeners (port 0 picks free ports), spawns the servers and the health timer
/// on the current tokio runtime, and returns once everything is listening.
pub async fn start(config: Config) -> Result<RunningAgent, StartError> {
    let grpc = bind("grpc", config.receiver.grpc_listen).await?;
    let http = bind("http", config.receiver.http_listen).await?;
    let admin = bind("admin", config.admin.listen).await?;
    let local = |l: &TcpListener, what, addr| {
        l.local_addr()
            .map_err(|source| StartError::Bind { what, addr, source })
    };
    let grpc_addr = local(&grpc, "grpc", config.receiver.grpc_listen)?;
    let http_addr = local(&http, "http", config.receiver.http_listen)?;
    let admin_addr = local(&admin, "admin", config.admin.listen)?;

    let period = tick(&config);
    let state = Arc::new(AgentState::new(config));
    let (stop, rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let r = &state.config().receiver;
    let receiver_timeouts = (r.handshake_timeout, r.idle_timeout);
    let conns = state.telemetry.connections.clone();
    let gate = |l, max| conn::Gate::new(l, max, conns.clone());
    let timed_out = state.telemetry.connections_timed_out.clone();
    let incoming = conn::GrpcIncoming::spawn(
        grpc,
        gate(conn::Listener::Grpc, r.max_connections),
        receiver_timeouts,
        timed_out.clone(),
    );
    let grpc_state = state.clone();
    let grpc_stop = stopped(rx.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = receiver::grpc::serve(grpc_state, incoming, grpc_stop).await {
            tracing::error!(error = %e, "gRPC receiver failed");
        }
    }));

    let http_router = receiver::http::router(state.clone());
    let http = deadline::DeadlineListener::new(
        http,
        gate(conn::Listener::Http, r.max_connections),
        receiver_timeouts,
        timed_out.clone(),
    );
    let http_stop = stopped(rx.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(http, http_router)
            .with_graceful_shutdown(http_stop)
            .await
        {
            tracing::error!(error = %e, "HTTP receiver failed");
        }
    }));

    let admin_router = admin::router(state.clone()).layer(axum::extract::DefaultBodyLimit::max(
        deadline::ADMIN_MAX_BODY_BYTES,
    ));
    let admin = deadline::DeadlineListener::new(
        admin,
        gate(conn::Listener::Admin, state.config().admin.max_connections),
        (deadline::HEAD_TIMEOUT, deadline::IDLE_TIMEOUT),
        timed_out,
    );
    let admin_stop = stopped(rx.clone());
    tasks.push(tokio::spawn(async move {
        let service = admin_router.into_make_service_with_connect_info::<drain::Peer>();
        if let Err(e) = axum::serve(admin, service)
            .with_graceful_shutdown(admin_stop)
            .await
        {
            tracing::error!(error = %e, "admin server failed");
        }
    }));

    let (export_stop, export_rx) = watch::channel(None);
    let export_task = if state.export.enabled() {
        let worker_state = state.clone();
        let worker = tokio::spawn(async move { worker_state.export.run(export_rx).await });
        let tick_state = state.clone();
        let every = state.config().exporter.interval;
        let mut tick_rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => {
                        let views = tick_state.evaluate(Instant::now());
                        tick_state.export.flush_interval(&tick_state, &views);
                    }
                    _ = tick_rx.wait_for(|s| *s) => break,
                }
            }
        }));
        Some(worker)
    } else {
        None
    };

    // The health timer wakes only when a re-evaluation can change something (see
    // `AgentState::reevaluate`): every `period` while a service is unhealthy, otherwise at
    // the next staleness deadline. A steady set of healthy services costs a wake-up every
    // few seconds instead of several a second.
    let timer_state = state.clone();
    let mut timer_rx = rx;
    tasks.push(tokio::spawn(async move {
        let mut due = tokio::time::Instant::now() + period;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {
                    let now = Instant::now();
                    let next = timer_state.reevaluate(now, period);
                    // At least 1 ms ahead: a deadline that passed while evaluating is
                    // caught by the next tick, never by a busy loop.
                    let wait = next.saturating_duration_since(now).max(Duration::from_millis(1));
                    due = tokio::time::Instant::now() + wait;
                }
                _ = timer_state.turned_unhealthy() => {
                    due = due.min(tokio::time::Instant::now() + period);
                }
                _ = timer_rx.wait_for(|s| *s) => break,
            }
        }
    }));

    tracing::info!(%grpc_addr, %http_addr, %admin_addr, "loopwatch-agent started");
    Ok(RunningAgent {
        grpc_addr,
        http_addr,
        admin_addr,
        state,
        stop,
        tasks,
        export_stop,
        export_task,
    })
}
