//! Builder, environment variables and defaults.
//!
//! Precedence for every setting: builder value > environment variable > `DEFAULT_*` constant.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::error::StartError;

impl LoopwatchBuilder {
    /// Default time between two probes of the watched runtime: 10 ms (like Node's
    /// `monitorEventLoopDelay` resolution). Also the coordinated-omission correction interval.
    pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(10);
    /// Default scheduling delay after which an outstanding probe counts as a stall: 250 ms.
    pub const DEFAULT_STALL_THRESHOLD: Duration = Duration::from_millis(250);
    /// Default export interval and delay-window length: 1 s (`OTEL_METRIC_EXPORT_INTERVAL` overrides).
    pub const DEFAULT_EXPORT_INTERVAL: Duration = Duration::from_secs(1);
    /// Default bound on one OTLP export attempt (connect + send): 2 s. Exports are not retried:
    /// every export carries the full cumulative state, so the next one supersedes a lost one.
    pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default bound on [`crate::LoopwatchGuard::shutdown`] waiting for the final flush: 5 s.
    pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default OTLP/gRPC endpoint (the loopwatch agent sidecar).
    pub const DEFAULT_GRPC_ENDPOINT: &str = "http://127.0.0.1:4317";
    /// Default OTLP/HTTP metrics endpoint (the loopwatch agent sidecar).
    pub const DEFAULT_HTTP_ENDPOINT: &str = "http://127.0.0.1:4318/v1/metrics";
    /// Default value of the `tokio.runtime.name` attribute.
    pub const DEFAULT_RUNTIME_NAME: &str = "main";
    /// Service name used when neither the builder nor the environment names the service.
    pub const DEFAULT_SERVICE_NAME: &str = "unknown_service";
}

/// Environment variable names honoured by loopwatch.
pub(crate) mod env {
    pub(crate) const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
    pub(crate) const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
    pub(crate) const METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
    pub(crate) const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    pub(crate) const METRICS_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL";
    pub(crate) const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
    pub(crate) const EXPORT_INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
    pub(crate) const METRICS_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT";
    pub(crate) const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
    pub(crate) const METRICS_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION";
    pub(crate) const COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
    pub(crate) const METRICS_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE";
    pub(crate) const CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
    pub(crate) const METRICS_CLIENT_CERTIFICATE: &str =
        "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE";
    pub(crate) const CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";
    pub(crate) const METRICS_CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY";
    pub(crate) const CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_CLIENT_KEY";
    pub(crate) const POD_NAME: &str = "POD_NAME";
    pub(crate) const HOSTNAME: &str = "HOSTNAME";
    pub(crate) const KUBERNETES_SERVICE_HOST: &str = "KUBERNETES_SERVICE_HOST";
    pub(crate) const STALL_STACKS: &str = "LOOPWATCH_STALL_STACKS";

    /// Every variable above: the documented table must name each.
    #[cfg(test)]
    pub(crate) const ALL: [&str; 21] = [
        SERVICE_NAME,
        RESOURCE_ATTRIBUTES,
        METRICS_ENDPOINT,
        ENDPOINT,
        METRICS_PROTOCOL,
        PROTOCOL,
        EXPORT_INTERVAL,
        METRICS_TIMEOUT,
        TIMEOUT,
        METRICS_COMPRESSION,
        COMPRESSION,
        METRICS_CERTIFICATE,
        CERTIFICATE,
        METRICS_CLIENT_CERTIFICATE,
        CLIENT_CERTIFICATE,
        METRICS_CLIENT_KEY,
        CLIENT_KEY,
        POD_NAME,
        HOSTNAME,
        KUBERNETES_SERVICE_HOST,
        STALL_STACKS,
    ];
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// OTLP over gRPC (`grpc`), default port 4317.
    #[default]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (`http/protobuf`), default port 4318.
    HttpProtobuf,
}

/// Namespace for [`Loopwatch::builder`].
#[derive(Debug, Clone, Copy)]
pub struct Loopwatch;

impl Loopwatch {
    /// A builder with nothing set: every setting falls back to the environment, then the default.
    pub fn builder() -> LoopwatchBuilder {
        LoopwatchBuilder::default()
    }
}

