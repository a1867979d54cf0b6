//! `POST /drain` (readiness 503 while draining, waits for `http.server.active_requests` to
//! reach 0 or the deadline, auth, 405/400) and the sidecar SIGTERM lifecycle on the real
//! binary with real signals: it keeps receiving until the service's final export
//! (`loopwatch.lifecycle.state` = 2) or the grace passes, flushes upstream, exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use loopwatch_agent::config::{Config, ExportProtocol};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    Metric, NumberDataPoint, Sum, metric, number_data_point,
};

/// `http.server.active_requests` (UpDownCounter, cumulative) with one point per route.
fn active(service: &str, per_route: &[(&str, i64)]) -> ExportMetricsServiceRequest {
    request(
        service,
        "",
        vec![Metric {
            name: "http.server.active_requests".into(),
            unit: "{request}".into(),
            data: Some(metric::Data::Sum(Sum {
                data_points: per_route
                    .iter()
                    .map(|(route, n)| NumberDataPoint {
                        attributes: vec![kv("http.route", route)],
                        value: Some(number_data_point::Value::AsInt(*n)),
                        ..Default::default()
                    })
                    .collect(),
                aggregation_temporality: 2,
                is_monotonic: false,
            })),
            ..Default::default()
        }],
    )
}

fn post_drain(agent: &TestAgent, query: &str) -> (u16, serde_json::Value) {
    let resp = client()
        .post(agent.admin(&format!("/drain{query}")))
        .send()
        .expect("POST /drain");
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn drain_waits_for_zero_active_requests() {
    let agent = TestAgent::start(Config::builder().stale_after(Duration::from_secs(600)));
    assert_eq!(
        agent.post_metrics(&active("web", &[("/a", 2), ("/b", 1)])),
        200
    );
    assert_eq!(agent.get("/readyz").0, 200);

    std::thread::scope(|s| {
        let drain = s.spawn(|| post_drain(&agent, "?timeout=60s"));
        // While the drain waits: readiness is 503 with reason "draining".
        assert!(eventually(Duration::from_secs(30), || {
            let (code, body) = agent.get_json("/readyz");
            code == 503
                && body["reasons"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| x["reason"] == "draining"))
        }));
        assert!(
            !drain.is_finished(),
            "drain answered while 3 requests were active"
        );
        assert_eq!(
            agent.post_metrics(&active("web", &[("/a", 0), ("/b", 1)])),
            200
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !drain.is_finished(),
            "drain answered while 1 request was active"
        );
        assert_eq!(
            agent.post_metrics(&active("web", &[("/a", 0), ("/b", 0)])),
            200
        );
        let (code, body) = drain.join().expect("drain thread");
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["drained"], true, "{body}");
        assert_eq!(body["active_requests"], 0, "{body}");
        assert_eq!(body["timeout_seconds"], 60.0, "{body}");
        assert_eq!(body["services"][0]["service"], "web", "{body}");
        assert_eq!(body["services"][0]["active_requests"], 0, "{body}");
        assert!(
            body["waited_seconds"].as_f64().is_some_and(|w| w >= 0.0),
            "{body}"
        );
    });
    // Draining is sticky; the status says so.
    let (code, body) = agent.get_json("/readyz");
    assert_eq!(code, 503, "{body}");
    assert_eq!(agent.get_json("/v1/status").1["draining"], true);
    let (_, text) = agent.get("/metrics");
    assert!(
        text.lines().any(|l| l == "loopwatch_agent_draining 1"),
        "{text}"
    );
}

/// A count of 0 from before the drain began may be one export interval old: the drain waits
/// for the service's next export, which here reports a request that started since.
#[test]
fn drain_waits_for_an_export_from_after_it_began() {
    let agent = TestAgent::start(Config::builder().stale_after(Duration::from_secs(600)));
    assert_eq!(agent.post_metrics(&active("web", &[("/a", 0)])), 200);
    std::thread::scope(|s| {
        let drain = s.spawn(|| post_drain(&agent, "?timeout=60s"));
        assert!(eventually(Duration::from_secs(30), || {
            agent.get_json("/v1/status").1["draining"] == true
        }));
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !drain.is_finished(),
            "drain answered on a count from before it began"
        );
        assert_eq!(agent.post_metrics(&active("web", &[("/a", 1)])), 200);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !drain.is_finished(),
            "drain answered while 1 request was active"
        );
        assert_eq!(agent.post_metrics(&active("web", &[("/a", 0)])), 200);
        let (code, body) = drain.join().expect("drain thread");
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["drained"], true, "{body}");
        assert!(
            body["waited_seconds"].as_f64().is_some_and(|w| w >= 0.6),
            "{body}"
        );
    });
}

