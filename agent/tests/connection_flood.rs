//! A flood of idle connections against the agent binary: 20,000 across the gRPC, HTTP and
//! admin ports, or as many as this process's fd limit allows (the soft limit is raised to the
//! hard one first). Throughout: the agent's RSS stays under 64 MiB, an OTLP export over the
//! service's established connections (gRPC and HTTP) is answered within 1 s, `/readyz`
//! answers, and gRPC connections that never send the HTTP/2 preface are closed within
//! `receiver.handshake_timeout`. Afterwards the agent is as before: the same open
//! connections, and new connections on every port are served.
//!
//! Also: an HTTP/2 rapid-reset flood (streams opened and reset at once, bounded in count and
//! time) is cut by the server's pending-reset limit while legitimate exports keep flowing, and
//! an idle gRPC connection is closed after `receiver.idle_timeout`.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;

const BIN: &str = env!("CARGO_BIN_EXE_loopwatch-agent");
const HANDSHAKE: Duration = Duration::from_secs(2);
const RSS_CAP_KIB: u64 = 64 * 1024;
/// gRPC connections that never send a preface, timed individually.
const PROBES: usize = 40;

/// The tests of this file run one at a time: the flood takes nearly every fd this process
/// may open, and the other tests' timings would share the agent-side CPU with it.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Agent {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(extra: &[&str]) -> Agent {
    let mut child = Command::new(BIN)
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(extra)
        .args([
            "--set",
            &format!("receiver.handshake_timeout={}s", HANDSHAKE.as_secs()),
        ])
        .env_remove("LOOPWATCH_LOG")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("startup line");
    let addr = |p: &str| -> SocketAddr {
        line.split(' ')
            .find_map(|part| part.trim().strip_prefix(p))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {p} in {line}"))
    };
    Agent {
        grpc: addr("grpc="),
        http: addr("http="),
        admin: addr("admin="),
        child,
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Raises this process's soft fd limit to the hard one and returns the new soft limit.
fn raise_fd_limit() -> u64 {
    let pid = std::process::id().to_string();
    let out = Command::new("prlimit")
        .args([
            "--pid",
            &pid,
            "--nofile",
            "--output",
            "HARD",
            "--noheadings",
        ])
        .output()
        .expect("prlimit (util-linux) is needed to raise RLIMIT_NOFILE");
    let hard = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let set = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status()
        .expect("prlimit");
    assert!(set.success(), "cannot raise RLIMIT_NOFILE to {hard}");
    let limits = std::fs::read_to_string("/proc/self/limits").expect("limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("soft fd limit")
}

/// The value of an unlabelled-or-labelled sample line of `/metrics`.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

struct Service {
    rt: tokio::runtime::Runtime,
    grpc: MetricsServiceClient<tonic::transport::Channel>,
    http: reqwest::blocking::Client,
    agent_http: SocketAddr,
    agent_admin: SocketAddr,
}

impl Service {
    /// Connects like a service's exporter and the kubelet: one gRPC channel, one pooled
    /// HTTP connection per port, all established before the flood.
    fn connect(agent: &Agent) -> Service {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let grpc = rt
            .block_on(MetricsServiceClient::connect(format!(
                "http://{}",
                agent.grpc
            )))
            .expect("gRPC connect");
        let s = Service {
            rt,
            grpc,
            http: common::client(),
            agent_http: agent.http,
            agent_admin: agent.admin,
        };
        s.export_and_probe("warm-up");
        s
    }

    /// One gRPC export, one HTTP export and `/readyz`, each answered within 1 s.
    fn export_and_probe(&self, when: &str) -> Duration {
        let req = common::request("flooded", "i1", vec![common::gauge("g", "1", 1.0, &[])]);
        let start = Instant::now();
        let mut grpc = self.grpc.clone();
        let answered = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), grpc.export(req.clone())).await
        });
        let grpc_took = start.elapsed();
        assert!(
            matches!(answered, Ok(Ok(_))),
            "{when}: gRPC export not answered OK within 1 s: {answered:?}"
        );
        let start = Instant::now();
        let status = self
            .http
            .post(format!("http://{}/v1/metrics", self.agent_http))
            .header("content-type", "application/x-protobuf")
            .timeout(Duration::from_secs(1))
            .body(prost::Message::encode_to_vec(&req))
            .send()
            .unwrap_or_else(|e| panic!("{when}: HTTP export within 1 s: {e}"))
            .status();
        assert_eq!(status.as_u16(), 200, "{when}");
        let http_took = start.elapsed();
        let ready = self
            .http
            .get(format!("http://{}/readyz", self.agent_admin))
            .timeout(Duration::from_secs(1))
            .send()
            .unwrap_or_else(|e| panic!("{when}: /readyz within 1 s: {e}"));
        assert_eq!(ready.status().as_u16(), 200, "{when}");
        grpc_took.max(http_took)
    }

    fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.agent_admin))
            .send()
            .expect("/metrics")
            .text()
            .expect("body")
    }
}