/// Configuration for loopwatch; finish with [`LoopwatchBuilder::start`].
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct LoopwatchBuilder {
    pub(crate) service_name: Option<String>,
    pub(crate) endpoint: Option<String>,
    pub(crate) protocol: Option<Protocol>,
    pub(crate) export_interval: Option<Duration>,
    pub(crate) export_timeout: Option<Duration>,
    pub(crate) probe_interval: Option<Duration>,
    pub(crate) stall_threshold: Option<Duration>,
    pub(crate) runtime_name: Option<String>,
    pub(crate) meter_provider: Option<SdkMeterProvider>,
    pub(crate) stuck_threshold: Option<Duration>,
    pub(crate) heap_window: Option<Duration>,
    pub(crate) unpark_hook: Option<crate::UnparkHook>,
    pub(crate) stall_stacks: Option<bool>,
    pub(crate) stall_stack_signal: Option<i32>,
}

impl LoopwatchBuilder {
    /// `service.name` resource attribute. Else `OTEL_SERVICE_NAME`, else `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`, else [`LoopwatchBuilder::DEFAULT_SERVICE_NAME`].
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }
    /// OTLP endpoint, used verbatim (for HTTP include the `/v1/metrics` path). Else
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (verbatim), else `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (HTTP: `/v1/metrics` appended), else [`LoopwatchBuilder::DEFAULT_GRPC_ENDPOINT`] / [`LoopwatchBuilder::DEFAULT_HTTP_ENDPOINT`].
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }
    /// OTLP transport. Else `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`
    /// (`grpc` | `http/protobuf`), else [`Protocol::Grpc`].
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }
    /// Export interval, which is also the length of a delay window. Else
    /// `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds), else [`LoopwatchBuilder::DEFAULT_EXPORT_INTERVAL`].
    pub fn export_interval(mut self, interval: Duration) -> Self {
        self.export_interval = Some(interval);
        self
    }
    /// Bound on one export attempt. Else `OTEL_EXPORTER_OTLP_METRICS_TIMEOUT` /
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), else [`LoopwatchBuilder::DEFAULT_EXPORT_TIMEOUT`].
    pub fn export_timeout(mut self, timeout: Duration) -> Self {
        self.export_timeout = Some(timeout);
        self
    }
    /// Longest time between probes of a busy runtime; default [`LoopwatchBuilder::DEFAULT_PROBE_INTERVAL`]. Must be
    /// at least 100 µs. The probe thread asks to wake 1/20 of it early (at most 0.5 ms), which
    /// absorbs the OS timer's overshoot: at 10 ms, a probe every ~9.6 ms.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = Some(interval);
        self
    }
    /// Delay after which an outstanding probe is a stall; default [`LoopwatchBuilder::DEFAULT_STALL_THRESHOLD`].
    pub fn stall_threshold(mut self, threshold: Duration) -> Self {
        self.stall_threshold = Some(threshold);
        self
    }
    /// Value of the `tokio.runtime.name` attribute; default [`LoopwatchBuilder::DEFAULT_RUNTIME_NAME`].
    pub fn runtime_name(mut self, name: impl Into<String>) -> Self {
        self.runtime_name = Some(name.into());
        self
    }
    /// The [`crate::UnparkHook`] installed on the watched runtime: lets the probe thread sleep
    /// while the runtime is quiet (one wake-up per 2.5 s heartbeat instead of 40 a second)
    /// without seeing a block that starts from quiet any later. Default: none.
    pub fn unpark_hook(mut self, hook: crate::UnparkHook) -> Self {
        self.unpark_hook = Some(hook);
        self
    }
    /// Capture the stacks of the running worker threads when a stall passes the threshold or a
    /// worker starts a stuck episode, and report them (a `tracing` warning and an OTLP log
    /// record `loopwatch.stall` / `tokio.worker.stuck`). Else `LOOPWATCH_STALL_STACKS`
    /// (`true`/`false`, `1`/`0`), else on. Linux x86_64 only: elsewhere this does nothing.
    pub fn stall_stacks(mut self, on: bool) -> Self {
        self.stall_stacks = Some(on);
        self
    }
    /// The real-time signal that interrupts worker threads for stall stacks; default
    /// `SIGRTMIN + 6`. It must have no handler yet: loopwatch never replaces one (a profiler's
    /// SIGPROF, an application's own handler), and starts without stall stacks instead.
    pub fn stall_stack_signal(mut self, signal: i32) -> Self {
        self.stall_stack_signal = Some(signal);
        self
    }
    /// Register loopwatch's instruments on this provider instead of building an OTLP pipeline.
    /// Endpoint, protocol, export interval and resource settings are then ignored (the provider
    /// owns them); stall flushes call its `force_flush`, and the guard never shuts it down.
    pub fn meter_provider(mut self, provider: SdkMeterProvider) -> Self {
        self.meter_provider = Some(provider);
        self
    }
}

