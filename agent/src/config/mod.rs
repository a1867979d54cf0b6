//! Agent configuration: embedded defaults, an optional TOML file, `LOOPWATCH_*` environment
//! variables and command-line flags.
//!
//! Precedence is flag > environment > file > default. Every key is addressed as
//! `section.key` (e.g. `health.lag_enter`); the environment variable for a key is
//! `LOOPWATCH_<SECTION>_<KEY>` in upper case (e.g. `LOOPWATCH_HEALTH_LAG_ENTER`).
//! Unknown file keys and invalid values are errors that name the key.
//!
//! The keys, their environment variables, defaults and meanings are in one table
//! (`keys.rs`), which also drives [`Config::default`], [`Config::set`], [`KEYS`] and
//! [`Config::to_toml`]; the README's "Configuration" section shows it as rendered by
//! [`key_table_markdown`] (a test keeps the two equal).
//!
//! Durations are strings with a unit: `ns`, `us`, `ms`, `s`, `m`, `h`, e.g. `"250ms"`,
//! `"1.5s"`, `"2m"`. Flags: `--grpc-listen`, `--http-listen`, `--admin-listen`, and
//! `--set section.key=value` for any key.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod keys;
mod tls;

pub use keys::{DurationError, KEYS, format_duration, key_table_markdown, parse_duration};
use keys::{Field, TABLE};
pub(crate) use tls::TlsMaterial;

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
        keys::name_of(keys::PROTOCOLS, &self)
    }
}

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
        keys::name_of(keys::STUCK_POLICIES, &self)
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
    /// PEM CA certificates trusted for an `https://` endpoint instead of the system roots.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate chain for mTLS (set with `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
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

impl Config {
    /// A configuration with every field zero or empty, before the table's defaults.
    fn blank() -> Self {
        let any = SocketAddr::from(([0, 0, 0, 0], 0));
        Config {
            receiver: ReceiverConfig {
                grpc_listen: any,
                http_listen: any,
                max_body_bytes: 0,
                max_services: 0,
                max_series_per_service: 0,
                max_connections: 0,
                handshake_timeout: Duration::ZERO,
                idle_timeout: Duration::ZERO,
            },
            admin: AdminConfig {
                listen: any,
                max_connections: 0,
            },
            health: HealthConfig {
                lag_enter: Duration::ZERO,
                lag_leave: Duration::ZERO,
                hold: Duration::ZERO,
                stale_after: Duration::ZERO,
                target_lag: Duration::ZERO,
                target_utilization: 0.0,
                error_ratio_enter: 0.0,
                error_ratio_leave: 0.0,
                error_window: Duration::ZERO,
                error_min_requests: 0,
                error_hold: Duration::ZERO,
                heap_growth_enter: 0.0,
                heap_growth_leave: 0.0,
                heap_hold: Duration::ZERO,
                stuck_enter: Duration::ZERO,
                stuck_workers: StuckPolicy::Report,
                liveness_stall: None,
            },
            drain: DrainConfig {
                timeout: Duration::ZERO,
                max_timeout: Duration::ZERO,
                token: String::new(),
            },
            shutdown: ShutdownConfig {
                grace: Duration::ZERO,
            },
            exporter: ExporterConfig {
                endpoint: String::new(),
                protocol: ExportProtocol::Grpc,
                interval: Duration::ZERO,
                timeout: Duration::ZERO,
                queue_size: 0,
                max_retry_time: Duration::ZERO,
                headers: Vec::new(),
                gzip: false,
                tls_ca_file: None,
                tls_cert_file: None,
                tls_key_file: None,
            },
        }
    }
}

impl Default for Config {
    /// The embedded defaults: every key's default from the key table.
    fn default() -> Self {
        let mut config = Config::blank();
        for key in TABLE {
            if let Err(e) = key.field.parse(&mut config, key.default) {
                // The table's defaults are constants; a unit test parses every one.
                panic!("{}: bad default {:?}: {e}", key.name, key.default);
            }
        }
        config
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
        let Some(row) = keys::find(key) else {
            return Err(ConfigError::UnknownKey {
                key: key.to_string(),
                origin: origin.unwrap_or("code").to_string(),
            });
        };
        row.field
            .parse(self, value)
            .map_err(|message| ConfigError::InvalidValue {
                key: match origin {
                    Some(o) => format!("{key} ({o})"),
                    None => key.to_string(),
                },
                message,
            })
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
        let mut copy = self.clone();
        for key in TABLE {
            if let Field::Duration { get, nonzero: true } = key.field
                && get(&mut copy).is_zero()
            {
                return Err(ConfigError::InvalidValue {
                    key: key.name.into(),
                    message: "must be greater than 0".into(),
                });
            }
        }
        TlsMaterial::check(&self.exporter)
    }

