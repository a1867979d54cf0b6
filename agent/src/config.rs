//! Agent configuration: embedded defaults, an optional TOML file, `LOOPWATCH_*` environment
//! variables and command-line flags.
//!
//! Precedence is flag > environment > file > default. Every key is addressed as
//! `section.key` (e.g. `health.lag_enter`); the environment variable for a key is
//! `LOOPWATCH_<SECTION>_<KEY>` in upper case (e.g. `LOOPWATCH_HEALTH_LAG_ENTER`).
//! Unknown file keys and invalid values are errors that name the key.
//!
//! | key | env | default | meaning |
//! |---|---|---|---|
//! | `receiver.grpc_listen` | `LOOPWATCH_RECEIVER_GRPC_LISTEN` | `127.0.0.1:4317` | OTLP/gRPC listen address |
//! | `receiver.http_listen` | `LOOPWATCH_RECEIVER_HTTP_LISTEN` | `127.0.0.1:4318` | OTLP/HTTP listen address |
//! | `receiver.max_body_bytes` | `LOOPWATCH_RECEIVER_MAX_BODY_BYTES` | `8388608` (8 MiB) | cap on a request body, applied after decompression (bytes) |
//! | `receiver.max_services` | `LOOPWATCH_RECEIVER_MAX_SERVICES` | `1000` | max tracked service instances; new ones beyond are refused (429) |
//! | `receiver.max_series_per_service` | `LOOPWATCH_RECEIVER_MAX_SERIES_PER_SERVICE` | `10000` | max series per service instance; new ones beyond are refused (429) |
//! | `receiver.max_connections` | `LOOPWATCH_RECEIVER_MAX_CONNECTIONS` | `512` | open connections per OTLP listener (gRPC, HTTP); new ones beyond are closed at accept and counted |
//! | `receiver.handshake_timeout` | `LOOPWATCH_RECEIVER_HANDSHAKE_TIMEOUT` | `10s` | a new connection must send its HTTP/2 preface (gRPC) or first request head (HTTP) within this long |
//! | `receiver.idle_timeout` | `LOOPWATCH_RECEIVER_IDLE_TIMEOUT` | `5m` | a receiver connection with no request in flight for this long is closed |
//! | `admin.listen` | `LOOPWATCH_ADMIN_LISTEN` | `0.0.0.0:9464` | admin HTTP listen address (`/livez`, `/readyz`, `/metrics`, `/v1/status`, `/v1/pressure`) |
//! | `admin.max_connections` | `LOOPWATCH_ADMIN_MAX_CONNECTIONS` | `128` | open connections on the admin listener; new ones beyond are closed at accept and counted |
//! | `health.lag_enter` | `LOOPWATCH_HEALTH_LAG_ENTER` | `250ms` | lag at or above which a service becomes unhealthy |
//! | `health.lag_leave` | `LOOPWATCH_HEALTH_LAG_LEAVE` | `100ms` | lag below which an unhealthy service may recover |
//! | `health.hold` | `LOOPWATCH_HEALTH_HOLD` | `3s` | lag must stay below `lag_leave` this long before recovery |
//! | `health.stale_after` | `LOOPWATCH_HEALTH_STALE_AFTER` | `5s` | no data for this long marks a service stale; after 60 times this it is forgotten |
//! | `health.target_lag` | `LOOPWATCH_HEALTH_TARGET_LAG` | `100ms` | lag at which pressure is 1.0 |
//! | `health.target_utilization` | `LOOPWATCH_HEALTH_TARGET_UTILIZATION` | `0.8` | utilization (0..1) at which pressure is 1.0 |
//! | `health.error_ratio_enter` | `LOOPWATCH_HEALTH_ERROR_RATIO_ENTER` | `0.1` | per-route error ratio (0..1) at or above which a service becomes unhealthy |
//! | `health.error_ratio_leave` | `LOOPWATCH_HEALTH_ERROR_RATIO_LEAVE` | `0.05` | error ratio below which it may recover |
//! | `health.error_window` | `LOOPWATCH_HEALTH_ERROR_WINDOW` | `30s` | sliding window of the error ratio |
//! | `health.error_min_requests` | `LOOPWATCH_HEALTH_ERROR_MIN_REQUESTS` | `10` | requests a route needs in the window before its ratio counts |
//! | `health.error_hold` | `LOOPWATCH_HEALTH_ERROR_HOLD` | `10s` | error ratio must stay below the leave level this long |
//! | `health.heap_growth_enter` | `LOOPWATCH_HEALTH_HEAP_GROWTH_ENTER` | `10485760` | heap growth (By/s) at or above which a service becomes unhealthy |
//! | `health.heap_growth_leave` | `LOOPWATCH_HEALTH_HEAP_GROWTH_LEAVE` | `1048576` | heap growth (By/s) below which it may recover |
//! | `health.heap_hold` | `LOOPWATCH_HEALTH_HEAP_HOLD` | `30s` | heap growth must stay below the leave level this long |
//! | `health.stuck_enter` | `LOOPWATCH_HEALTH_STUCK_ENTER` | `1s` | a worker stuck this long (`tokio.worker.stuck.duration`) is a reason and lowers capacity in pressure |
//! | `health.stuck_workers` | `LOOPWATCH_HEALTH_STUCK_WORKERS` | `report` | `report`: stuck workers are reasons and pressure only; `unready`: they also make the service unhealthy |
//! | `health.liveness_stall` | `LOOPWATCH_HEALTH_LIVENESS_STALL` | `off` | `/livez?service=NAME` answers 503 while that service's stall in progress (or overdue export) lasts longer; `off` disables |
//! | `drain.timeout` | `LOOPWATCH_DRAIN_TIMEOUT` | `20s` | default wait of `POST /drain` |
//! | `drain.max_timeout` | `LOOPWATCH_DRAIN_MAX_TIMEOUT` | `120s` | cap on `POST /drain?timeout=` |
//! | `drain.token` | `LOOPWATCH_DRAIN_TOKEN` | empty | bearer token accepted from non-loopback peers (empty: loopback only) |
//! | `shutdown.grace` | `LOOPWATCH_SHUTDOWN_GRACE` | `10s` | after SIGTERM, max wait for the services' final exports |
//! | `exporter.endpoint` | `LOOPWATCH_EXPORTER_ENDPOINT` | empty | upstream OTLP endpoint (empty: export disabled) |
//! | `exporter.protocol` | `LOOPWATCH_EXPORTER_PROTOCOL` | `grpc` | `grpc` or `http/protobuf` |
//! | `exporter.interval` | `LOOPWATCH_EXPORTER_INTERVAL` | `10s` | metrics batching interval |
//! | `exporter.timeout` | `LOOPWATCH_EXPORTER_TIMEOUT` | `10s` | timeout of one upstream request |
//! | `exporter.queue_size` | `LOOPWATCH_EXPORTER_QUEUE_SIZE` | `256` | max queued export requests; beyond: dropped and counted |
//! | `exporter.max_retry_time` | `LOOPWATCH_EXPORTER_MAX_RETRY_TIME` | `60s` | give up retrying one request after this long |
//! | `exporter.headers` | `LOOPWATCH_EXPORTER_HEADERS` | empty | request headers `k=v,k2=v2` (the `OTEL_EXPORTER_OTLP_HEADERS` format) on every upstream request; printed `<redacted>` |
//! | `exporter.compression` | `LOOPWATCH_EXPORTER_COMPRESSION` | `none` | `gzip` or `none` |
//!
//! Durations are strings with a unit: `ns`, `us`, `ms`, `s`, `m`, `h`, e.g. `"250ms"`,
//! `"1.5s"`, `"2m"`. Flags: `--grpc-listen`, `--http-listen`, `--admin-listen`, and
//! `--set section.key=value` for any key.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default OTLP/gRPC listen address.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:4317";
/// Default OTLP/HTTP listen address.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:4318";
/// Default admin HTTP listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9464";
/// Default cap on a (decompressed) request body, in bytes (8 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Default cap on tracked service instances.
pub const DEFAULT_MAX_SERVICES: usize = 1000;
/// Default cap on series per service instance.
pub const DEFAULT_MAX_SERIES_PER_SERVICE: usize = 10_000;
/// Default cap on open connections per OTLP listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Default time a new receiver connection has for its HTTP/2 preface or first request head.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a receiver connection may stay without a request in flight (5 minutes).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default cap on open connections on the admin listener.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 128;
/// Default lag at or above which a service enters the unhealthy state (250 ms).
pub const DEFAULT_LAG_ENTER: Duration = Duration::from_millis(250);
/// Default lag below which an unhealthy service may leave the unhealthy state (100 ms).
pub const DEFAULT_LAG_LEAVE: Duration = Duration::from_millis(100);
/// Default minimum time lag must stay below `lag_leave` before recovery (3 s).
pub const DEFAULT_HOLD: Duration = Duration::from_secs(3);
/// Default time without data after which a service is stale (5 s).
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(5);
/// Default lag at which pressure is 1.0 (100 ms).
pub const DEFAULT_TARGET_LAG: Duration = Duration::from_millis(100);
/// Default utilization at which pressure is 1.0.
pub const DEFAULT_TARGET_UTILIZATION: f64 = 0.8;