/// Fully resolved settings.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) endpoint: String,
    pub(crate) protocol: Protocol,
    pub(crate) export_interval: Duration,
    pub(crate) export_timeout: Duration,
    /// Gzip request bodies (`OTEL_EXPORTER_OTLP_COMPRESSION`).
    pub(crate) gzip: bool,
    pub(crate) tls: TlsFiles,
    pub(crate) probe_interval: Duration,
    pub(crate) stall_threshold: Duration,
    /// How long a worker must be stuck to be reported.
    pub(crate) stuck_threshold: Duration,
    /// The span of the heap growth slope.
    pub(crate) heap_window: Duration,
    pub(crate) runtime_name: String,
    pub(crate) resource: Vec<KeyValue>,
    pub(crate) meter_provider: Option<SdkMeterProvider>,
    pub(crate) stall_stacks: bool,
    pub(crate) stall_stack_signal: Option<i32>,
}

/// Looks up an environment variable; tests pass a map instead of the process environment.
pub(crate) type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, ignoring unset and empty variables.
pub(crate) fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

fn non_empty(env: EnvLookup<'_>, key: &str) -> Option<String> {
    env(key).filter(|v| !v.trim().is_empty())
}

fn check_positive(key: &'static str, d: Duration, min: Duration) -> Result<Duration, StartError> {
    if d < min {
        return Err(StartError::InvalidConfig {
            key,
            reason: format!("{d:?} is below the minimum {min:?}"),
        });
    }
    Ok(d)
}

pub(crate) fn resolve(b: LoopwatchBuilder, env: EnvLookup<'_>) -> Result<Settings, StartError> {
    let probe_interval = check_positive(
        "probe_interval",
        b.probe_interval
            .unwrap_or(LoopwatchBuilder::DEFAULT_PROBE_INTERVAL),
        Duration::from_micros(100),
    )?;
    let stall_threshold = check_positive(
        "stall_threshold",
        b.stall_threshold
            .unwrap_or(LoopwatchBuilder::DEFAULT_STALL_THRESHOLD),
        Duration::from_millis(1),
    )?;
    let stuck_threshold = check_positive(
        "stuck_threshold",
        b.stuck_threshold
            .unwrap_or(LoopwatchBuilder::DEFAULT_STUCK_THRESHOLD),
        Duration::from_millis(1),
    )?;
    let heap_window = check_positive(
        "heap_window",
        b.heap_window
            .unwrap_or(LoopwatchBuilder::DEFAULT_HEAP_WINDOW),
        Duration::from_millis(100),
    )?;
    let export_timeout = match b.export_timeout {
        Some(d) => check_positive("export_timeout", d, Duration::from_millis(1))?,
        None => match first_set(env, [env::METRICS_TIMEOUT, env::TIMEOUT]) {
            Some((var, v)) => env_millis(var, v)?,
            None => LoopwatchBuilder::DEFAULT_EXPORT_TIMEOUT,
        },
    };
    let export_interval = match b.export_interval {
        Some(d) => check_positive("export_interval", d, Duration::from_millis(1))?,
        None => match non_empty(env, env::EXPORT_INTERVAL) {
            Some(v) => env_millis(env::EXPORT_INTERVAL, v)?,
            None => LoopwatchBuilder::DEFAULT_EXPORT_INTERVAL,
        },
    };
    let gzip = resolve_gzip(env)?;
    let runtime_name = b
        .runtime_name
        .unwrap_or_else(|| LoopwatchBuilder::DEFAULT_RUNTIME_NAME.to_owned());

    let protocol = match b.protocol {
        Some(p) => p,
        None => match first_set(env, [env::METRICS_PROTOCOL, env::PROTOCOL]) {
            None => Protocol::Grpc,
            Some((var, v)) => match v.trim() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                _ => {
                    return Err(StartError::InvalidEnv {
                        var,
                        value: v,
                        reason: "is not a supported protocol (grpc | http/protobuf)".into(),
                    });
                }
            },
        },
    };

    let (endpoint, source_key) = if let Some(e) = b.endpoint {
        (e, "endpoint")
    } else if let Some(e) = non_empty(env, env::METRICS_ENDPOINT) {
        (e, env::METRICS_ENDPOINT)
    } else if let Some(e) = non_empty(env, env::ENDPOINT) {
        let e = match protocol {
            Protocol::Grpc => e,
            Protocol::HttpProtobuf => format!("{}/v1/metrics", e.trim_end_matches('/')),
        };
        (e, env::ENDPOINT)
    } else {
        let d = match protocol {
            Protocol::Grpc => LoopwatchBuilder::DEFAULT_GRPC_ENDPOINT,
            Protocol::HttpProtobuf => LoopwatchBuilder::DEFAULT_HTTP_ENDPOINT,
        };
        (d.to_owned(), "default")
    };
    let endpoint = validate_endpoint(endpoint.trim(), source_key)?;
    let tls = resolve_tls(env, &endpoint)?;

    let resource = resolve_resource(b.service_name, env)?;
    let stall_stacks = match b.stall_stacks {
        Some(on) => on,
        None => match non_empty(env, env::STALL_STACKS) {
            None => true,
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "on" => true,
                "0" | "false" | "off" => false,
                _ => {
                    return Err(StartError::InvalidEnv {
                        var: env::STALL_STACKS,
                        value: v,
                        reason: "is not a boolean (true | false | 1 | 0)".into(),
                    });
                }
            },
        },
    };

    Ok(Settings {
        endpoint,
        protocol,
        export_interval,
        export_timeout,
        gzip,
        tls,
        probe_interval,
        stall_threshold,
        stuck_threshold,
        heap_window,
        runtime_name,
        resource,
        meter_provider: b.meter_provider,
        stall_stacks,
        stall_stack_signal: b.stall_stack_signal,
    })
}