    /// [`Config::validate`], then reads the TLS files: a missing or invalid one fails at
    /// startup, naming its key.
    fn validate_with_files(&self) -> Result<(), ConfigError> {
        self.validate()?;
        TlsMaterial::load(&self.exporter).map(drop)
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
        // The accessors are `&mut`: print from a copy.
        let mut copy = self.clone();
        let mut out = String::new();
        let mut section = "";
        for key in TABLE {
            let (sec, name) = key.name.split_once('.').unwrap_or(("", key.name));
            if sec != section {
                let gap = if section.is_empty() { "" } else { "\n" };
                let _ = writeln!(out, "{gap}[{sec}]");
                section = sec;
            }
            let _ = writeln!(out, "{name} = {}", key.field.print(&mut copy));
        }
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
        config.validate_with_files()?;
        Ok(config)
    }
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

/// Builder methods that set one field: `name(Type) => section.field;`.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident($t:ty) => $($path:ident).+;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $t) -> Self {
                self.config.$($path).+ = value;
                self
            }
        )*
    };
}

impl ConfigBuilder {
    setters! {
        /// Sets the OTLP/gRPC listen address (port 0 picks a free port).
        grpc_listen(SocketAddr) => receiver.grpc_listen;
        /// Sets the OTLP/HTTP listen address (port 0 picks a free port).
        http_listen(SocketAddr) => receiver.http_listen;
        /// Sets the admin HTTP listen address (port 0 picks a free port).
        admin_listen(SocketAddr) => admin.listen;
        /// Sets the decompressed body cap in bytes.
        max_body_bytes(usize) => receiver.max_body_bytes;
        /// Sets the service-instance cap.
        max_services(usize) => receiver.max_services;
        /// Sets the per-service series cap.
        max_series_per_service(usize) => receiver.max_series_per_service;
        /// Sets the open-connection cap per OTLP listener.
        max_connections(usize) => receiver.max_connections;
        /// Sets the time a new receiver connection has for its preface or first request head.
        handshake_timeout(Duration) => receiver.handshake_timeout;
        /// Sets the time a receiver connection may stay without a request in flight.
        idle_timeout(Duration) => receiver.idle_timeout;
        /// Sets the open-connection cap of the admin listener.
        admin_max_connections(usize) => admin.max_connections;
        /// Sets the lag that enters the unhealthy state.
        lag_enter(Duration) => health.lag_enter;
        /// Sets the lag below which recovery is possible.
        lag_leave(Duration) => health.lag_leave;
        /// Sets the recovery hold time.
        hold(Duration) => health.hold;
        /// Sets the staleness timeout.
        stale_after(Duration) => health.stale_after;
        /// Sets the lag at which pressure is 1.0.
        target_lag(Duration) => health.target_lag;
        /// Sets the utilization at which pressure is 1.0.
        target_utilization(f64) => health.target_utilization;
        /// Sets the error-ratio sliding window.
        error_window(Duration) => health.error_window;
        /// Sets the minimum requests per route in the window.
        error_min_requests(usize) => health.error_min_requests;
        /// Sets the error-ratio recovery hold time.
        error_hold(Duration) => health.error_hold;
        /// `health.liveness_stall` (`None`: off).
        liveness_stall(Option<Duration>) => health.liveness_stall;
        /// Sets the heap growth recovery hold time.
        heap_hold(Duration) => health.heap_hold;
        /// Sets the default wait of `POST /drain`.
        drain_timeout(Duration) => drain.timeout;
        /// Sets the cap on `POST /drain?timeout=`.
        drain_max_timeout(Duration) => drain.max_timeout;
        /// Sets the shutdown grace.
        shutdown_grace(Duration) => shutdown.grace;
        /// Sets the upstream batching interval.
        exporter_interval(Duration) => exporter.interval;
        /// Sets the upstream request timeout.
        exporter_timeout(Duration) => exporter.timeout;
        /// Sets the upstream queue size (requests).
        exporter_queue_size(usize) => exporter.queue_size;
        /// Sets the upstream retry budget per request.
        exporter_max_retry_time(Duration) => exporter.max_retry_time;
    }

    /// Sets the per-route error ratio enter and leave levels.
    pub fn error_ratio(mut self, enter: f64, leave: f64) -> Self {
        self.config.health.error_ratio_enter = enter;
        self.config.health.error_ratio_leave = leave;
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

    /// Sets the bearer token for non-loopback `POST /drain`.
    pub fn drain_token(mut self, token: impl Into<String>) -> Self {
        self.config.drain.token = token.into();
        self
    }
    /// Sets the upstream endpoint (empty disables export) and protocol.
    pub fn exporter(mut self, endpoint: impl Into<String>, protocol: ExportProtocol) -> Self {
        self.config.exporter.endpoint = endpoint.into().trim_end_matches('/').to_string();
        self.config.exporter.protocol = protocol;
        self
    }
    /// Sets any key from its string form, as [`Config::set`] does.
    pub fn set(mut self, key: &str, value: &str) -> Result<Self, ConfigError> {
        self.config.set(key, value, None)?;
        Ok(self)
    }
    /// Validates and returns the configuration.
    pub fn build(self) -> Result<Config, ConfigError> {
        self.config.validate_with_files()?;
        Ok(self.config)
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
        assert_eq!(c.health.lag_enter, Duration::from_millis(250));
        let c = Config::load(Some(&path), env, &[("health.hold".into(), "4s".into())]).unwrap();
        assert_eq!(c.health.hold, Duration::from_secs(4));
        let printed = c.to_toml();
        let mut again = Config::default();
        again.apply_toml(&printed, Path::new("p.toml")).unwrap();
        assert_eq!(again, c);
        std::fs::remove_dir_all(&dir).ok();
    }
}