#[test]
fn drain_deadline_method_and_bad_timeout() {
    let agent = TestAgent::start(
        Config::builder()
            .stale_after(Duration::from_secs(600))
            .drain_timeout(Duration::from_millis(100))
            .drain_max_timeout(Duration::from_millis(300)),
    );
    assert_eq!(agent.post_metrics(&active("web", &[("/a", 4)])), 200);
    // GET is refused.
    assert_eq!(agent.get("/drain").0, 405);
    // Unparseable timeout.
    assert_eq!(post_drain(&agent, "?timeout=soon").0, 400);
    // A 60 s request is capped at drain.max_timeout = 300 ms; requests stay active.
    let (code, body) = post_drain(&agent, "?timeout=60s");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["drained"], false, "{body}");
    assert_eq!(body["active_requests"], 4, "{body}");
    assert_eq!(body["timeout_seconds"], 0.3, "{body}");
    assert!(
        body["waited_seconds"].as_f64().is_some_and(|w| w >= 0.3),
        "{body}"
    );
}

#[test]
fn drain_with_no_services_answers_at_once_and_without_auth_refuses_remote_peers() {
    let agent = TestAgent::start(Config::builder());
    let (code, body) = post_drain(&agent, "");
    assert_eq!(code, 200);
    assert_eq!(body["drained"], true, "{body}");
    assert_eq!(body["services"], serde_json::json!([]));
    let (code, body) = agent.get_json("/readyz");
    assert_eq!(code, 503);
    assert_eq!(body["reasons"][0]["state"], "draining", "{body}");

    // Remote peers (not reachable on loopback, so the check itself is exercised).
    use axum::http::{HeaderMap, HeaderValue, header};
    let remote: SocketAddr = "10.1.2.3:5555".parse().expect("addr");
    let open = loopwatch_agent::testing::AgentState::new(Config::default());
    let refused = loopwatch_agent::testing::authorize(&open, &remote, &HeaderMap::new());
    assert_eq!(refused.expect_err("no token: refused").status(), 403);
    let local: SocketAddr = "127.0.0.1:5555".parse().expect("addr");
    assert!(loopwatch_agent::testing::authorize(&open, &local, &HeaderMap::new()).is_ok());
    let with_token = loopwatch_agent::testing::AgentState::new(
        Config::builder()
            .drain_token("s3cret")
            .build()
            .expect("config"),
    );
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer wrong"),
    );
    let r = loopwatch_agent::testing::authorize(&with_token, &remote, &h);
    assert_eq!(r.expect_err("wrong token").status(), 401);
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer s3cret"),
    );
    assert!(loopwatch_agent::testing::authorize(&with_token, &remote, &h).is_ok());
}

const BIN: &str = env!("CARGO_BIN_EXE_loopwatch-agent");