/// The first of `vars` that is set (not empty), with its name: a `_METRICS_` form listed first
/// wins over the generic one.
fn first_set<const N: usize>(
    env: EnvLookup<'_>,
    vars: [&'static str; N],
) -> Option<(&'static str, String)> {
    vars.into_iter()
        .find_map(|var| non_empty(env, var).map(|v| (var, v)))
}

/// A whole, positive number of milliseconds from `var`.
fn env_millis(var: &'static str, value: String) -> Result<Duration, StartError> {
    match value.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(StartError::InvalidEnv {
            var,
            value,
            reason: "is not a whole number of milliseconds (> 0)".into(),
        }),
    }
}

/// `OTEL_EXPORTER_OTLP_{METRICS_,}COMPRESSION`: `gzip` or `none` (default). The value is not
/// trimmed: opentelemetry-otlp reads these variables too, untrimmed, and both readings must
/// agree.
fn resolve_gzip(env: EnvLookup<'_>) -> Result<bool, StartError> {
    match first_set(env, [env::METRICS_COMPRESSION, env::COMPRESSION]) {
        None => Ok(false),
        Some((_, v)) if v.eq_ignore_ascii_case("gzip") => Ok(true),
        Some((_, v)) if v.eq_ignore_ascii_case("none") => Ok(false),
        Some((var, v)) => Err(StartError::InvalidEnv {
            var,
            value: v,
            reason: "is not a supported compression (gzip | none)".into(),
        }),
    }
}

