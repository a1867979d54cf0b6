//! Builder, environment variables and defaults.
//!
//! Precedence for every setting: builder value > environment variable > `DEFAULT_*` constant.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::error::StartError;

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

/// Environment variable names honoured by loopwatch.
pub(crate) mod env {
    pub(crate) const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
    pub(crate) const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
    pub(crate) const METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
    pub(crate) const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    pub(crate) const METRICS_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL";
    pub(crate) const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
    pub(crate) const EXPORT_INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
    pub(crate) const POD_NAME: &str = "POD_NAME";
    pub(crate) const HOSTNAME: &str = "HOSTNAME";
    pub(crate) const KUBERNETES_SERVICE_HOST: &str = "KUBERNETES_SERVICE_HOST";
    pub(crate) const STALL_STACKS: &str = "LOOPWATCH_STALL_STACKS";
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
    /// `OTEL_RESOURCE_ATTRIBUTES`, else [`DEFAULT_SERVICE_NAME`].
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }
    /// OTLP endpoint, used verbatim (for HTTP include the `/v1/metrics` path). Else
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (verbatim), else `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (HTTP: `/v1/metrics` appended), else [`DEFAULT_GRPC_ENDPOINT`] / [`DEFAULT_HTTP_ENDPOINT`].
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
    /// `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds), else [`DEFAULT_EXPORT_INTERVAL`].
    pub fn export_interval(mut self, interval: Duration) -> Self {
        self.export_interval = Some(interval);
        self
    }
    /// Bound on one export attempt; default [`DEFAULT_EXPORT_TIMEOUT`].
    pub fn export_timeout(mut self, timeout: Duration) -> Self {
        self.export_timeout = Some(timeout);
        self
    }
    /// Longest time between probes of a busy runtime; default [`DEFAULT_PROBE_INTERVAL`]. Must be
    /// at least 100 µs. The probe thread asks to wake 1/20 of it early (at most 0.5 ms), which
    /// absorbs the OS timer's overshoot: at 10 ms, a probe every ~9.6 ms.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = Some(interval);
        self
    }
    /// Delay after which an outstanding probe is a stall; default [`DEFAULT_STALL_THRESHOLD`].
    pub fn stall_threshold(mut self, threshold: Duration) -> Self {
        self.stall_threshold = Some(threshold);
        self
    }
    /// Value of the `tokio.runtime.name` attribute; default [`DEFAULT_RUNTIME_NAME`].
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
    pub(crate) probe_interval: Duration,
    pub(crate) stall_threshold: Duration,
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
        b.probe_interval.unwrap_or(DEFAULT_PROBE_INTERVAL),
        Duration::from_micros(100),
    )?;
    let stall_threshold = check_positive(
        "stall_threshold",
        b.stall_threshold.unwrap_or(DEFAULT_STALL_THRESHOLD),
        Duration::from_millis(1),
    )?;
    let export_timeout = check_positive(
        "export_timeout",
        b.export_timeout.unwrap_or(DEFAULT_EXPORT_TIMEOUT),
        Duration::from_millis(1),
    )?;
    let export_interval = match b.export_interval {
        Some(d) => check_positive("export_interval", d, Duration::from_millis(1))?,
        None => match non_empty(env, env::EXPORT_INTERVAL) {
            Some(v) => match v.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    return Err(StartError::InvalidEnv {
                        var: env::EXPORT_INTERVAL,
                        value: v,
                        reason: "is not a whole number of milliseconds (> 0)".into(),
                    });
                }
            },
            None => DEFAULT_EXPORT_INTERVAL,
        },
    };
    let runtime_name = b
        .runtime_name
        .unwrap_or_else(|| DEFAULT_RUNTIME_NAME.to_owned());

    let protocol = match b.protocol {
        Some(p) => p,
        None => {
            let found = [env::METRICS_PROTOCOL, env::PROTOCOL]
                .into_iter()
                .find_map(|var| non_empty(env, var).map(|v| (var, v)));
            match found {
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
            }
        }
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
            Protocol::Grpc => DEFAULT_GRPC_ENDPOINT,
            Protocol::HttpProtobuf => DEFAULT_HTTP_ENDPOINT,
        };
        (d.to_owned(), "default")
    };
    let endpoint = validate_endpoint(endpoint.trim(), source_key)?;

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
        probe_interval,
        stall_threshold,
        runtime_name,
        resource,
        meter_provider: b.meter_provider,
        stall_stacks,
        stall_stack_signal: b.stall_stack_signal,
    })
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
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
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
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve_with(b: LoopwatchBuilder, vars: &[(&str, &str)]) -> Result<Settings, StartError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        resolve(b, &move |k: &str| map.get(k).cloned())
    }

    fn attr(s: &Settings, key: &str) -> Option<String> {
        s.resource
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    #[test]
    fn defaults() {
        let s = resolve_with(Loopwatch::builder(), &[]).expect("defaults resolve");
        assert_eq!(s.endpoint, DEFAULT_GRPC_ENDPOINT);
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.export_interval, DEFAULT_EXPORT_INTERVAL);
        assert_eq!(s.probe_interval, DEFAULT_PROBE_INTERVAL);
        assert_eq!(s.stall_threshold, DEFAULT_STALL_THRESHOLD);
        assert_eq!(s.runtime_name, "main");
        assert_eq!(attr(&s, "service.name").as_deref(), Some("unknown_service"));
        let id = attr(&s, "service.instance.id").expect("instance id generated");
        assert!(id.contains(&format!("-{}-", std::process::id())), "{id}");
        assert_eq!(attr(&s, "k8s.pod.name"), None);
    }

    #[test]
    fn builder_beats_env_beats_default() {
        let env = [
            ("OTEL_SERVICE_NAME", "from-env"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "250"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ];
        let s = resolve_with(Loopwatch::builder(), &env).expect("env resolves");
        assert_eq!(attr(&s, "service.name").as_deref(), Some("from-env"));
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.endpoint, "http://env:4317/v1/metrics");
        assert_eq!(s.export_interval, Duration::from_millis(250));

        let b = Loopwatch::builder()
            .service_name("svc")
            .endpoint("http://b:1")
            .protocol(Protocol::Grpc)
            .export_interval(Duration::from_secs(3));
        let s = resolve_with(b, &env).expect("builder resolves");
        assert_eq!(attr(&s, "service.name").as_deref(), Some("svc"));
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.endpoint, "http://b:1");
        assert_eq!(s.export_interval, Duration::from_secs(3));
    }

    #[test]
    fn metrics_endpoint_is_verbatim_and_wins() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318/"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:9/custom"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ];
        let s = resolve_with(Loopwatch::builder(), &env).expect("resolves");
        assert_eq!(s.endpoint, "http://m:9/custom");
        let s = resolve_with(Loopwatch::builder(), &env[..1]).expect("resolves");
        assert_eq!(s.endpoint, "http://generic:4318/"); // grpc: verbatim
        let s = resolve_with(Loopwatch::builder().protocol(Protocol::HttpProtobuf), &[])
            .expect("resolves");
        assert_eq!(s.endpoint, DEFAULT_HTTP_ENDPOINT);
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let err = resolve_with(
            Loopwatch::builder(),
            &[("OTEL_METRIC_EXPORT_INTERVAL", "abc")],
        )
        .expect_err("abc is not a number");
        assert_eq!(
            err.to_string(),
            "OTEL_METRIC_EXPORT_INTERVAL: \"abc\" is not a whole number of milliseconds (> 0)"
        );
        let err = resolve_with(
            Loopwatch::builder(),
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
        )
        .expect_err("json unsupported");
        assert!(
            err.to_string().starts_with("OTEL_EXPORTER_OTLP_PROTOCOL:"),
            "{err}"
        );
        let err = resolve_with(
            Loopwatch::builder(),
            &[("OTEL_RESOURCE_ATTRIBUTES", "a=1,b")],
        )
        .expect_err("entry without =");
        assert!(
            err.to_string().starts_with("OTEL_RESOURCE_ATTRIBUTES:"),
            "{err}"
        );
        let err = resolve_with(
            Loopwatch::builder(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317")],
        )
        .expect_err("no scheme");
        assert!(
            err.to_string().contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
            "{err}"
        );
        let err = resolve_with(Loopwatch::builder().probe_interval(Duration::ZERO), &[])
            .expect_err("zero interval");
        assert!(err.to_string().starts_with("probe_interval:"), "{err}");
    }

    #[test]
    fn stall_stacks_builder_beats_env_beats_on() {
        let on =
            |b: LoopwatchBuilder, v: &[(&str, &str)]| resolve_with(b, v).map(|s| s.stall_stacks);
        assert!(on(Loopwatch::builder(), &[]).expect("default"));
        let off = [("LOOPWATCH_STALL_STACKS", "false")];
        assert!(!on(Loopwatch::builder(), &off).expect("env"));
        assert!(on(Loopwatch::builder().stall_stacks(true), &off).expect("builder"));
        let err = on(Loopwatch::builder(), &[("LOOPWATCH_STALL_STACKS", "maybe")])
            .expect_err("not a boolean");
        assert!(
            err.to_string().starts_with("LOOPWATCH_STALL_STACKS:"),
            "{err}"
        );
    }

    #[test]
    fn resource_attributes() {
        let env = [
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=attr-svc,service.instance.id=i-1,deployment.environment=prod%2Ceu",
            ),
            ("POD_NAME", "pod-7"),
        ];
        let s = resolve_with(Loopwatch::builder(), &env).expect("resolves");
        assert_eq!(attr(&s, "service.name").as_deref(), Some("attr-svc"));
        assert_eq!(attr(&s, "service.instance.id").as_deref(), Some("i-1"));
        assert_eq!(
            attr(&s, "deployment.environment").as_deref(),
            Some("prod,eu")
        );
        assert_eq!(attr(&s, "k8s.pod.name").as_deref(), Some("pod-7"));

        let env = [
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("HOSTNAME", "web-abc"),
        ];
        let s = resolve_with(Loopwatch::builder(), &env).expect("resolves");
        assert_eq!(attr(&s, "k8s.pod.name").as_deref(), Some("web-abc"));
        assert!(
            attr(&s, "service.instance.id")
                .unwrap_or_default()
                .starts_with("web-abc-")
        );
        // outside Kubernetes HOSTNAME is not a pod name
        let s = resolve_with(Loopwatch::builder(), &env[1..]).expect("resolves");
        assert_eq!(attr(&s, "k8s.pod.name"), None);
    }
}