/// Opens `PROBES` gRPC connections that never send a preface; returns how long after its
/// connect each one was closed by the agent (`None`: still open after the timeout + 1 s).
fn probe_preface_timeout(grpc: SocketAddr) -> std::thread::JoinHandle<Vec<Option<Duration>>> {
    let conns: Vec<(TcpStream, Instant)> = (0..PROBES)
        .map(|_| {
            let c = TcpStream::connect(grpc).expect("probe connect");
            (c, Instant::now())
        })
        .collect();
    std::thread::spawn(move || {
        conns
            .into_iter()
            .map(|(mut c, opened)| {
                let deadline = opened + HANDSHAKE + Duration::from_secs(1);
                let left = deadline.saturating_duration_since(Instant::now());
                c.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .expect("timeout");
                // The server's own SETTINGS frame arrives first; the close is the EOF.
                let mut buf = [0u8; 256];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) => return Some(opened.elapsed()),
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                            return Some(opened.elapsed());
                        }
                        Err(_) => return None,
                    }
                }
            })
            .collect()
    })
}

#[test]
fn idle_connection_flood_leaves_the_agent_serving_within_bounds() {
    let _serial = serial();
    let limit = raise_fd_limit();
    // Headroom for the test harness, the clients and the probes.
    let total = 20_000usize.min(limit.saturating_sub(600) as usize);
    assert!(
        total >= 3000,
        "fd limit {limit} too low for a meaningful flood"
    );
    let agent = start_agent(&[]);
    let pid = agent.child.id();
    let service = Service::connect(&agent);
    let before = service.metrics();
    let open_before: Vec<f64> = ["grpc", "http", "admin"]
        .iter()
        .map(|l| {
            sample(
                &before,
                &format!("loopwatch_agent_connections_open{{listener=\"{l}\"}}"),
            )
        })
        .collect();

    let probes = probe_preface_timeout(agent.grpc);
    let ports = [agent.grpc, agent.http, agent.admin];
    let mut flood = Vec::with_capacity(total);
    let mut max_rss = rss_kib(pid);
    let mut slowest = Duration::ZERO;
    let start = Instant::now();
    let mut connect_errors = 0usize;
    while flood.len() + connect_errors < total {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "flood took over 60 s"
        );
        for _ in 0..1000.min(total - flood.len() - connect_errors) {
            let port = ports[(flood.len() + connect_errors) % 3];
            match TcpStream::connect_timeout(&port, Duration::from_secs(1)) {
                Ok(c) => flood.push(c),
                Err(_) => connect_errors += 1,
            }
        }
        max_rss = max_rss.max(rss_kib(pid));
        assert!(
            max_rss < RSS_CAP_KIB,
            "agent RSS {max_rss} KiB during the flood"
        );
        slowest =
            slowest.max(service.export_and_probe(&format!("after {} connections", flood.len())));
    }
    let flood_took = start.elapsed();
    let closed = probes.join().expect("probe thread");
    for (i, c) in closed.iter().enumerate() {
        let c = c.unwrap_or_else(|| panic!("probe {i} still open after {HANDSHAKE:?} + 1 s"));
        assert!(
            c >= HANDSHAKE - Duration::from_millis(50),
            "probe {i} closed after {c:?}: before the handshake timeout"
        );
    }
    let during = service.metrics();
    let refused: f64 = ["grpc", "http", "admin"]
        .iter()
        .map(|l| {
            sample(
                &during,
                &format!(
                    "loopwatch_agent_connections_refused_total{{listener=\"{l}\",reason=\"max_connections\"}}"
                ),
            )
        })
        .sum();
    assert!(
        refused > 0.0,
        "a flood over the caps is refused and counted"
    );
    let timed_out = sample(&during, "loopwatch_agent_connections_timed_out_total");
    assert!(
        timed_out >= PROBES as f64,
        "preface timeouts are counted: {timed_out}"
    );
    max_rss = max_rss.max(rss_kib(pid));
    eprintln!(
        "flood: {} connections ({connect_errors} connect errors) in {flood_took:?}; refused {refused}, \
         timed out {timed_out}; max RSS {max_rss} KiB; slowest export {slowest:?}; probes closed after {:?}..{:?}",
        flood.len(),
        closed.iter().flatten().min(),
        closed.iter().flatten().max()
    );
    assert!(max_rss < RSS_CAP_KIB);

    drop(flood);
    let settled = common::eventually(Duration::from_secs(15), || {
        let m = service.metrics();
        ["grpc", "http", "admin"]
            .iter()
            .zip(&open_before)
            .all(|(l, b)| {
                sample(
                    &m,
                    &format!("loopwatch_agent_connections_open{{listener=\"{l}\"}}"),
                ) == *b
            })
    });
    assert!(
        settled,
        "open connections back to {open_before:?}:\n{}",
        service.metrics()
    );
    service.export_and_probe("after the flood, established connections");
    let fresh = Service::connect(&agent);
    fresh.export_and_probe("after the flood, new connections");
}

