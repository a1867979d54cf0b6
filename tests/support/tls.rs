//! TLS peers shared by the agent's and the crate's TLS tests: a test CA with server and client
//! certificates made with the openssl CLI, and the Python OTLP receiver behind TLS/mTLS
//! (`agent/tests/peers/otlp_tls_server.py`, installed by `scripts/peers.d/35-python-otlp.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Proc, install_peer, repo_root};

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
pub fn make_certs(dir: &Path) {
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
pub struct Receiver {
    _proc: Proc,
    /// The gRPC port.
    pub grpc: u16,
    /// The HTTP port.
    pub http: u16,
    out: PathBuf,
}

impl Receiver {
    /// Starts the receiver on the certificates of [`make_certs`] in `dir`.
    pub fn start(dir: &Path, mtls: bool) -> Receiver {
        let python = install_peer("35-python-otlp.sh");
        let script = repo_root().join("agent/tests/peers/otlp_tls_server.py");
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

    /// The metrics exports received for `service`: (transport, headers).
    pub fn received(&self, service: &str) -> Vec<(String, serde_json::Value)> {
        self.received_signal(service, "metrics")
    }

    /// The trace exports received for `service`: (transport, headers).
    pub fn received_traces(&self, service: &str) -> Vec<(String, serde_json::Value)> {
        self.received_signal(service, "traces")
    }

    /// The log exports received for `service`: (transport, event names of their records).
    pub fn received_logs(&self, service: &str) -> Vec<(String, serde_json::Value)> {
        self.exports(service, "logs")
            .into_iter()
            .map(|v| {
                (
                    v["transport"].as_str().unwrap_or("").to_string(),
                    v["events"].clone(),
                )
            })
            .collect()
    }

    fn received_signal(&self, service: &str, signal: &str) -> Vec<(String, serde_json::Value)> {
        self.exports(service, signal)
            .into_iter()
            .map(|v| {
                (
                    v["transport"].as_str().unwrap_or("").to_string(),
                    v["headers"].clone(),
                )
            })
            .collect()
    }

    /// Every export of `signal` received for `service`, as recorded.
    fn exports(&self, service: &str, signal: &str) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["signal"] == signal
                    && v["services"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|n| n == service))
            })
            .collect()
    }
}