/// Default per-route error ratio at or above which a service becomes unhealthy.
pub const DEFAULT_ERROR_RATIO_ENTER: f64 = 0.1;
/// Default per-route error ratio below which an unhealthy service may recover.
pub const DEFAULT_ERROR_RATIO_LEAVE: f64 = 0.05;
/// Default sliding window of the per-route error ratio (30 s).
pub const DEFAULT_ERROR_WINDOW: Duration = Duration::from_secs(30);
/// Default minimum requests of a route in the window before its error ratio counts.
pub const DEFAULT_ERROR_MIN_REQUESTS: usize = 10;
/// Default time the error ratio must stay below the leave level before recovery (10 s).
pub const DEFAULT_ERROR_HOLD: Duration = Duration::from_secs(10);
/// Default heap growth (bytes per second) at or above which a service becomes unhealthy (10 MiB/s).
pub const DEFAULT_HEAP_GROWTH_ENTER: f64 = 10.0 * 1024.0 * 1024.0;
/// Default heap growth (bytes per second) below which an unhealthy service may recover (1 MiB/s).
pub const DEFAULT_HEAP_GROWTH_LEAVE: f64 = 1024.0 * 1024.0;
/// Default time heap growth must stay below the leave level before recovery (30 s).
pub const DEFAULT_HEAP_HOLD: Duration = Duration::from_secs(30);
/// Default time a worker must be stuck before it is a reason (1 s).
pub const DEFAULT_STUCK_ENTER: Duration = Duration::from_secs(1);
/// Default wait of `POST /drain` without `?timeout=` (20 s).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Default cap on `POST /drain?timeout=` (120 s).
pub const DEFAULT_DRAIN_MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// Default grace after SIGTERM for the services' final exports (10 s).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default upstream protocol.
pub const DEFAULT_EXPORTER_PROTOCOL: ExportProtocol = ExportProtocol::Grpc;
/// Default metrics batching interval upstream (10 s).
pub const DEFAULT_EXPORTER_INTERVAL: Duration = Duration::from_secs(10);
/// Default timeout of one upstream request (10 s).
pub const DEFAULT_EXPORTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default max queued upstream requests.
pub const DEFAULT_EXPORTER_QUEUE_SIZE: usize = 256;
/// Default time after which retrying one upstream request stops (60 s).
pub const DEFAULT_EXPORTER_MAX_RETRY_TIME: Duration = Duration::from_secs(60);

