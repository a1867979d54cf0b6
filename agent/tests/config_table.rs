//! The config key table is the one definition of every key: the README's key table and
//! example file are what it renders, the module doc does not repeat it, and every key
//! round-trips through `--print-config` output.

use std::path::Path;

use loopwatch_agent::config::{Config, KEYS, env_var_name, key_table_markdown};

const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
const CONFIG_DOC: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/config/mod.rs"));

/// The README block that starts with the line `first` and ends before the line `end`
/// (`end` is searched after `first`).
fn readme_block(first: &str, end: &str) -> &'static str {
    let start = README
        .find(first)
        .unwrap_or_else(|| panic!("README.md has no {first:?}"));
    let len = README[start..]
        .find(end)
        .unwrap_or_else(|| panic!("README.md: no {end:?} after {first:?}"));
    &README[start..start + len]
}

#[test]
fn readme_key_table_is_the_rendered_table() {
    let table = readme_block("| key | env | default | meaning |\n", "\n\n");
    let rendered = key_table_markdown();
    assert!(
        format!("{table}\n") == rendered,
        "README.md's key table differs from config::key_table_markdown(); replace it with:\n\n{rendered}"
    );
    for key in KEYS {
        assert!(
            table.contains(&format!("| `{key}` | `{}` |", env_var_name(key))),
            "{key}"
        );
    }
}

#[test]
fn readme_example_file_is_the_default_print_config() {
    let block = readme_block("Example file", "```\n\n");
    let toml = block
        .split_once("```toml\n")
        .map(|(_, t)| t)
        .expect("a ```toml block after \"Example file\"");
    assert_eq!(toml, Config::default().to_toml());
}

#[test]
fn module_doc_points_to_the_readme_instead_of_repeating_the_table() {
    let doc: String = CONFIG_DOC
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!doc.contains("| key |"), "{doc}");
    for key in KEYS {
        assert!(
            !doc.contains(&format!("`{key}` |")),
            "{key} in the module doc"
        );
    }
    assert!(doc.contains("README"), "{doc}");
}

/// A value other than the default for every key.
const SAMPLES: &[(&str, &str)] = &[
    ("receiver.grpc_listen", "127.0.0.2:14317"),
    ("receiver.http_listen", "[::1]:14318"),
    ("receiver.max_body_bytes", "1234567"),
    ("receiver.max_services", "7"),
    ("receiver.max_series_per_service", "77"),
    ("receiver.max_connections", "9"),
    ("receiver.handshake_timeout", "1.5s"),
    ("receiver.idle_timeout", "2m"),
    ("admin.listen", "127.0.0.1:19464"),
    ("admin.max_connections", "3"),
    ("health.lag_enter", "400ms"),
    ("health.lag_leave", "150ms"),
    ("health.hold", "4s"),
    ("health.stale_after", "6s"),
    ("health.target_lag", "120ms"),
    ("health.target_utilization", "0.75"),
    ("health.error_ratio_enter", "0.2"),
    ("health.error_ratio_leave", "0.15"),
    ("health.error_window", "45s"),
    ("health.error_min_requests", "20"),
    ("health.error_hold", "12s"),
    ("health.heap_growth_enter", "2048.5"),
    ("health.heap_growth_leave", "1024"),
    ("health.heap_hold", "40s"),
    ("health.stuck_enter", "750ms"),
    ("health.stuck_workers", "unready"),
    ("health.liveness_stall", "8s"),
    ("drain.timeout", "5s"),
    ("drain.max_timeout", "50s"),
    ("drain.token", "s3cret"),
    ("shutdown.grace", "3s"),
    ("exporter.endpoint", "https://collector:4318/"),
    ("exporter.protocol", "http/protobuf"),
    ("exporter.interval", "2s"),
    ("exporter.timeout", "3s"),
    ("exporter.queue_size", "64"),
    ("exporter.max_retry_time", "90s"),
    ("exporter.headers", "authorization=Bearer%20x,x-tenant=a"),
    ("exporter.compression", "gzip"),
    ("exporter.tls_ca_file", "/etc/loopwatch/ca.pem"),
    ("exporter.tls_cert_file", "/etc/loopwatch/client.pem"),
    ("exporter.tls_key_file", "/etc/loopwatch/client.key"),
];

#[test]
fn every_key_round_trips_through_print_config() {
    let sampled: Vec<&str> = SAMPLES.iter().map(|(k, _)| *k).collect();
    assert_eq!(sampled, KEYS, "one sample per key, in table order");

    // Defaults.
    let default = Config::default();
    let mut again = Config::default();
    again
        .apply_toml(&default.to_toml(), Path::new("default.toml"))
        .unwrap();
    assert_eq!(again, default);

    // Every key set to something else.
    let mut config = Config::default();
    for (k, v) in SAMPLES {
        config.set(k, v, None).unwrap();
    }
    config.validate().unwrap();
    for (key, value) in SAMPLES {
        let mut one = Config::default();
        one.set(key, value, None).unwrap();
        assert_ne!(one, Config::default(), "{key}: the sample is the default");
    }
    let printed = config.to_toml();
    assert!(printed.contains("token = \"<redacted>\""), "{printed}");
    assert!(printed.contains("headers = \"<redacted>\""), "{printed}");
    assert!(
        !printed.contains("s3cret") && !printed.contains("Bearer"),
        "{printed}"
    );

    // Secrets are printed redacted: they are the exception.
    let unredacted = printed
        .replace("token = \"<redacted>\"", "token = \"\"")
        .replace("headers = \"<redacted>\"", "headers = \"\"");
    let mut parsed = Config::default();
    parsed
        .apply_toml(&unredacted, Path::new("printed.toml"))
        .unwrap();
    let mut expected = config.clone();
    expected.drain.token.clear();
    expected.exporter.headers.clear();
    assert_eq!(parsed, expected, "{printed}");
}
