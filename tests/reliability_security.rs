//! Security defaults: receivers on loopback by default, the admin server read-only with size
//! and time limits, and no secrets (bearer tokens, API keys) in the agent's logs.

#[path = "reliability_common.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use loopwatch_e2e::{Agent, bin, client, host_port, raw_http};

#[test]
fn receivers_bind_loopback_by_default() {
    let out = Command::new(bin("loopwatch-agent"))
        .arg("--print-config")
        .env_clear()
        .output()
        .expect("run --print-config");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("grpc_listen = \"127.0.0.1:4317\""), "{text}");
    assert!(text.contains("http_listen = \"127.0.0.1:4318\""), "{text}");
}

#[test]
fn admin_is_read_only_and_limits_size_and_time() {
    let agent = Agent::start(&[]);
    let c = client();
    for path in [
        "/livez",
        "/readyz",
        "/metrics",
        "/v1/status",
        "/v1/pressure",
    ] {
        assert_eq!(
            c.get(format!("{}{path}", agent.admin))
                .send()
                .expect("get")
                .status()
                .as_u16(),
            200,
            "{path}"
        );
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let code = c
                .request(m, format!("{}{path}", agent.admin))
                .body("x")
                .send()
                .expect("send")
                .status()
                .as_u16();
            assert!(
                code == 405 || code == 404,
                "{method} {path} -> {code}: read-only"
            );
        }
    }
    // Size: a 1 MiB header block is refused (431) or the connection dropped, never served.
    let admin = host_port(&agent.admin);
    let (code, _) = raw_http(
        &admin,
        &format!(
            "GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: {}",
            "a".repeat(1024 * 1024)
        ),
        Vec::new(),
        Duration::from_secs(20),
    );
    assert!(
        code == 431 || code == 0 || code == 400,
        "oversized head -> {code}"
    );
    // Time: a header trickle on the admin port is cut by the header deadline.
    let mut s = TcpStream::connect(&admin).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(900))).ok();
    let _ = s.write_all(b"GET /livez HTTP/1.1\r\n");
    let start = Instant::now();
    let mut cut = false;
    while start.elapsed() < Duration::from_secs(25) {
        if s.write_all(b"X").is_err() {
            cut = true;
            break;
        }
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => {
                cut = true;
                break;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "admin header trickle not cut within 25 s");
    assert_eq!(agent.get("/livez").0, 200);
    assert!(agent.counter("loopwatch_agent_connections_timed_out_total", "") >= 1.0);
}

#[test]
fn secrets_never_reach_the_log() {
    const SECRET: &str = "s3cr3t-T0KEN-d0-not-log";
    let mut agent = Agent::start_with(&[], &[]);
    // Run a debug-level agent too: debug is what an operator turns on when troubleshooting.
    let debug = Agent::start_args(
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[("RUST_LOG", "debug")],
    );
    for a in [&agent, &debug] {
        let c = client();
        let good = pb(&tokio_export("secret-svc", 0.001, 0.0, 0.1));
        for (ct, body) in [
            (PB, good.clone()),
            (PB, vec![0xff; 16]),
            ("text/plain", b"x".to_vec()),
        ] {
            let _ = c
                .post(format!("{}/v1/metrics?token={SECRET}", a.http))
                .header("authorization", format!("Bearer {SECRET}"))
                .header("x-api-key", SECRET)
                .header("content-type", ct)
                .body(body)
                .send();
        }
        let _ = c
            .get(format!("{}/readyz?service={SECRET}", a.admin))
            .header("authorization", format!("Bearer {SECRET}"))
            .send();
        let _ = c
            .post(format!("{}/drain", a.admin))
            .header("authorization", format!("Bearer {SECRET}"))
            .send();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let endpoint = a.grpc.clone();
        rt.block_on(async {
            use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
            if let Ok(mut client) = MetricsServiceClient::connect(endpoint).await {
                let mut req = tonic::Request::new(tokio_export("secret-grpc", 0.001, 0.0, 0.1));
                if let Ok(v) = format!("Bearer {SECRET}").parse() {
                    req.metadata_mut().insert("authorization", v);
                }
                let _ = client.export(req).await;
            }
        });
    }
    // Let the logs flush, then stop the info agent gracefully so its shutdown lines are in.
    std::thread::sleep(Duration::from_millis(300));
    let _ = agent.proc.signal_and_wait("TERM", Duration::from_secs(10));
    for (what, log) in [
        ("info", agent.proc.log_text()),
        ("debug", debug.proc.log_text()),
    ] {
        assert!(
            !log.is_empty() || what == "info",
            "{what} agent logged something"
        );
        assert!(
            !log.contains(SECRET),
            "{what}-level agent log contains the secret:\n{log}"
        );
        assert!(
            !log.to_ascii_lowercase().contains("bearer"),
            "{what}-level log mentions a bearer header:\n{log}"
        );
    }
}