/// Upstream OTLP protocol (`exporter.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportProtocol {
    /// OTLP/gRPC (`grpc`); the endpoint is e.g. `http://collector:4317`.
    Grpc,
    /// OTLP/HTTP protobuf (`http/protobuf`); the endpoint is a base URL, e.g.
    /// `http://collector:4318`, to which `/v1/metrics`, `/v1/traces`, `/v1/logs` are appended.
    HttpProtobuf,
}

impl ExportProtocol {
    /// Config string (`grpc`, `http/protobuf`).
    pub fn as_str(self) -> &'static str {
        match self {
            ExportProtocol::Grpc => "grpc",
            ExportProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Every configuration key, as `section.key`.
pub const KEYS: &[&str] = &[
    "receiver.grpc_listen",
    "receiver.http_listen",
    "receiver.max_body_bytes",
    "receiver.max_services",
    "receiver.max_series_per_service",
    "receiver.max_connections",
    "receiver.handshake_timeout",
    "receiver.idle_timeout",
    "admin.listen",
    "admin.max_connections",
    "health.lag_enter",
    "health.lag_leave",
    "health.hold",
    "health.stale_after",
    "health.target_lag",
    "health.target_utilization",
    "health.error_ratio_enter",
    "health.error_ratio_leave",
    "health.error_window",
    "health.error_min_requests",
    "health.error_hold",
    "health.heap_growth_enter",
    "health.heap_growth_leave",
    "health.heap_hold",
    "health.stuck_enter",
    "health.stuck_workers",
    "health.liveness_stall",
    "drain.timeout",
    "drain.max_timeout",
    "drain.token",
    "shutdown.grace",
    "exporter.endpoint",
    "exporter.protocol",
    "exporter.interval",
    "exporter.timeout",
    "exporter.queue_size",
    "exporter.max_retry_time",
    "exporter.headers",
    "exporter.compression",
];

/// A configuration error. Every variant names the offending key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{path}: cannot read config file: {source}")]
    Read {
        /// The file path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("{path}: invalid TOML: {message}")]
    Toml {
        /// The file path.
        path: PathBuf,
        /// The parser message.
        message: String,
    },
    /// A key that the agent does not know.
    #[error("{key}: unknown configuration key (from {origin})")]
    UnknownKey {
        /// The key as written.
        key: String,
        /// Where it came from (file path, flag).
        origin: String,
    },
    /// A value that could not be parsed or is out of range.
    #[error("{key}: {message}")]
    InvalidValue {
        /// The key (`section.key`, plus the env var or flag when it came from one).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// OTLP receiver settings (`[receiver]`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReceiverConfig {
    /// OTLP/gRPC listen address.
    pub grpc_listen: SocketAddr,
    /// OTLP/HTTP listen address.
    pub http_listen: SocketAddr,
    /// Cap on a request body after decompression, in bytes.
    pub max_body_bytes: usize,
    /// Cap on tracked service instances.
    pub max_services: usize,
    /// Cap on series per service instance.
    pub max_series_per_service: usize,
    /// Cap on open connections per OTLP listener.
    pub max_connections: usize,
    /// A new connection's HTTP/2 preface or first request head must arrive within this long.
    pub handshake_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
}

/// Admin HTTP settings (`[admin]`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AdminConfig {
    /// Admin HTTP listen address.
    pub listen: SocketAddr,
    /// Cap on open connections on the admin listener.
    pub max_connections: usize,
}

/// Health engine settings (`[health]`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HealthConfig {
    /// Lag at or above which a service becomes unhealthy.
    pub lag_enter: Duration,
    /// Lag below which an unhealthy service may recover.
    pub lag_leave: Duration,
    /// Lag must stay below `lag_leave` for this long before recovery.
    pub hold: Duration,
    /// No data for this long marks a service stale.
    pub stale_after: Duration,
    /// Lag at which pressure is 1.0.
    pub target_lag: Duration,
    /// Utilization (0..1) at which pressure is 1.0.
    pub target_utilization: f64,
    /// Per-route error ratio (0..1) at or above which a service becomes unhealthy.
    pub error_ratio_enter: f64,
    /// Per-route error ratio below which an unhealthy service may recover.
    pub error_ratio_leave: f64,
    /// Sliding window of the per-route error ratio.
    pub error_window: Duration,
    /// Requests a route needs in the window before its error ratio counts.
    pub error_min_requests: usize,
    /// The error ratio must stay below `error_ratio_leave` this long before recovery.
    pub error_hold: Duration,
    /// Heap growth (bytes per second) at or above which a service becomes unhealthy.
    pub heap_growth_enter: f64,
    /// Heap growth (bytes per second) below which an unhealthy service may recover.
    pub heap_growth_leave: f64,
    /// Heap growth must stay below `heap_growth_leave` this long before recovery.
    pub heap_hold: Duration,
    /// A worker stuck this long is a reason (and lost capacity in pressure).
    pub stuck_enter: Duration,
    /// Whether stuck workers make a service unhealthy.
    pub stuck_workers: StuckPolicy,
    /// `/livez?service=` answers 503 while a stall in progress lasts longer; `None`: off.
    pub liveness_stall: Option<Duration>,
}

/// What stuck workers do to readiness (`health.stuck_workers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StuckPolicy {
    /// `report`: a reason and pressure; one stuck worker of N still serves.
    Report,
    /// `unready`: also unhealthy while a worker is stuck.
    Unready,
}