#[test]
fn idle_grpc_connection_is_closed_after_the_idle_timeout() {
    let _serial = serial();
    let agent = start_agent(&["--set", "receiver.idle_timeout=1s"]);
    let service = Service::connect(&agent);
    let open = |s: &Service| {
        sample(
            &s.metrics(),
            "loopwatch_agent_connections_open{listener=\"grpc\"}",
        )
    };
    assert_eq!(open(&service), 1.0, "the exporter's connection is open");
    let idle_from = Instant::now();
    let closed = common::eventually(Duration::from_secs(5), || open(&service) == 0.0);
    let after = idle_from.elapsed();
    assert!(closed, "idle gRPC connection still open after 5 s");
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}, before the 1 s idle timeout"
    );
    let m = service.metrics();
    assert!(
        sample(&m, "loopwatch_agent_connections_timed_out_total") >= 1.0,
        "{m}"
    );
    eprintln!("idle gRPC connection closed after {after:?} (idle_timeout=1s)");
    // The close is a TCP close without an HTTP/2 GOAWAY: the channel may learn of it from
    // one failed call; it then reconnects and is served.
    let mut grpc = service.grpc.clone();
    let req = common::request("idle", "i1", vec![common::gauge("g", "1", 1.0, &[])]);
    let first = service.rt.block_on(grpc.export(req));
    eprintln!(
        "first export after the idle close: {:?}",
        first.as_ref().map(|_| ())
    );
    service.export_and_probe("after the idle close");
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // Fields 14 and 15 of stat (utime, stime), counted after the command name.
    (f[10] + f[11]) as f64 / 100.0
}

/// Opens streams on one HTTP/2 connection and resets each at once, until the server closes
/// the connection or `budget` streams were sent. Returns the streams sent.
async fn reset_streams(grpc: SocketAddr, budget: usize) -> usize {
    let tcp = tokio::net::TcpStream::connect(grpc).await.expect("connect");
    let Ok((mut client, conn)) = h2::client::handshake(tcp).await else {
        return 0;
    };
    let driver = tokio::spawn(conn);
    let mut sent = 0;
    while sent < budget {
        let Ok(ready) = client.ready().await else {
            break;
        };
        client = ready;
        let req = axum::http::Request::post(format!(
            "http://{grpc}/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
        ))
        .header("content-type", "application/grpc")
        .body(())
        .expect("request");
        let Ok((_resp, mut stream)) = client.send_request(req, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
        tokio::task::yield_now().await;
    }
    driver.abort();
    sent
}

#[test]
fn rapid_reset_flood_is_cut_while_exports_keep_flowing() {
    let _serial = serial();
    const STREAMS: usize = 20_000;
    let agent = start_agent(&[]);
    let pid = agent.child.id();
    let service = Service::connect(&agent);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cpu_before = cpu_seconds(pid);
    let start = Instant::now();
    let (mut sent, mut connections, mut max_rss) = (0usize, 0usize, rss_kib(pid));
    let mut slowest = Duration::ZERO;
    while sent < STREAMS && start.elapsed() < Duration::from_secs(20) {
        let n = rt.block_on(reset_streams(agent.grpc, (STREAMS - sent).min(2000)));
        assert!(n > 0, "no stream could be opened on a new connection");
        sent += n;
        connections += 1;
        max_rss = max_rss.max(rss_kib(pid));
        assert!(
            max_rss < RSS_CAP_KIB,
            "agent RSS {max_rss} KiB during the reset flood"
        );
        slowest = slowest.max(service.export_and_probe(&format!("after {sent} reset streams")));
    }
    let wall = start.elapsed();
    let cpu = cpu_seconds(pid) - cpu_before;
    eprintln!(
        "rapid reset: {sent} streams reset over {connections} connections in {wall:?}; \
         agent CPU {cpu:.2} s; max RSS {max_rss} KiB; slowest export {slowest:?}"
    );
    assert_eq!(sent, STREAMS, "bounded loop ended early after {wall:?}");
    // The pending-reset limit closes a resetting connection long before 2000 streams.
    assert!(
        connections >= STREAMS / 2000 * 2,
        "{connections} connections for {sent} streams: resets were not cut"
    );
    service.export_and_probe("after the reset flood");
}
