//! The key table: one row per configuration key. A row gives the key's default, its meaning
//! and a [`Field`] (the value's kind plus where it lives in [`Config`]); from it come
//! [`Config::default`], [`Config::set`] (file, env and flags), [`KEYS`],
//! [`Config::to_toml`] (`--print-config`), the zero checks of [`Config::validate`] and the
//! README's key table ([`key_table_markdown`]).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{Config, ExportProtocol, StuckPolicy, env_var_name};

/// A value's kind and its place in [`Config`].
#[derive(Clone, Copy)]
pub(crate) enum Field {
    /// A socket address (`"127.0.0.1:4317"`).
    Addr(fn(&mut Config) -> &mut SocketAddr),
    /// An integer > 0, printed unquoted.
    Count(fn(&mut Config) -> &mut usize),
    /// A duration with a unit; `nonzero`: [`Config::validate`] rejects 0.
    Duration {
        /// The field.
        get: fn(&mut Config) -> &mut Duration,
        /// Whether 0 is invalid.
        nonzero: bool,
    },
    /// A duration, or `off` (also empty or 0) for none.
    OptDuration(fn(&mut Config) -> &mut Option<Duration>),
    /// A number in (0, 1].
    Ratio(fn(&mut Config) -> &mut f64),
    /// A finite number > 0.
    Positive(fn(&mut Config) -> &mut f64),
    /// Empty or an `http://` / `https://` URL (a trailing `/` is dropped).
    Endpoint(fn(&mut Config) -> &mut String),
    /// A secret string: printed `<redacted>` unless empty.
    Secret(fn(&mut Config) -> &mut String),
    /// `k=v,k2=v2` headers; secrets, printed `<redacted>` unless empty.
    Headers(fn(&mut Config) -> &mut Vec<(String, String)>),
    /// `grpc` or `http/protobuf`.
    Protocol(fn(&mut Config) -> &mut ExportProtocol),
    /// `report` or `unready`.
    Stuck(fn(&mut Config) -> &mut StuckPolicy),
    /// `gzip` or `none` (empty: `none`).
    Compression(fn(&mut Config) -> &mut bool),
    /// A file path; empty for none.
    File(fn(&mut Config) -> &mut Option<PathBuf>),
}

/// One configuration key.
pub(crate) struct Key {
    /// `section.key`.
    pub(crate) name: &'static str,
    /// The default, in the form a file or flag would write it.
    pub(crate) default: &'static str,
    /// Shown after the default in the key table, e.g. `(8 MiB)`.
    note: &'static str,
    /// The meaning column of the key table.
    help: &'static str,
    /// Kind and place of the value.
    pub(crate) field: Field,
}

/// Defines [`KEYS`] and [`TABLE`] from one list of rows.
macro_rules! keys {
    ($($name:literal, $default:literal, $note:literal, $field:expr, $help:literal;)*) => {
        /// Every configuration key, as `section.key`, in table order.
        pub const KEYS: &[&str] = &[$($name),*];
        /// The key table, one row per key of [`KEYS`] in the same order.
        pub(crate) const TABLE: &[Key] = &[$(Key {
            name: $name,
            default: $default,
            note: $note,
            help: $help,
            field: $field,
        }),*];
    };
}

use Field as F;