impl StuckPolicy {
    /// Config string.
    pub fn as_str(self) -> &'static str {
        match self {
            StuckPolicy::Report => "report",
            StuckPolicy::Unready => "unready",
        }
    }
}

/// `POST /drain` settings (`[drain]`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DrainConfig {
    /// Default wait when the request has no `?timeout=`.
    pub timeout: Duration,
    /// Cap on `?timeout=`.
    pub max_timeout: Duration,
    /// Bearer token accepted from non-loopback peers; empty = loopback only.
    pub token: String,
}

/// Sidecar shutdown settings (`[shutdown]`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ShutdownConfig {
    /// After SIGTERM, max wait for every service's final export before flushing and exiting.
    pub grace: Duration,
}

/// Upstream OTLP exporter settings (`[exporter]`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ExporterConfig {
    /// Upstream endpoint; empty disables the exporter.
    pub endpoint: String,
    /// Wire protocol.
    pub protocol: ExportProtocol,
    /// Metrics batching interval.
    pub interval: Duration,
    /// Timeout of one upstream request.
    pub timeout: Duration,
    /// Max queued requests (metrics batches, trace and log exports).
    pub queue_size: usize,
    /// Retrying one request stops after this long (the request is dropped and counted).
    pub max_retry_time: Duration,
    /// Headers sent on every upstream request (names lower-case); secrets, never printed.
    pub headers: Vec<(String, String)>,
    /// Whether upstream requests are gzip-compressed.
    pub gzip: bool,
}

/// The full agent configuration.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// `[receiver]` section.
    pub receiver: ReceiverConfig,
    /// `[admin]` section.
    pub admin: AdminConfig,
    /// `[health]` section.
    pub health: HealthConfig,
    /// `[drain]` section.
    pub drain: DrainConfig,
    /// `[shutdown]` section.
    pub shutdown: ShutdownConfig,
    /// `[exporter]` section.
    pub exporter: ExporterConfig,
}

fn addr(s: &str) -> SocketAddr {
    // Only used for the compile-time constant defaults above, which are valid.
    s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            receiver: ReceiverConfig {
                grpc_listen: addr(DEFAULT_GRPC_LISTEN),
                http_listen: addr(DEFAULT_HTTP_LISTEN),
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                max_services: DEFAULT_MAX_SERVICES,
                max_series_per_service: DEFAULT_MAX_SERIES_PER_SERVICE,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
            },
            admin: AdminConfig {
                listen: addr(DEFAULT_ADMIN_LISTEN),
                max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            },
            health: HealthConfig {
                lag_enter: DEFAULT_LAG_ENTER,
                lag_leave: DEFAULT_LAG_LEAVE,
                hold: DEFAULT_HOLD,
                stale_after: DEFAULT_STALE_AFTER,
                target_lag: DEFAULT_TARGET_LAG,
                target_utilization: DEFAULT_TARGET_UTILIZATION,
                error_ratio_enter: DEFAULT_ERROR_RATIO_ENTER,
                error_ratio_leave: DEFAULT_ERROR_RATIO_LEAVE,
                error_window: DEFAULT_ERROR_WINDOW,
                error_min_requests: DEFAULT_ERROR_MIN_REQUESTS,
                error_hold: DEFAULT_ERROR_HOLD,
                heap_growth_enter: DEFAULT_HEAP_GROWTH_ENTER,
                heap_growth_leave: DEFAULT_HEAP_GROWTH_LEAVE,
                heap_hold: DEFAULT_HEAP_HOLD,
                stuck_enter: DEFAULT_STUCK_ENTER,
                stuck_workers: StuckPolicy::Report,
                liveness_stall: None,
            },
            drain: DrainConfig {
                timeout: DEFAULT_DRAIN_TIMEOUT,
                max_timeout: DEFAULT_DRAIN_MAX_TIMEOUT,
                token: String::new(),
            },
            shutdown: ShutdownConfig {
                grace: DEFAULT_SHUTDOWN_GRACE,
            },
            exporter: ExporterConfig {
                endpoint: String::new(),
                protocol: DEFAULT_EXPORTER_PROTOCOL,
                interval: DEFAULT_EXPORTER_INTERVAL,
                timeout: DEFAULT_EXPORTER_TIMEOUT,
                queue_size: DEFAULT_EXPORTER_QUEUE_SIZE,
                max_retry_time: DEFAULT_EXPORTER_MAX_RETRY_TIME,
                headers: Vec::new(),
                gzip: false,
            },
        }
    }
}

