//! The agent's upstream exporter over TLS and mTLS, against a real OTLP receiver: a Python
//! server (grpcio + opentelemetry-proto over gRPC, `http.server` + `ssl` over HTTP;
//! `agent/tests/peers/otlp_tls_server.py`, installed by `scripts/peers.d/35-python-otlp.sh`)
//! with a CA, server and client certificate made here with the openssl CLI. Rotel has no TLS
//! receiver. A missing peer fails the test, it is never skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{eventually, gauge, request};
use loopwatch_agent::config::Config;
use loopwatch_e2e::{Agent, Proc, TempDir, http_post, install_peer};
use prost::Message;

/// Runs `openssl ARGS` in `dir`; panics with its stderr when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (Debian `openssl`)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`), a server leaf for IP 127.0.0.1 (`server.pem`/`.key`) and a client leaf
/// (`client.pem`/`.key`), all signed by the CA, in `dir`.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=loopwatch test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ][..],
        ]
        .concat(),
    );
    for (name, usage, san) in [
        ("server", "serverAuth", "subjectAltName=IP:127.0.0.1\n"),
        ("client", "clientAuth", ""),
    ] {
        let ext = format!("basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n{san}");
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write ext file");
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let subj = format!("/CN=loopwatch test {name}");
        openssl(
            dir,
            &[
                &["req"][..],
                &ec[..],
                &["-keyout", &key, "-out", &csr, "-subj", &subj][..],
            ]
            .concat(),
        );
        let ext_file = format!("{name}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext_file,
            ],
        );
    }
}

/// The Python OTLP/TLS server; requires client certificates when `mtls`.
struct Receiver {
    _proc: Proc,
    grpc: u16,
    http: u16,
    out: PathBuf,
}

impl Receiver {
    fn start(dir: &Path, mtls: bool) -> Receiver {
        let python = install_peer("35-python-otlp.sh");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/otlp_tls_server.py");
        let out = dir.join(if mtls { "mtls.jsonl" } else { "tls.jsonl" });
        let mut cmd = Command::new(&python);
        cmd.arg(script)
            .arg(dir.join("server.pem"))
            .arg(dir.join("server.key"))
            .arg(&out);
        if mtls {
            cmd.arg(dir.join("ca.pem"));
        }
        let proc = Proc::spawn("otlp-tls-server", cmd, "ready ");
        let port = |key: &str| -> u16 {
            proc.ready_line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no {key}= in `{}`", proc.ready_line))
        };
        let (grpc, http) = (port("grpc"), port("http"));
        Receiver {
            _proc: proc,
            grpc,
            http,
            out,
        }
    }

    /// The exports received for `service`: (transport, headers).
    fn received(&self, service: &str) -> Vec<(String, serde_json::Value)> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["services"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|n| n == service))
            })
            .map(|v| {
                (
                    v["transport"].as_str().unwrap_or("").to_string(),
                    v["headers"].clone(),
                )
            })
            .collect()
    }
}