keys! {
    "receiver.grpc_listen", "127.0.0.1:4317", "", F::Addr(|c| &mut c.receiver.grpc_listen),
        "OTLP/gRPC listen address (port 0 = any free port)";
    "receiver.http_listen", "127.0.0.1:4318", "", F::Addr(|c| &mut c.receiver.http_listen),
        "OTLP/HTTP listen address";
    "receiver.max_body_bytes", "8388608", "(8 MiB)", F::Count(|c| &mut c.receiver.max_body_bytes),
        "cap on a request body in bytes, on the wire and after decompression; beyond: 413 (gRPC: \
            OUT_OF_RANGE/RESOURCE_EXHAUSTED)";
    "receiver.max_services", "1000", "", F::Count(|c| &mut c.receiver.max_services),
        "max tracked service instances; a request adding more is refused (429 / \
            RESOURCE_EXHAUSTED)";
    "receiver.max_series_per_service", "10000", "",
        F::Count(|c| &mut c.receiver.max_series_per_service),
        "max series per service instance; a request adding more is refused (429 / \
            RESOURCE_EXHAUSTED)";
    "receiver.max_connections", "512", "", F::Count(|c| &mut c.receiver.max_connections),
        "open connections per OTLP listener (gRPC, HTTP); a connection beyond is closed at accept \
            and counted \
            (`loopwatch_agent_connections_refused_total{listener,reason=\"max_connections\"}`)";
    "receiver.handshake_timeout", "10s", "",
        F::Duration { get: |c| &mut c.receiver.handshake_timeout, nonzero: true },
        "a new receiver connection must send its HTTP/2 preface (gRPC) or first request head \
            (HTTP) within this long";
    "receiver.idle_timeout", "5m", "",
        F::Duration { get: |c| &mut c.receiver.idle_timeout, nonzero: true },
        "a receiver connection with no request in flight for this long is closed";
    "admin.listen", "0.0.0.0:9464", "", F::Addr(|c| &mut c.admin.listen),
        "admin HTTP: `/livez`, `/readyz`, `/metrics`, `/v1/status`, `/v1/history`, \
            `/v1/pressure`, `POST /drain`, `/`";
    "admin.max_connections", "128", "", F::Count(|c| &mut c.admin.max_connections),
        "open connections on the admin listener; beyond: closed at accept and counted";
    "health.lag_enter", "250ms", "",
        F::Duration { get: |c| &mut c.health.lag_enter, nonzero: false },
        "lag at or above which a service becomes unhealthy (`/readyz` 503)";
    "health.lag_leave", "100ms", "",
        F::Duration { get: |c| &mut c.health.lag_leave, nonzero: false },
        "lag below which an unhealthy service may recover";
    "health.hold", "3s", "", F::Duration { get: |c| &mut c.health.hold, nonzero: false },
        "recovery needs this long since lag was last >= `lag_leave`";
    "health.stale_after", "5s", "",
        F::Duration { get: |c| &mut c.health.stale_after, nonzero: true },
        "no export for this long marks a service stale (`/readyz` 503); after 60 times this (5 \
            min) the instance is forgotten, freeing its slot under `receiver.max_services`";
    "health.target_lag", "100ms", "",
        F::Duration { get: |c| &mut c.health.target_lag, nonzero: true },
        "lag at which pressure = 1.0";
    "health.target_utilization", "0.8", "", F::Positive(|c| &mut c.health.target_utilization),
        "event-loop utilization (0..1) at which pressure = 1.0";
    "health.error_ratio_enter", "0.1", "", F::Ratio(|c| &mut c.health.error_ratio_enter),
        "per-route error ratio (0..1] at or above which the service becomes unhealthy";
    "health.error_ratio_leave", "0.05", "", F::Ratio(|c| &mut c.health.error_ratio_leave),
        "per-route error ratio below which it may recover";
    "health.error_window", "30s", "",
        F::Duration { get: |c| &mut c.health.error_window, nonzero: true },
        "sliding window of the error ratio (from `http.server.request.duration` counts)";
    "health.error_min_requests", "10", "", F::Count(|c| &mut c.health.error_min_requests),
        "requests a route needs in the window before its ratio counts";
    "health.error_hold", "10s", "",
        F::Duration { get: |c| &mut c.health.error_hold, nonzero: false },
        "recovery needs the ratio below the leave level this long";
    "health.heap_growth_enter", "10485760", "(10 MiB/s)",
        F::Positive(|c| &mut c.health.heap_growth_enter),
        "`loopwatch.heap.growth_rate` (By/s) at or above which the service becomes unhealthy";
    "health.heap_growth_leave", "1048576", "(1 MiB/s)",
        F::Positive(|c| &mut c.health.heap_growth_leave),
        "heap growth below which it may recover";
    "health.heap_hold", "30s", "",
        F::Duration { get: |c| &mut c.health.heap_hold, nonzero: false },
        "recovery needs heap growth below the leave level this long";
    "health.stuck_enter", "1s", "",
        F::Duration { get: |c| &mut c.health.stuck_enter, nonzero: false },
        "a worker stuck this long (`tokio.worker.stuck.duration`) is a reason, counts in \
            `stuck_workers` and lowers capacity in pressure";
    "health.stuck_workers", "report", "", F::Stuck(|c| &mut c.health.stuck_workers),
        "`report`: stuck workers are reasons and pressure only (one stuck worker of N still \
            serves); `unready`: they also make the service unhealthy";
    "health.liveness_stall", "off", "", F::OptDuration(|c| &mut c.health.liveness_stall),
        "`/livez?service=NAME` answers 503 while that service's stall in progress (for Node.js: \
            its overdue export) lasts longer than this";
    "drain.timeout", "20s", "", F::Duration { get: |c| &mut c.drain.timeout, nonzero: false },
        "wait of `POST /drain` without `?timeout=`";
    "drain.max_timeout", "120s", "",
        F::Duration { get: |c| &mut c.drain.max_timeout, nonzero: false },
        "cap on `?timeout=`";
    "drain.token", "", "", F::Secret(|c| &mut c.drain.token),
        "bearer token that admits non-loopback `POST /drain` (empty: loopback only); printed as \
            `<redacted>`";
    "shutdown.grace", "10s", "",
        F::Duration { get: |c| &mut c.shutdown.grace, nonzero: false },
        "after SIGTERM, max wait for every service's final export (`loopwatch.lifecycle.state` = \
            2, or stale)";
    "exporter.endpoint", "", "(disabled)", F::Endpoint(|c| &mut c.exporter.endpoint),
        "upstream OTLP endpoint: gRPC `http://host:4317`; HTTP base URL `http://host:4318` \
            (`/v1/metrics` etc. appended); `https://` for TLS (rustls, system roots unless \
            `exporter.tls_ca_file`)";
    "exporter.protocol", "grpc", "", F::Protocol(|c| &mut c.exporter.protocol),
        "`grpc` or `http/protobuf`";
    "exporter.interval", "10s", "",
        F::Duration { get: |c| &mut c.exporter.interval, nonzero: true },
        "metrics batching interval";
    "exporter.timeout", "10s", "",
        F::Duration { get: |c| &mut c.exporter.timeout, nonzero: true },
        "timeout of one upstream request";
    "exporter.queue_size", "256", "", F::Count(|c| &mut c.exporter.queue_size),
        "max queued upstream requests; beyond: dropped, \
            `loopwatch_agent_export_dropped_total{reason=\"queue_full\"}`";
    "exporter.max_retry_time", "60s", "",
        F::Duration { get: |c| &mut c.exporter.max_retry_time, nonzero: false },
        "retrying one request stops after this long (`reason=\"retries_exhausted\"`)";
    "exporter.headers", "", "", F::Headers(|c| &mut c.exporter.headers),
        "headers `k=v,k2=v2` (the `OTEL_EXPORTER_OTLP_HEADERS` format, values may be %-encoded) \
            on every upstream request (gRPC metadata or HTTP headers); printed `<redacted>` by \
            `--print-config`";
    "exporter.compression", "none", "", F::Compression(|c| &mut c.exporter.gzip),
        "`gzip` or `none` for upstream requests";
    "exporter.tls_ca_file", "", "(system roots)", F::File(|c| &mut c.exporter.tls_ca_file),
        "PEM CA certificates an `https://` endpoint's certificate must chain to, instead of the \
            system roots";
    "exporter.tls_cert_file", "", "", F::File(|c| &mut c.exporter.tls_cert_file),
        "PEM client certificate chain for mTLS; set with `exporter.tls_key_file`";
    "exporter.tls_key_file", "", "", F::File(|c| &mut c.exporter.tls_key_file),
        "PEM private key of `exporter.tls_cert_file`";
}