impl Config {
    /// Starts a builder from the embedded defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::default(),
        }
    }

    /// Sets one key (`section.key`) from its string form, as a file, env var or flag would.
    /// `origin` only decorates error messages (e.g. `"LOOPWATCH_HEALTH_HOLD"`).
    pub fn set(&mut self, key: &str, value: &str, origin: Option<&str>) -> Result<(), ConfigError> {
        let named = || match origin {
            Some(o) => format!("{key} ({o})"),
            None => key.to_string(),
        };
        let invalid = |message: String| ConfigError::InvalidValue {
            key: named(),
            message,
        };
        let sock = |v: &str| {
            v.trim().parse::<SocketAddr>().map_err(|_| {
                invalid(format!(
                    "invalid socket address {v:?} (expected e.g. \"127.0.0.1:4317\")"
                ))
            })
        };
        let count = |v: &str| {
            v.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    invalid(format!("invalid count {v:?} (expected a positive integer)"))
                })
        };
        let dur = |v: &str| parse_duration(v).map_err(|e| invalid(e.to_string()));
        let positive = |v: &str| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| invalid(format!("invalid number {v:?} (expected a number > 0)")))
        };
        let ratio = |v: &str| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| *f > 0.0 && *f <= 1.0)
                .ok_or_else(|| {
                    invalid(format!(
                        "invalid ratio {v:?} (expected a number in (0, 1], e.g. 0.1)"
                    ))
                })
        };
        let r = &mut self.receiver;
        let h = &mut self.health;
        match key {
            "receiver.grpc_listen" => r.grpc_listen = sock(value)?,
            "receiver.http_listen" => r.http_listen = sock(value)?,
            "receiver.max_body_bytes" => r.max_body_bytes = count(value)?,
            "receiver.max_services" => r.max_services = count(value)?,
            "receiver.max_series_per_service" => r.max_series_per_service = count(value)?,
            "receiver.max_connections" => r.max_connections = count(value)?,
            "receiver.handshake_timeout" => r.handshake_timeout = dur(value)?,
            "receiver.idle_timeout" => r.idle_timeout = dur(value)?,
            "admin.listen" => self.admin.listen = sock(value)?,
            "admin.max_connections" => self.admin.max_connections = count(value)?,
            "health.lag_enter" => h.lag_enter = dur(value)?,
            "health.lag_leave" => h.lag_leave = dur(value)?,
            "health.hold" => h.hold = dur(value)?,
            "health.stale_after" => h.stale_after = dur(value)?,
            "health.target_lag" => h.target_lag = dur(value)?,
            "health.target_utilization" => h.target_utilization = positive(value)?,
            "health.error_ratio_enter" => h.error_ratio_enter = ratio(value)?,
            "health.error_ratio_leave" => h.error_ratio_leave = ratio(value)?,
            "health.error_window" => h.error_window = dur(value)?,
            "health.error_min_requests" => h.error_min_requests = count(value)?,
            "health.error_hold" => h.error_hold = dur(value)?,
            "health.heap_growth_enter" => h.heap_growth_enter = positive(value)?,
            "health.heap_growth_leave" => h.heap_growth_leave = positive(value)?,
            "health.heap_hold" => h.heap_hold = dur(value)?,
            "health.stuck_enter" => h.stuck_enter = dur(value)?,
            "health.stuck_workers" => {
                h.stuck_workers = match value.trim() {
                    "report" => StuckPolicy::Report,
                    "unready" => StuckPolicy::Unready,
                    other => {
                        return Err(invalid(format!(
                            "invalid policy {other:?} (expected \"report\" or \"unready\")"
                        )));
                    }
                }
            }
            "health.liveness_stall" => {
                h.liveness_stall = match value.trim() {
                    "" | "off" => None,
                    v => Some(dur(v)?).filter(|d| !d.is_zero()),
                }
            }
            "drain.timeout" => self.drain.timeout = dur(value)?,
            "drain.max_timeout" => self.drain.max_timeout = dur(value)?,
            "drain.token" => self.drain.token = value.trim().to_string(),
            "shutdown.grace" => self.shutdown.grace = dur(value)?,
            "exporter.endpoint" => {
                let v = value.trim();
                if !(v.is_empty() || v.starts_with("http://") || v.starts_with("https://")) {
                    return Err(invalid(format!(
                        "invalid endpoint {v:?} (expected empty or a URL like \"http://collector:4317\")"
                    )));
                }
                self.exporter.endpoint = v.trim_end_matches('/').to_string();
            }
            "exporter.protocol" => {
                self.exporter.protocol = match value.trim() {
                    "grpc" => ExportProtocol::Grpc,
                    "http/protobuf" => ExportProtocol::HttpProtobuf,
                    other => {
                        return Err(invalid(format!(
                            "invalid protocol {other:?} (expected \"grpc\" or \"http/protobuf\")"
                        )));
                    }
                }
            }
            "exporter.interval" => self.exporter.interval = dur(value)?,
            "exporter.timeout" => self.exporter.timeout = dur(value)?,
            "exporter.queue_size" => self.exporter.queue_size = count(value)?,
            "exporter.max_retry_time" => self.exporter.max_retry_time = dur(value)?,
            "exporter.headers" => self.exporter.headers = parse_headers(value).map_err(invalid)?,
            "exporter.compression" => {
                self.exporter.gzip = match value.trim() {
                    "gzip" => true,
                    "none" | "" => false,
                    other => {
                        return Err(invalid(format!(
                            "invalid compression {other:?} (expected \"gzip\" or \"none\")"
                        )));
                    }
                }
            }
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: key.to_string(),
                    origin: origin.unwrap_or("code").to_string(),
                });
            }
        }
        Ok(())
    }

    /// Checks cross-key constraints (e.g. `lag_leave <= lag_enter`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let h = &self.health;
        if h.lag_leave > h.lag_enter {
            return Err(ConfigError::InvalidValue {
                key: "health.lag_leave".into(),
                message: format!(
                    "{} must not exceed health.lag_enter ({})",
                    format_duration(h.lag_leave),
                    format_duration(h.lag_enter)
                ),
            });
        }
        let order = [
            (
                "health.error_ratio_leave",
                h.error_ratio_leave > h.error_ratio_enter,
                "health.error_ratio_enter",
            ),
            (
                "health.heap_growth_leave",
                h.heap_growth_leave > h.heap_growth_enter,
                "health.heap_growth_enter",
            ),
            (
                "drain.timeout",
                self.drain.timeout > self.drain.max_timeout,
                "drain.max_timeout",
            ),
        ];
        for (key, bad, other) in order {
            if bad {
                return Err(ConfigError::InvalidValue {
                    key: key.into(),
                    message: format!("must not exceed {other}"),
                });
            }
        }
        for (key, d) in [
            ("health.target_lag", h.target_lag),
            ("health.stale_after", h.stale_after),
            ("health.error_window", h.error_window),
            ("exporter.interval", self.exporter.interval),
            ("exporter.timeout", self.exporter.timeout),
            (
                "receiver.handshake_timeout",
                self.receiver.handshake_timeout,
            ),
            ("receiver.idle_timeout", self.receiver.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::InvalidValue {
                    key: key.into(),
                    message: "must be greater than 0".into(),
                });
            }
        }
        Ok(())
    }

    /// Applies a TOML document. Unknown sections/keys and bad values are errors naming the key.
    pub fn apply_toml(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Toml {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let origin = path.display().to_string();
        for (section, body) in &table {
            let Some(body) = body.as_table() else {
                return Err(ConfigError::UnknownKey {
                    key: section.clone(),
                    origin,
                });
            };
            for (k, v) in body {
                let key = format!("{section}.{k}");
                if !KEYS.contains(&key.as_str()) {
                    return Err(ConfigError::UnknownKey { key, origin });
                }
                let s = match v {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    other => {
                        return Err(ConfigError::InvalidValue {
                            key,
                            message: format!(
                                "expected a string or number, got {}",
                                other.type_str()
                            ),
                        });
                    }
                };
                self.set(&key, &s, None)?;
            }
        }
        Ok(())
    }

    /// Applies `LOOPWATCH_<SECTION>_<KEY>` variables from `lookup` (pass `std::env::var`).
    /// Unrelated `LOOPWATCH_*` variables are ignored (the instrumentation crate may use them).
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for key in KEYS {
            let var = env_var_name(key);
            if let Some(v) = lookup(&var) {
                self.set(key, &v, Some(&var))?;
            }
        }
        Ok(())
    }

    /// Renders the configuration as TOML (what `--print-config` prints).
    pub fn to_toml(&self) -> String {
        let r = &self.receiver;
        let h = &self.health;
        let mut out = String::new();
        let _ = writeln!(out, "[receiver]");
        let _ = writeln!(out, "grpc_listen = \"{}\"", r.grpc_listen);
        let _ = writeln!(out, "http_listen = \"{}\"", r.http_listen);
        let _ = writeln!(out, "max_body_bytes = {}", r.max_body_bytes);
        let _ = writeln!(out, "max_services = {}", r.max_services);
        let _ = writeln!(out, "max_series_per_service = {}", r.max_series_per_service);
        let _ = writeln!(out, "max_connections = {}", r.max_connections);
        let _ = writeln!(
            out,
            "handshake_timeout = \"{}\"",
            format_duration(r.handshake_timeout)
        );
        let _ = writeln!(
            out,
            "idle_timeout = \"{}\"",
            format_duration(r.idle_timeout)
        );
        let _ = writeln!(out, "\n[admin]");
        let _ = writeln!(out, "listen = \"{}\"", self.admin.listen);
        let _ = writeln!(out, "max_connections = {}", self.admin.max_connections);
        let _ = writeln!(out, "\n[health]");
        let _ = writeln!(out, "lag_enter = \"{}\"", format_duration(h.lag_enter));
        let _ = writeln!(out, "lag_leave = \"{}\"", format_duration(h.lag_leave));
        let _ = writeln!(out, "hold = \"{}\"", format_duration(h.hold));
        let _ = writeln!(out, "stale_after = \"{}\"", format_duration(h.stale_after));
        let _ = writeln!(out, "target_lag = \"{}\"", format_duration(h.target_lag));
        let _ = writeln!(out, "target_utilization = {}", h.target_utilization);
        let _ = writeln!(out, "error_ratio_enter = {}", h.error_ratio_enter);
        let _ = writeln!(out, "error_ratio_leave = {}", h.error_ratio_leave);
        let _ = writeln!(
            out,
            "error_window = \"{}\"",
            format_duration(h.error_window)
        );
        let _ = writeln!(out, "error_min_requests = {}", h.error_min_requests);
        let _ = writeln!(out, "error_hold = \"{}\"", format_duration(h.error_hold));
        let _ = writeln!(out, "heap_growth_enter = {}", h.heap_growth_enter);
        let _ = writeln!(out, "heap_growth_leave = {}", h.heap_growth_leave);
        let _ = writeln!(out, "heap_hold = \"{}\"", format_duration(h.heap_hold));
        let _ = writeln!(out, "stuck_enter = \"{}\"", format_duration(h.stuck_enter));
        let _ = writeln!(out, "stuck_workers = \"{}\"", h.stuck_workers.as_str());
        let stall = h.liveness_stall.map_or("off".into(), format_duration);
        let _ = writeln!(out, "liveness_stall = \"{stall}\"");
        let d = &self.drain;
        let _ = writeln!(out, "\n[drain]");
        let _ = writeln!(out, "timeout = \"{}\"", format_duration(d.timeout));
        let _ = writeln!(out, "max_timeout = \"{}\"", format_duration(d.max_timeout));
        // The token is a secret: printed redacted.
        let token = if d.token.is_empty() { "" } else { "<redacted>" };
        let _ = writeln!(out, "token = \"{token}\"");
        let _ = writeln!(out, "\n[shutdown]");
        let _ = writeln!(out, "grace = \"{}\"", format_duration(self.shutdown.grace));
        let e = &self.exporter;
        let _ = writeln!(out, "\n[exporter]");
        let _ = writeln!(out, "endpoint = \"{}\"", e.endpoint);
        let _ = writeln!(out, "protocol = \"{}\"", e.protocol.as_str());
        let _ = writeln!(out, "interval = \"{}\"", format_duration(e.interval));
        let _ = writeln!(out, "timeout = \"{}\"", format_duration(e.timeout));
        let _ = writeln!(out, "queue_size = {}", e.queue_size);
        let _ = writeln!(
            out,
            "max_retry_time = \"{}\"",
            format_duration(e.max_retry_time)
        );
        // Header values carry credentials: printed redacted.
        let headers = if e.headers.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        let _ = writeln!(out, "headers = \"{headers}\"");
        let compression = if e.gzip { "gzip" } else { "none" };
        let _ = writeln!(out, "compression = \"{compression}\"");
        out
    }

    /// Loads the effective configuration: defaults, then `file`, then env (`lookup`), then
    /// `overrides` (flags, as `(key, value)` pairs), then validation.
    pub fn load(
        file: Option<&Path>,
        lookup: impl Fn(&str) -> Option<String>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            config.apply_toml(&text, path)?;
        }
        config.apply_env(lookup)?;
        for (k, v) in overrides {
            config.set(k, v, Some("flag"))?;
        }
        config.validate()?;
        Ok(config)
    }
}