/// An agent exporting to `endpoint` with `protocol` and the extra `--set` values; it has
/// received one export from `service`.
fn agent_exporting(endpoint: &str, protocol: &str, sets: &[String], service: &str) -> Agent {
    let mut args: Vec<String> = [
        format!("exporter.endpoint={endpoint}"),
        format!("exporter.protocol={protocol}"),
        "exporter.interval=200ms".into(),
        "exporter.timeout=5s".into(),
        "exporter.headers=authorization=Bearer%20tls-tok,x-tenant=acme".into(),
    ]
    .into_iter()
    .chain(sets.iter().cloned())
    .flat_map(|s| ["--set".to_string(), s])
    .collect();
    args.extend(["--set".into(), "shutdown.grace=0s".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&args);
    let body = request(service, "i1", vec![gauge("tls.probe", "1", 1.0, &[])]).encode_to_vec();
    let (code, text) = http_post(
        &format!("{}/v1/metrics", agent.http),
        "application/x-protobuf",
        None,
        body,
    );
    assert_eq!(code, 200, "{text}");
    agent
}

/// Waits (bounded) until `receiver` has an export of `service`; returns its headers.
fn wait_received(receiver: &Receiver, service: &str, transport: &str) -> serde_json::Value {
    let mut got = Vec::new();
    let arrived = eventually(Duration::from_secs(30), || {
        got = receiver.received(service);
        !got.is_empty()
    });
    assert!(arrived, "{service}: nothing reached the TLS receiver");
    assert_eq!(got[0].0, transport, "{got:?}");
    got[0].1.clone()
}

fn file(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// Over gRPC and HTTP: the system roots do not trust the test CA; `exporter.tls_ca_file` does,
/// and the export arrives with `exporter.headers`.
#[test]
fn tls_export_carries_headers_over_grpc_and_http() {
    let dir = TempDir::new("exporter-tls");
    make_certs(&dir.path);
    let receiver = Receiver::start(&dir.path, false);
    let ca = vec![format!(
        "exporter.tls_ca_file={}",
        file(&dir.path, "ca.pem")
    )];
    for (protocol, port, transport) in [
        ("grpc", receiver.grpc, "grpc"),
        ("http/protobuf", receiver.http, "http"),
    ] {
        let endpoint = format!("https://127.0.0.1:{port}");
        // On the system roots alone the test CA is unknown: the server is not trusted.
        let untrusting = format!("roots-{transport}");
        let agent = agent_exporting(&endpoint, protocol, &[], &untrusting);
        let failed = eventually(Duration::from_secs(30), || {
            agent.counter("loopwatch_agent_export_errors_total", "") >= 1.0
        });
        assert!(
            failed,
            "{transport}: no failed export counted on system roots"
        );
        assert!(receiver.received(&untrusting).is_empty(), "{transport}");
        drop(agent);

        let service = format!("tls-{transport}");
        let agent = agent_exporting(&endpoint, protocol, &ca, &service);
        let headers = wait_received(&receiver, &service, transport);
        assert_eq!(headers["authorization"], "Bearer tls-tok", "{headers}");
        assert_eq!(headers["x-tenant"], "acme", "{headers}");
        drop(agent);
    }
}

#[test]
fn mtls_refuses_an_agent_without_a_client_cert_and_accepts_one_with() {
    let dir = TempDir::new("exporter-mtls");
    make_certs(&dir.path);
    let receiver = Receiver::start(&dir.path, true);
    let ca = format!("exporter.tls_ca_file={}", file(&dir.path, "ca.pem"));
    let identity = [
        ca.clone(),
        format!("exporter.tls_cert_file={}", file(&dir.path, "client.pem")),
        format!("exporter.tls_key_file={}", file(&dir.path, "client.key")),
    ];
    for (protocol, port, transport) in [
        ("grpc", receiver.grpc, "grpc"),
        ("http/protobuf", receiver.http, "http"),
    ] {
        let endpoint = format!("https://127.0.0.1:{port}");
        let anonymous = format!("anon-{transport}");
        let agent = agent_exporting(&endpoint, protocol, std::slice::from_ref(&ca), &anonymous);
        let failed = eventually(Duration::from_secs(30), || {
            agent.counter("loopwatch_agent_export_errors_total", "") >= 1.0
        });
        assert!(
            failed,
            "{transport}: no failed export counted without a client cert"
        );
        assert!(
            receiver.received(&anonymous).is_empty(),
            "{transport}: the mTLS receiver accepted an agent without a client cert"
        );
        drop(agent);

        let service = format!("mtls-{transport}");
        let agent = agent_exporting(&endpoint, protocol, &identity, &service);
        let headers = wait_received(&receiver, &service, transport);
        assert_eq!(headers["x-tenant"], "acme", "{headers}");
        assert_eq!(
            agent.counter("loopwatch_agent_export_errors_total", ""),
            0.0
        );
    }
}

#[test]
fn tls_files_are_checked_at_startup_naming_the_key() {
    let dir = TempDir::new("exporter-tls-config");
    std::fs::write(dir.path.join("junk.pem"), "not a certificate\n").expect("write");
    let junk = file(&dir.path, "junk.pem");
    let missing = file(&dir.path, "missing.pem");
    let https = ("exporter.endpoint", "https://127.0.0.1:4317");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[https, ("exporter.tls_ca_file", &missing)],
            "exporter.tls_ca_file",
        ),
        (
            &[https, ("exporter.tls_ca_file", &junk)],
            "exporter.tls_ca_file",
        ),
        (
            &[https, ("exporter.tls_cert_file", &junk)],
            "exporter.tls_key_file",
        ),
        (
            &[https, ("exporter.tls_key_file", &junk)],
            "exporter.tls_cert_file",
        ),
        (
            &[
                https,
                ("exporter.tls_cert_file", &junk),
                ("exporter.tls_key_file", &junk),
            ],
            "exporter.tls_cert_file",
        ),
        (
            &[
                ("exporter.endpoint", "http://127.0.0.1:4317"),
                ("exporter.tls_ca_file", &junk),
            ],
            "exporter.tls_ca_file",
        ),
    ];
    for (sets, key) in cases {
        let mut b = Config::builder();
        for (k, v) in *sets {
            b = b.set(k, v).expect("parses");
        }
        let e = b.build().expect_err("invalid TLS settings").to_string();
        assert!(e.starts_with(key), "{sets:?}: {e}");
    }
    // The binary refuses to start: exit code 2, the key on stderr.
    let out = Command::new(env!("CARGO_BIN_EXE_loopwatch-agent"))
        .args(["--set", "exporter.endpoint=https://127.0.0.1:4317"])
        .args([
            "--set",
            &format!("exporter.tls_ca_file={missing}"),
            "--print-config",
        ])
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("exporter.tls_ca_file"), "{stderr}");
}