/// The values of `exporter.protocol`.
pub(crate) const PROTOCOLS: &[(&str, ExportProtocol)] = &[
    ("grpc", ExportProtocol::Grpc),
    ("http/protobuf", ExportProtocol::HttpProtobuf),
];
/// The values of `health.stuck_workers`.
pub(crate) const STUCK_POLICIES: &[(&str, StuckPolicy)] = &[
    ("report", StuckPolicy::Report),
    ("unready", StuckPolicy::Unready),
];
/// The values of `exporter.compression` (`true`: gzip); empty means `none`.
const COMPRESSIONS: &[(&str, bool)] = &[("gzip", true), ("none", false), ("", false)];

/// The name of `value` in `choices`: the first one, which is how it prints.
pub(crate) fn name_of<T: PartialEq>(choices: &[(&'static str, T)], value: &T) -> &'static str {
    choices
        .iter()
        .find(|(_, v)| v == value)
        .map_or("", |(name, _)| name)
}

/// The row of `name` (`section.key`).
pub(crate) fn find(name: &str) -> Option<&'static Key> {
    TABLE.iter().find(|k| k.name == name)
}

/// Picks the choice named `value` (trimmed) or says which ones there are.
fn choose<T: Copy>(what: &str, value: &str, choices: &[(&str, T)]) -> Result<T, String> {
    let v = value.trim();
    if let Some((_, t)) = choices.iter().find(|(name, _)| *name == v) {
        return Ok(*t);
    }
    let names: Vec<String> = choices
        .iter()
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, _)| format!("{name:?}"))
        .collect();
    Err(format!(
        "invalid {what} {v:?} (expected {})",
        names.join(" or ")
    ))
}

/// A number parsed from `v` (trimmed) and accepted by `ok`.
fn number<T: std::str::FromStr>(v: &str, ok: impl Fn(&T) -> bool) -> Option<T> {
    v.trim().parse::<T>().ok().filter(ok)
}