/// Parses `k=v,k2=v2` (the `OTEL_EXPORTER_OTLP_HEADERS` format: values may be
/// percent-encoded) into valid HTTP header names (lower-cased) and values. The message of an
/// error names the pair by position, never its value.
fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, pair) in text.split(',').enumerate() {
        if pair.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!("header {} is not key=value", i + 1));
        };
        let k = k.trim().to_ascii_lowercase();
        let v = percent_decode(v.trim());
        if axum::http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(format!("header {}: invalid name {k:?}", i + 1));
        }
        if axum::http::HeaderValue::from_str(&v).is_err() {
            return Err(format!("header {} ({k}): invalid value", i + 1));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Decodes `%XX` escapes; anything else is kept as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The environment variable for a `section.key`, e.g. `LOOPWATCH_HEALTH_LAG_ENTER`.
pub fn env_var_name(key: &str) -> String {
    format!("LOOPWATCH_{}", key.replace('.', "_").to_uppercase())
}

/// Builder for [`Config`], starting from the embedded defaults.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// Sets the OTLP/gRPC listen address (port 0 picks a free port).
    pub fn grpc_listen(mut self, addr: SocketAddr) -> Self {
        self.config.receiver.grpc_listen = addr;
        self
    }
    /// Sets the OTLP/HTTP listen address (port 0 picks a free port).
    pub fn http_listen(mut self, addr: SocketAddr) -> Self {
        self.config.receiver.http_listen = addr;
        self
    }
    /// Sets the admin HTTP listen address (port 0 picks a free port).
    pub fn admin_listen(mut self, addr: SocketAddr) -> Self {
        self.config.admin.listen = addr;
        self
    }
    /// Sets the decompressed body cap in bytes.
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.config.receiver.max_body_bytes = n;
        self
    }
    /// Sets the service-instance cap.
    pub fn max_services(mut self, n: usize) -> Self {
        self.config.receiver.max_services = n;
        self
    }
    /// Sets the per-service series cap.
    pub fn max_series_per_service(mut self, n: usize) -> Self {
        self.config.receiver.max_series_per_service = n;
        self
    }
    /// Sets the open-connection cap per OTLP listener.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.receiver.max_connections = n;
        self
    }
    /// Sets the time a new receiver connection has for its preface or first request head.
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.config.receiver.handshake_timeout = d;
        self
    }
    /// Sets the time a receiver connection may stay without a request in flight.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.config.receiver.idle_timeout = d;
        self
    }
    /// Sets the open-connection cap of the admin listener.
    pub fn admin_max_connections(mut self, n: usize) -> Self {
        self.config.admin.max_connections = n;
        self
    }
    /// Sets the lag that enters the unhealthy state.
    pub fn lag_enter(mut self, d: Duration) -> Self {
        self.config.health.lag_enter = d;
        self
    }
    /// Sets the lag below which recovery is possible.
    pub fn lag_leave(mut self, d: Duration) -> Self {
        self.config.health.lag_leave = d;
        self
    }
    /// Sets the recovery hold time.
    pub fn hold(mut self, d: Duration) -> Self {
        self.config.health.hold = d;
        self
    }
    /// Sets the staleness timeout.
    pub fn stale_after(mut self, d: Duration) -> Self {
        self.config.health.stale_after = d;
        self
    }
    /// Sets the lag at which pressure is 1.0.
    pub fn target_lag(mut self, d: Duration) -> Self {
        self.config.health.target_lag = d;
        self
    }
    /// Sets the utilization at which pressure is 1.0.
    pub fn target_utilization(mut self, u: f64) -> Self {
        self.config.health.target_utilization = u;
        self
    }
    /// Sets the per-route error ratio enter and leave levels.
    pub fn error_ratio(mut self, enter: f64, leave: f64) -> Self {
        self.config.health.error_ratio_enter = enter;
        self.config.health.error_ratio_leave = leave;
        self
    }
    /// Sets the error-ratio sliding window.
    pub fn error_window(mut self, d: Duration) -> Self {
        self.config.health.error_window = d;
        self
    }
    /// Sets the minimum requests per route in the window.
    pub fn error_min_requests(mut self, n: usize) -> Self {
        self.config.health.error_min_requests = n;
        self
    }
    /// Sets the error-ratio recovery hold time.
    pub fn error_hold(mut self, d: Duration) -> Self {
        self.config.health.error_hold = d;
        self
    }
    /// Sets the heap growth enter and leave levels (bytes per second).
    pub fn heap_growth(mut self, enter: f64, leave: f64) -> Self {
        self.config.health.heap_growth_enter = enter;
        self.config.health.heap_growth_leave = leave;
        self
    }
    /// `health.stuck_enter` and `health.stuck_workers`.
    pub fn stuck_workers(mut self, enter: Duration, policy: StuckPolicy) -> Self {
        self.config.health.stuck_enter = enter;
        self.config.health.stuck_workers = policy;
        self
    }

    /// `health.liveness_stall` (`None`: off).
    pub fn liveness_stall(mut self, d: Option<Duration>) -> Self {
        self.config.health.liveness_stall = d;
        self
    }

    /// Sets the heap growth recovery hold time.
    pub fn heap_hold(mut self, d: Duration) -> Self {
        self.config.health.heap_hold = d;
        self
    }
    /// Sets the default wait of `POST /drain`.
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.config.drain.timeout = d;
        self
    }
    /// Sets the cap on `POST /drain?timeout=`.
    pub fn drain_max_timeout(mut self, d: Duration) -> Self {
        self.config.drain.max_timeout = d;
        self
    }
    /// Sets the bearer token for non-loopback `POST /drain`.
    pub fn drain_token(mut self, token: impl Into<String>) -> Self {
        self.config.drain.token = token.into();
        self
    }
    /// Sets the shutdown grace.
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.config.shutdown.grace = d;
        self
    }
    /// Sets the upstream endpoint (empty disables export) and protocol.
    pub fn exporter(mut self, endpoint: impl Into<String>, protocol: ExportProtocol) -> Self {
        self.config.exporter.endpoint = endpoint.into().trim_end_matches('/').to_string();
        self.config.exporter.protocol = protocol;
        self
    }
    /// Sets the upstream batching interval.
    pub fn exporter_interval(mut self, d: Duration) -> Self {
        self.config.exporter.interval = d;
        self
    }
    /// Sets the upstream request timeout.
    pub fn exporter_timeout(mut self, d: Duration) -> Self {
        self.config.exporter.timeout = d;
        self
    }
    /// Sets the upstream queue size (requests).
    pub fn exporter_queue_size(mut self, n: usize) -> Self {
        self.config.exporter.queue_size = n;
        self
    }
    /// Sets the upstream retry budget per request.
    pub fn exporter_max_retry_time(mut self, d: Duration) -> Self {
        self.config.exporter.max_retry_time = d;
        self
    }
    /// Sets any key from its string form, as [`Config::set`] does.
    pub fn set(mut self, key: &str, value: &str) -> Result<Self, ConfigError> {
        self.config.set(key, value, None)?;
        Ok(self)
    }
    /// Validates and returns the configuration.
    pub fn build(self) -> Result<Config, ConfigError> {
        self.config.validate()?;
        Ok(self.config)
    }
}