struct Sidecar {
    child: Child,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sidecar(extra: &[&str]) -> Sidecar {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("LOOPWATCH_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("startup line");
    let find = |p: &str| -> SocketAddr {
        line.split(' ')
            .find_map(|x| x.trim().strip_prefix(p))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {p} in {line}"))
    };
    Sidecar {
        http: find("http="),
        admin: find("admin="),
        child,
    }
}

fn post_to(http: SocketAddr, req: &ExportMetricsServiceRequest) -> u16 {
    use prost::Message;
    client()
        .post(format!("http://{http}/v1/metrics"))
        .header("content-type", "application/x-protobuf")
        .body(req.encode_to_vec())
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn lifecycle(service: &str, state: f64, extra: f64) -> ExportMetricsServiceRequest {
    request(
        service,
        "pod-1",
        vec![
            gauge("loopwatch.lifecycle.state", "1", state, &[]),
            gauge("app.final.value", "1", extra, &[]),
        ],
    )
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

/// Waits for the exit (bounded); returns the exit code.
fn wait_exit(child: &mut Child, bound: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < bound {
        if let Some(s) = child.try_wait().expect("wait") {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn sigterm_waits_for_the_final_export_then_flushes_upstream_and_exits_0() {
    // The upstream is another agent (an OTLP/HTTP receiver with a status API).
    let upstream = TestAgent::start(Config::builder().stale_after(Duration::from_secs(600)));
    let endpoint = format!("http://{}", upstream.agent().http_addr);
    let mut sc = sidecar(&[
        "--set",
        &format!("exporter.endpoint={endpoint}"),
        "--set",
        "exporter.protocol=http/protobuf",
        "--set",
        "exporter.interval=10m",
        "--set",
        "shutdown.grace=60s",
        "--stale-after",
        "60s",
    ]);
    assert_eq!(post_to(sc.http, &lifecycle("app", 0.0, 1.0)), 200);
    sigterm(&sc.child);
    // Still running and still receiving after SIGTERM: the app has not sent state 2 yet.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        sc.child.try_wait().expect("wait").is_none(),
        "exited before the final export"
    );
    assert_eq!(
        post_to(sc.http, &lifecycle("app", 1.0, 2.0)),
        200,
        "receiving after SIGTERM"
    );
    let (code, body) = {
        let r = client()
            .get(format!("http://{}/readyz", sc.admin))
            .send()
            .expect("readyz");
        (r.status().as_u16(), r.text().unwrap_or_default())
    };
    assert_eq!(code, 503, "service reports draining: {body}");
    assert!(sc.child.try_wait().expect("wait").is_none());
    // The final export: state 2 and the last value.
    assert_eq!(post_to(sc.http, &lifecycle("app", 2.0, 42.0)), 200);
    let code = wait_exit(&mut sc.child, Duration::from_secs(30));
    assert_eq!(code, Some(0), "exit code after the final export");
    // Flushed upstream before exiting: the final value and the lifecycle state arrived.
    let st = status_of(&upstream, "app", "pod-1").expect("app forwarded upstream");
    assert_eq!(st["lifecycle"], "stopped", "{st}");
    let (_, text) = upstream.get("/metrics");
    assert!(
        text.lines()
            .any(|l| l.starts_with("app_final_value_ratio{") && l.ends_with(" 42")),
        "{text}"
    );
}

#[test]
fn sigterm_without_final_export_exits_0_after_grace() {
    let mut sc = sidecar(&["--set", "shutdown.grace=1s", "--stale-after", "60s"]);
    assert_eq!(post_to(sc.http, &lifecycle("slow", 0.0, 1.0)), 200);
    sigterm(&sc.child);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        sc.child.try_wait().expect("wait").is_none(),
        "grace not honoured"
    );
    assert_eq!(wait_exit(&mut sc.child, Duration::from_secs(30)), Some(0));
}

#[test]
fn sigterm_with_a_service_that_never_sends_lifecycle_waits_until_it_goes_stale() {
    let mut sc = sidecar(&["--set", "shutdown.grace=60s", "--stale-after", "1s"]);
    assert_eq!(
        post_to(sc.http, &tokio_export("plain", "", 0.001, 0.0, 0.1)),
        200
    );
    sigterm(&sc.child);
    assert_eq!(wait_exit(&mut sc.child, Duration::from_secs(30)), Some(0));
}

#[test]
fn exporter_flush_uses_grpc_too() {
    // gRPC upstream: the in-process sidecar's shutdown flushes one merged batch.
    let upstream = TestAgent::start(Config::builder().stale_after(Duration::from_secs(600)));
    let agent = TestAgent::start(
        Config::builder()
            .exporter(upstream.grpc_endpoint(), ExportProtocol::Grpc)
            .exporter_interval(Duration::from_secs(600)),
    );
    assert_eq!(agent.post_metrics(&lifecycle("g", 2.0, 7.0)), 200);
    drop(agent);
    let st = status_of(&upstream, "g", "pod-1").expect("forwarded over gRPC");
    assert_eq!(st["lifecycle"], "stopped", "{st}");
}