impl Field {
    /// Parses `value` into the field of `c`; the error is the message without the key.
    pub(crate) fn parse(self, c: &mut Config, value: &str) -> Result<(), String> {
        let dur = |v: &str| parse_duration(v).map_err(|e| e.to_string());
        match self {
            F::Addr(get) => {
                *get(c) = value.trim().parse().map_err(|_| {
                    format!("invalid socket address {value:?} (expected e.g. \"127.0.0.1:4317\")")
                })?;
            }
            F::Count(get) => {
                *get(c) = number(value, |n: &usize| *n > 0).ok_or_else(|| {
                    format!("invalid count {value:?} (expected a positive integer)")
                })?;
            }
            F::Duration { get, .. } => *get(c) = dur(value)?,
            F::OptDuration(get) => {
                *get(c) = match value.trim() {
                    "" | "off" => None,
                    v => Some(dur(v)?).filter(|d| !d.is_zero()),
                };
            }
            F::Ratio(get) => {
                *get(c) = number(value, |f: &f64| *f > 0.0 && *f <= 1.0).ok_or_else(|| {
                    format!("invalid ratio {value:?} (expected a number in (0, 1], e.g. 0.1)")
                })?;
            }
            F::Positive(get) => {
                *get(c) = number(value, |f: &f64| f.is_finite() && *f > 0.0)
                    .ok_or_else(|| format!("invalid number {value:?} (expected a number > 0)"))?;
            }
            F::Endpoint(get) => {
                let v = value.trim();
                if !(v.is_empty() || v.starts_with("http://") || v.starts_with("https://")) {
                    return Err(format!(
                        "invalid endpoint {v:?} (expected empty or a URL like \
                         \"http://collector:4317\")"
                    ));
                }
                *get(c) = v.trim_end_matches('/').to_string();
            }
            F::Secret(get) => *get(c) = value.trim().to_string(),
            F::Headers(get) => *get(c) = parse_headers(value)?,
            F::Protocol(get) => *get(c) = choose("protocol", value, PROTOCOLS)?,
            F::Stuck(get) => *get(c) = choose("policy", value, STUCK_POLICIES)?,
            F::Compression(get) => *get(c) = choose("compression", value, COMPRESSIONS)?,
            F::File(get) => {
                *get(c) = Some(value.trim())
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from);
            }
        }
        Ok(())
    }

    /// The field of `c` as a TOML value; secrets are `"<redacted>"` unless empty.
    pub(crate) fn print(self, c: &mut Config) -> String {
        let redacted = |empty: bool| if empty { "\"\"" } else { "\"<redacted>\"" }.to_string();
        match self {
            F::Addr(get) => format!("\"{}\"", get(c)),
            F::Count(get) => get(c).to_string(),
            F::Duration { get, .. } => format!("\"{}\"", format_duration(*get(c))),
            F::OptDuration(get) => format!("\"{}\"", get(c).map_or("off".into(), format_duration)),
            F::Ratio(get) | F::Positive(get) => get(c).to_string(),
            F::Endpoint(get) => toml::Value::String(get(c).clone()).to_string(),
            F::Secret(get) => redacted(get(c).is_empty()),
            F::Headers(get) => redacted(get(c).is_empty()),
            F::Protocol(get) => format!("\"{}\"", name_of(PROTOCOLS, get(c))),
            F::Stuck(get) => format!("\"{}\"", name_of(STUCK_POLICIES, get(c))),
            F::Compression(get) => format!("\"{}\"", name_of(COMPRESSIONS, get(c))),
            F::File(get) => toml::Value::String(
                get(c)
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string()),
            )
            .to_string(),
        }
    }
}

/// The README's key table (`| key | env | default | meaning |`), rendered from the key table.
pub fn key_table_markdown() -> String {
    let mut out = String::from("| key | env | default | meaning |\n|---|---|---|---|\n");
    for k in TABLE {
        let default = match (k.default, k.note) {
            ("", "") => "empty".to_string(),
            ("", note) => format!("empty {note}"),
            (d, "") => format!("`{d}`"),
            (d, note) => format!("`{d}` {note}"),
        };
        let _ = writeln!(
            out,
            "| `{}` | `{}` | {default} | {} |",
            k.name,
            env_var_name(k.name),
            k.help
        );
    }
    out
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
    fn table_rows_are_unique_with_contiguous_sections_and_valid_defaults() {
        let mut seen: Vec<&str> = Vec::new();
        let mut sections: Vec<&str> = Vec::new();
        for key in TABLE {
            assert!(!seen.contains(&key.name), "{} twice", key.name);
            seen.push(key.name);
            let (section, name) = key.name.split_once('.').expect("section.key");
            assert!(!name.is_empty() && !name.contains('.'), "{}", key.name);
            if sections.last() != Some(&section) {
                assert!(!sections.contains(&section), "{section} split in the table");
                sections.push(section);
            }
            let mut c = Config::blank();
            key.field.parse(&mut c, key.default).expect(key.name);
            assert!(
                !key.help.is_empty() && !key.help.contains('\n'),
                "{}",
                key.name
            );
        }
        assert_eq!(seen, KEYS);
    }
}