/// A duration string that could not be parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid duration {0:?} (expected e.g. \"250ms\", \"1.5s\")")]
pub struct DurationError(pub String);

/// Parses `"250ms"`, `"1.5s"`, `"2m"`, `"1h"`, `"10us"`, `"5ns"` into a [`Duration`].
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(input.to_string());
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(err)?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.starts_with('.') && num.len() == 1 {
        return Err(err());
    }
    let value: f64 = num.parse().map_err(|_| err())?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e12).contains(&secs) {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration in the shortest unit that is exact-ish (`"250ms"`, `"3s"`, `"1.5s"`).
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        "0s".into()
    } else if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", nanos / 1_000_000_000)
    } else if nanos.is_multiple_of(1_000_000) && nanos < 1_000_000_000 {
        format!("{}ms", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}s", d.as_secs_f64())
    } else if nanos.is_multiple_of(1_000) {
        format!("{}us", nanos / 1_000)
    } else {
        format!("{nanos}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 10us "), Ok(Duration::from_micros(10)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["abc", "", "10", "ms", "1.2.3s", "-1s", "5 parsecs", "."] {
            assert!(parse_duration(bad).is_err(), "{bad} should fail");
        }
        let e = parse_duration("abc").unwrap_err().to_string();
        assert_eq!(
            e,
            r#"invalid duration "abc" (expected e.g. "250ms", "1.5s")"#
        );
    }

    #[test]
    fn durations_round_trip() {
        for d in ["250ms", "3s", "1.5s", "10us", "7ns", "2m"] {
            let parsed = parse_duration(d).unwrap();
            assert_eq!(parse_duration(&format_duration(parsed)).unwrap(), parsed);
        }
    }

    #[test]
    fn toml_errors_name_key() {
        let mut c = Config::default();
        let e = c
            .apply_toml("[health]\nlag_enter = \"abc\"\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            r#"health.lag_enter: invalid duration "abc" (expected e.g. "250ms", "1.5s")"#
        );
        let e = c
            .apply_toml("[health]\nlag_entr = \"1s\"\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("health.lag_entr: unknown"), "{e}");
    }

    #[test]
    fn precedence_flag_env_file_default() {
        let dir = std::env::temp_dir().join(format!("lw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "[health]\nhold = \"1s\"\nstale_after = \"9s\"\n").unwrap();
        let env = |k: &str| (k == "LOOPWATCH_HEALTH_HOLD").then(|| "2s".to_string());
        let c = Config::load(Some(&path), env, &[]).unwrap();
        assert_eq!(c.health.hold, Duration::from_secs(2));
        assert_eq!(c.health.stale_after, Duration::from_secs(9));
        assert_eq!(c.health.lag_enter, DEFAULT_LAG_ENTER);
        let c = Config::load(Some(&path), env, &[("health.hold".into(), "4s".into())]).unwrap();
        assert_eq!(c.health.hold, Duration::from_secs(4));
        let printed = c.to_toml();
        let mut again = Config::default();
        again.apply_toml(&printed, Path::new("p.toml")).unwrap();
        assert_eq!(again, c);
        std::fs::remove_dir_all(&dir).ok();
    }
}