/// PEM files for an `https://` endpoint, each with the variable that named it (errors name it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// CA certificates to trust instead of the system roots.
    pub(crate) ca: Option<(&'static str, String)>,
    /// Client certificate chain (mTLS), set together with `key`.
    pub(crate) cert: Option<(&'static str, String)>,
    /// Client private key (mTLS).
    pub(crate) key: Option<(&'static str, String)>,
}

/// The certificate variables, the `_METRICS_` form of each winning. They apply to `https://`
/// endpoints only. For an `http://` endpoint the generic forms are ignored (a process's other
/// OTLP exporters may use them for their own `https://` endpoints), while a `_METRICS_` form
/// is an error: it can only have been meant for this exporter.
fn resolve_tls(env: EnvLookup<'_>, endpoint: &str) -> Result<TlsFiles, StartError> {
    let files = TlsFiles {
        ca: first_set(env, [env::METRICS_CERTIFICATE, env::CERTIFICATE]),
        cert: first_set(
            env,
            [env::METRICS_CLIENT_CERTIFICATE, env::CLIENT_CERTIFICATE],
        ),
        key: first_set(env, [env::METRICS_CLIENT_KEY, env::CLIENT_KEY]),
    };
    if !endpoint.starts_with("https://") {
        let metrics_var = [&files.ca, &files.cert, &files.key]
            .into_iter()
            .flatten()
            .find(|(var, _)| var.contains("_METRICS_"));
        return match metrics_var {
            Some((var, v)) => Err(StartError::InvalidEnv {
                var,
                value: v.clone(),
                reason: format!("needs an https:// endpoint (the endpoint is {endpoint})"),
            }),
            None => Ok(TlsFiles::default()),
        };
    }
    match (&files.cert, &files.key) {
        (Some((var, v)), None) => Err(StartError::InvalidEnv {
            var,
            value: v.clone(),
            reason: format!("needs {} as well", env::CLIENT_KEY),
        }),
        (None, Some((var, v))) => Err(StartError::InvalidEnv {
            var,
            value: v.clone(),
            reason: format!("needs {} as well", env::CLIENT_CERTIFICATE),
        }),
        _ => Ok(files),
    }
}

fn validate_endpoint(value: &str, source_key: &'static str) -> Result<String, StartError> {
    let rest = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    match host {
        Some(h) if !h.is_empty() && !h.starts_with(':') && !h.contains(char::is_whitespace) => {
            Ok(value.to_owned())
        }
        _ => Err(StartError::InvalidEndpoint {
            value: value.to_owned(),
            source_key,
        }),
    }
}

/// Parses `OTEL_RESOURCE_ATTRIBUTES` (`k1=v1,k2=v2`, values percent-encoded).
fn parse_resource_attributes(raw: &str) -> Result<Vec<(String, String)>, StartError> {
    let bad = |reason: String| StartError::InvalidEnv {
        var: env::RESOURCE_ATTRIBUTES,
        value: raw.to_owned(),
        reason,
    };
    let mut out = Vec::new();
    for item in raw.split(',') {
        if item.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            return Err(bad(format!("has an entry without '=': {item:?}")));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(bad(format!("has an entry with an empty key: {item:?}")));
        }
        let v = percent_decode(v.trim())
            .ok_or_else(|| bad(format!("has a badly percent-encoded value: {item:?}")))?;
        out.push((k.to_owned(), v));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn host_name(env: EnvLookup<'_>) -> String {
    non_empty(env, env::HOSTNAME)
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "host".to_owned())
}

fn resolve_resource(
    service_name: Option<String>,
    env: EnvLookup<'_>,
) -> Result<Vec<KeyValue>, StartError> {
    let attrs = match non_empty(env, env::RESOURCE_ATTRIBUTES) {
        Some(raw) => parse_resource_attributes(&raw)?,
        None => Vec::new(),
    };
    let from_attrs = |key: &str| {
        attrs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let service = service_name
        .or_else(|| non_empty(env, env::SERVICE_NAME))
        .or_else(|| from_attrs("service.name"))
        .unwrap_or_else(|| LoopwatchBuilder::DEFAULT_SERVICE_NAME.to_owned());
    let instance = from_attrs("service.instance.id").unwrap_or_else(|| {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{}-{}-{started:x}", host_name(env), std::process::id())
    });
    let pod = from_attrs("k8s.pod.name")
        .or_else(|| non_empty(env, env::POD_NAME))
        .or_else(|| {
            non_empty(env, env::KUBERNETES_SERVICE_HOST).and_then(|_| non_empty(env, env::HOSTNAME))
        });

    let mut out = vec![
        KeyValue::new("service.name", service),
        KeyValue::new("service.instance.id", instance),
    ];
    if let Some(pod) = pod {
        out.push(KeyValue::new("k8s.pod.name", pod));
    }
    for (k, v) in attrs {
        if matches!(
            k.as_str(),
            "service.name" | "service.instance.id" | "k8s.pod.name"
        ) {
            continue;
        }
        out.push(KeyValue::new(k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
