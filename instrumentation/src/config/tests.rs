//! Unit tests of the resolution: precedence, defaults and errors naming the variable.

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
    assert_eq!(s.endpoint, LoopwatchBuilder::DEFAULT_GRPC_ENDPOINT);
    assert_eq!(s.protocol, Protocol::Grpc);
    assert_eq!(s.export_interval, LoopwatchBuilder::DEFAULT_EXPORT_INTERVAL);
    assert_eq!(s.probe_interval, LoopwatchBuilder::DEFAULT_PROBE_INTERVAL);
    assert_eq!(s.stall_threshold, LoopwatchBuilder::DEFAULT_STALL_THRESHOLD);
    assert_eq!(s.stuck_threshold, LoopwatchBuilder::DEFAULT_STUCK_THRESHOLD);
    assert_eq!(s.heap_window, LoopwatchBuilder::DEFAULT_HEAP_WINDOW);
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
    let s =
        resolve_with(Loopwatch::builder().protocol(Protocol::HttpProtobuf), &[]).expect("resolves");
    assert_eq!(s.endpoint, LoopwatchBuilder::DEFAULT_HTTP_ENDPOINT);
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
    // Builder values out of range: the error names the key.
    let out_of_range = [
        (
            "probe_interval",
            Loopwatch::builder().probe_interval(Duration::ZERO),
        ),
        (
            "stuck_threshold",
            Loopwatch::builder().stuck_threshold(Duration::from_micros(500)),
        ),
        (
            "heap_window",
            Loopwatch::builder().heap_window(Duration::from_millis(99)),
        ),
    ];
    for (key, builder) in out_of_range {
        let err = resolve_with(builder, &[]).expect_err(key);
        assert!(err.to_string().starts_with(&format!("{key}:")), "{err}");
    }
}

/// The table of `env.md` (in the crate docs) is in the repository README verbatim, and
/// names every variable the crate reads.
#[test]
fn documented_variables_agree_and_are_complete() {
    let table = include_str!("../env.md");
    let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(readme).expect("the repository README");
    assert!(
        readme.contains(table),
        "README.md must hold instrumentation/src/env.md verbatim"
    );
    for var in env::ALL {
        assert!(
            table.contains(&format!("`{var}`")),
            "{var} is not documented"
        );
    }
}

#[test]
fn export_timeout_builder_beats_metrics_env_beats_env_beats_default() {
    let timeout =
        |b: LoopwatchBuilder, v: &[(&str, &str)]| resolve_with(b, v).map(|s| s.export_timeout);
    assert_eq!(
        timeout(Loopwatch::builder(), &[]).expect("default"),
        LoopwatchBuilder::DEFAULT_EXPORT_TIMEOUT
    );
    let generic = [("OTEL_EXPORTER_OTLP_TIMEOUT", "750")];
    assert_eq!(
        timeout(Loopwatch::builder(), &generic).expect("generic"),
        Duration::from_millis(750)
    );
    let both = [
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "750"),
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", " 1500 "),
    ];
    assert_eq!(
        timeout(Loopwatch::builder(), &both).expect("metrics form"),
        Duration::from_millis(1500)
    );
    let b = Loopwatch::builder().export_timeout(Duration::from_secs(7));
    assert_eq!(timeout(b, &both).expect("builder"), Duration::from_secs(7));
    // A bad value is an error naming its variable, also when the other form is fine.
    for (var, bad) in [
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "-5"),
    ] {
        let err = timeout(Loopwatch::builder(), &[(var, bad)]).expect_err(bad);
        assert_eq!(
            err.to_string(),
            format!("{var}: {bad:?} is not a whole number of milliseconds (> 0)")
        );
    }
    let err = timeout(
        Loopwatch::builder(),
        &[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "750"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "soon"),
        ],
    )
    .expect_err("metrics form is read first");
    assert!(
        err.to_string()
            .starts_with("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT:"),
        "{err}"
    );
}

#[test]
fn compression_is_gzip_or_none_and_the_metrics_form_wins() {
    let gzip = |v: &[(&str, &str)]| resolve_with(Loopwatch::builder(), v).map(|s| s.gzip);
    assert!(!gzip(&[]).expect("default none"));
    assert!(gzip(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")]).expect("gzip"));
    assert!(gzip(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "GZIP")]).expect("any case"));
    assert!(!gzip(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "none")]).expect("none"));
    let both = [
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none"),
    ];
    assert!(!gzip(&both).expect("metrics none wins"));
    let both = [
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
        ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "gzip"),
    ];
    assert!(gzip(&both).expect("metrics gzip wins"));
    for (var, bad) in [
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
        ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "gzip "),
    ] {
        let err = gzip(&[(var, bad)]).expect_err(bad);
        assert_eq!(
            err.to_string(),
            format!("{var}: {bad:?} is not a supported compression (gzip | none)")
        );
    }
}

#[test]
fn certificate_variables_apply_to_https_and_the_metrics_form_wins() {
    let tls = |v: &[(&str, &str)]| resolve_with(Loopwatch::builder(), v).map(|s| s.tls);
    let https = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317");
    let files = tls(&[
        https,
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/generic/ca.pem"),
        ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "/metrics/ca.pem"),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/c.pem"),
        ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", "/k.pem"),
    ])
    .expect("resolves");
    assert_eq!(
        files,
        TlsFiles {
            ca: Some((
                "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
                "/metrics/ca.pem".into()
            )),
            cert: Some(("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/c.pem".into())),
            key: Some(("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", "/k.pem".into())),
        }
    );
    // Generic forms are ignored for an http:// endpoint (other exporters may use them) ...
    let files = tls(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem")]).expect("ignored");
    assert_eq!(files, TlsFiles::default());
    // ... a _METRICS_ form there is an error, as is half a client identity.
    let err =
        tls(&[("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "/ca.pem")]).expect_err("http endpoint");
    assert!(
        err.to_string()
            .starts_with("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE:"),
        "{err}"
    );
    let err =
        tls(&[https, ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/c.pem")]).expect_err("no key");
    assert!(
        err.to_string()
            .starts_with("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE:")
            && err.to_string().contains("OTEL_EXPORTER_OTLP_CLIENT_KEY"),
        "{err}"
    );
    let err = tls(&[https, ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/k.pem")]).expect_err("no cert");
    assert!(
        err.to_string()
            .starts_with("OTEL_EXPORTER_OTLP_CLIENT_KEY:"),
        "{err}"
    );
}

#[test]
fn stall_stacks_builder_beats_env_beats_on() {
    let on = |b: LoopwatchBuilder, v: &[(&str, &str)]| resolve_with(b, v).map(|s| s.stall_stacks);
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
