//! Support for the end-to-end tests: start the real `loopwatch-agent`, the real
//! `example-service` and a real Prometheus on loopback, talk to them over HTTP, and
//! clean up (and show their logs when a test fails).
//!
//! The binaries come from the workspace's target directory (`cargo build --workspace --bins`,
//! which `scripts/test.sh` runs), or from `LOOPWATCH_BIN_DIR`. Peers such as Prometheus come
//! from `PATH` (`scripts/install-peers.sh` installs them); a missing peer fails the test with
//! what to run, it never skips.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod capture;
pub mod tls;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where the workspace binaries are: `LOOPWATCH_BIN_DIR`, else next to this test executable.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOOPWATCH_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary; panics with the command to run when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Path of a peer program on `PATH`; panics with the install command when it is missing.
pub fn peer(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("peer `{name}` not found on PATH: run scripts/install-peers.sh");
}

/// A free TCP port on 127.0.0.1 (for peers that cannot bind port 0 and report it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Polls `f` every `every` until it returns `Some`, or panics after `limit` with `what`.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

/// A child process that is killed on drop; its stderr goes to a log file that is printed
/// when the test is failing.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// The line the process printed on stdout once ready.
    pub ready_line: String,
}

impl Proc {
    /// Spawns `cmd`, waits (bounded) for a stdout line starting with `ready_prefix`.
    pub fn spawn(name: &str, mut cmd: Command, ready_prefix: &str) -> Proc {
        let log_dir = repo_root().join("target").join("e2e-logs");
        std::fs::create_dir_all(&log_dir).expect("create target/e2e-logs");
        let log = log_dir.join(format!("{name}-{}-{}.log", std::process::id(), unique()));
        let log_file = std::fs::File::create(&log).expect("create log file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let prefix = ready_prefix.to_string();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && line.starts_with(&prefix) {
                    sent = true;
                    let _ = tx.send(line);
                }
            }
        });
        let mut proc = Proc {
            name: name.to_string(),
            child,
            log,
            ready_line: String::new(),
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => proc.ready_line = line,
            Err(_) => panic!(
                "{name} did not print `{ready_prefix}…` within 30 s; log:\n{}",
                proc.log_text()
            ),
        }
        proc
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stderr log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGKILL and reaps.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (e.g. "TERM") with the `kill` command and waits (bounded) for exit.
    pub fn signal_and_wait(
        &mut self,
        signal: &str,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
        self.kill();
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A running `loopwatch-agent` on ephemeral loopback ports.
pub struct Agent {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:PORT` of the OTLP gRPC receiver.
    pub grpc: String,
    /// `http://127.0.0.1:PORT` of the OTLP HTTP receiver.
    pub http: String,
    /// `http://127.0.0.1:PORT` of the admin server.
    pub admin: String,
}

impl Agent {
    /// Starts the agent with all listeners on 127.0.0.1 port 0, plus `extra` arguments.
    pub fn start(extra: &[&str]) -> Agent {
        Self::start_with(extra, &[])
    }

    /// Like [`Agent::start`], with extra environment variables.
    pub fn start_with(extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut cmd = Command::new(bin("loopwatch-agent"));
        cmd.args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info");
        let proc = Proc::spawn("agent", cmd, "loopwatch-agent listening");
        let field = |key: &str| -> String {
            let addr = proc
                .ready_line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("no {key}= in `{}`", proc.ready_line))
                .to_string();
            format!("http://{addr}")
        };
        let (grpc, http, admin) = (field("grpc"), field("http"), field("admin"));
        Agent {
            proc,
            grpc,
            http,
            admin,
        }
    }

    /// GET on the admin server: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&format!("{}{path}", self.admin))
    }

    /// `/v1/status` entry of the service named `name`, if the agent tracks it.
    pub fn service_status(&self, name: &str) -> Option<serde_json::Value> {
        let (code, body) = self.get("/v1/status");
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["services"]
            .as_array()?
            .iter()
            .find(|s| s["service"] == name)
            .cloned()
    }

    /// Values of a Prometheus sample family on `/metrics` whose labels contain `label_filter`.
    pub fn metric_values(&self, family: &str, label_filter: &str) -> Vec<f64> {
        let (_, body) = self.get("/metrics");
        prom_values(&body, family, label_filter)
    }
}

/// Parses sample lines `family{labels} value` from a Prometheus text exposition.
pub fn prom_values(text: &str, family: &str, label_filter: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(family)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) || !rest.contains(label_filter) {
                return None;
            }
            rest.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .collect()
}

/// A running `example-service` exporting to an agent.
pub struct Service {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:PORT` of the service.
    pub url: String,
    /// Its `service.name`.
    pub name: String,
}

impl Service {
    /// Starts the example service named `name`, exporting OTLP/gRPC to `agent`.
    pub fn start(agent: &Agent, name: &str) -> Service {
        Self::start_with(agent, name, &[])
    }

    /// Like [`Service::start`] with extra arguments.
    pub fn start_with(agent: &Agent, name: &str, extra: &[&str]) -> Service {
        Self::start_program(&bin("example-service"), agent, name, extra)
    }

    /// Like [`Service::start_with`], running `program` (a copy of the example service, such
    /// as a stripped one).
    pub fn start_program(program: &Path, agent: &Agent, name: &str, extra: &[&str]) -> Service {
        let mut cmd = Command::new(program);
        cmd.args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("OTEL_SERVICE_NAME", name)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &agent.grpc)
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .env_remove("OTEL_RESOURCE_ATTRIBUTES")
            // Stall stacks log why a capture or report failed at debug level: a failing test
            // prints the service's log.
            .env("RUST_LOG", "info,loopwatch::stacks=debug");
        let proc = Proc::spawn(name, cmd, "example-service listening on ");
        let url = proc
            .ready_line
            .trim_start_matches("example-service listening on ")
            .trim()
            .to_string();
        Service {
            proc,
            url,
            name: name.to_string(),
        }
    }

    /// Waits (bounded) until `agent` tracks this service and finds it ready.
    pub fn wait_ready_at(&self, agent: &Agent) {
        wait_for(
            &format!("agent to report {} ready", self.name),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let s = agent.service_status(&self.name)?;
                (s["state"] == "ok").then_some(())
            },
        );
    }

    /// Starts `GET /block?ms=N` on a thread; join it to learn when the block ended.
    pub fn block_in_background(&self, ms: u64) -> std::thread::JoinHandle<(u16, Instant)> {
        let url = format!("{}/block?ms={ms}", self.url);
        std::thread::spawn(move || {
            let (code, _) = http_get(&url);
            (code, Instant::now())
        })
    }
}

/// A blocking HTTP client with bounded timeouts.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .expect("reqwest client")
}

/// GET `url`: (status, body). Connection errors are status 0 with the error as body.
pub fn http_get(url: &str) -> (u16, String) {
    match client().get(url).send() {
        Ok(resp) => {
            let code = resp.status().as_u16();
            (code, resp.text().unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// A real Prometheus server scraping the given admin URLs every 500 ms.
pub struct Prometheus {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus with one scrape job over `targets` (`http://host:port` admin URLs).
    pub fn start(targets: &[&str]) -> Prometheus {
        let exe = peer("prometheus");
        let dir = TempDir::new("prometheus");
        let hosts: Vec<String> = targets
            .iter()
            .map(|t| format!("'{}'", t.trim_start_matches("http://")))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: loopwatch-agent\n    static_configs:\n      - targets: [{}]\n",
            hosts.join(", ")
        );
        let config_path = dir.path.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut cmd = Command::new(exe);
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        // Prometheus logs to stderr and prints nothing on stdout: readiness is polled instead.
        let proc = Proc::spawn_unready("prometheus", cmd);
        wait_for(
            "prometheus /-/ready",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || (http_get(&format!("{url}/-/ready")).0 == 200).then_some(()),
        );
        Prometheus {
            proc,
            url,
            _dir: dir,
        }
    }

    /// Instant query: the values of the resulting vector (empty when no data).
    pub fn query(&self, promql: &str) -> Vec<f64> {
        let resp = client()
            .get(format!(
                "{}/api/v1/query?query={}",
                self.url,
                urlencode(promql)
            ))
            .send();
        let Ok(resp) = resp else { return Vec::new() };
        let Ok(text) = resp.text() else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert_ne!(v["status"], "error", "PromQL `{promql}` failed: {text}");
        v["data"]["result"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Proc {
    /// Spawns a process that announces nothing on stdout (readiness is polled by the caller).
    pub fn spawn_unready(name: &str, mut cmd: Command) -> Proc {
        let log_dir = repo_root().join("target").join("e2e-logs");
        std::fs::create_dir_all(&log_dir).expect("create target/e2e-logs");
        let log = log_dir.join(format!("{name}-{}-{}.log", std::process::id(), unique()));
        let log_file = std::fs::File::create(&log).expect("create log file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
            ready_line: String::new(),
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A directory removed on drop.
pub struct TempDir {
    /// Its path.
    pub path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory under the system temp dir.
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "loopwatch-{prefix}-{}-{}",
            std::process::id(),
            unique()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---- Helpers for the reliability tests (issue 7) ----

impl Proc {
    /// Whether the process is still running (not exited, not reaped).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Resident set size of process `pid` in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `host:port` of an `http://host:port` URL.
pub fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// Sends a raw HTTP/1.1 request (`head` without the blank line; `Connection: close` is
/// added) and `body` on a fresh connection, writing the body from another thread while the
/// response is read, so a server that answers early (413) is heard even if it closes before
/// the body is through. Returns (status, whole response text); status 0 when no response.
pub fn raw_http(addr: &str, head: &str, body: Vec<u8>, limit: Duration) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return (0, "connect failed".into());
    };
    let _ = stream.set_read_timeout(Some(limit));
    let _ = stream.set_write_timeout(Some(limit));
    let head = format!("{head}\r\nConnection: close\r\n\r\n");
    if stream.write_all(head.as_bytes()).is_err() {
        return (0, "write failed".into());
    }
    let writer = stream.try_clone().ok().map(|mut w| {
        std::thread::spawn(move || {
            for chunk in body.chunks(64 * 1024) {
                if w.write_all(chunk).is_err() {
                    break;
                }
            }
        })
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let start = Instant::now();
    while start.elapsed() < limit {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    if let Some(w) = writer {
        let _ = w.join();
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// POST `body` to `url` with the given content type and optional content encoding:
/// (status, body). Connection errors are status 0.
pub fn http_post(
    url: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    let mut req = client()
        .post(url)
        .header("content-type", content_type)
        .body(body);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    match req.send() {
        Ok(resp) => {
            let code = resp.status().as_u16();
            (code, resp.text().unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

impl Agent {
    /// Sum of a self-telemetry counter family (all label sets matching `label_filter`).
    pub fn counter(&self, family: &str, label_filter: &str) -> f64 {
        self.metric_values(family, label_filter).into_iter().sum()
    }

    /// `loopwatch_agent_requests_refused_total{reason="REASON"}`.
    pub fn refused(&self, reason: &str) -> f64 {
        self.counter(
            "loopwatch_agent_requests_refused_total",
            &format!("reason=\"{reason}\""),
        )
    }

    /// Resident set size of the agent process in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.proc.pid()).unwrap_or(0)
    }
}

impl Agent {
    /// Starts the agent with exactly `args` (no default listen flags) and `env`; `RUST_LOG`
    /// defaults to `info` unless `env` sets it. Use to restart an agent on fixed ports.
    pub fn start_args(args: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut cmd = Command::new(bin("loopwatch-agent"));
        cmd.env("RUST_LOG", "info")
            .args(args)
            .envs(env.iter().copied());
        let proc = Proc::spawn("agent", cmd, "loopwatch-agent listening");
        let field = |key: &str| -> String {
            let addr = proc
                .ready_line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("no {key}= in `{}`", proc.ready_line))
                .to_string();
            format!("http://{addr}")
        };
        let (grpc, http, admin) = (field("grpc"), field("http"), field("admin"));
        Agent {
            proc,
            grpc,
            http,
            admin,
        }
    }
}

/// Runs the peer installer `scripts/peers.d/SCRIPT` and returns the path it prints last
/// (`name: PATH`); panics (never skips) when the installer fails.
pub fn install_peer(script: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/peers.d").join(script))
        .output()
        .unwrap_or_else(|e| panic!("run peer installer {script}: {e}"));
    assert!(
        out.status.success(),
        "peer installer {script} failed (run scripts/install-peers.sh as root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default().trim();
    PathBuf::from(line.split_once(": ").map_or(line, |(_, p)| p))
}

/// The headless browser (Debian `chromium`, installed by `scripts/peers.d/50-chromium.sh`,
/// which this runs to check): panics with what to run when it is missing.
pub fn chromium() -> PathBuf {
    let script = repo_root().join("scripts/peers.d/50-chromium.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("run 50-chromium.sh");
    assert!(
        out.status.success(),
        "chromium missing: run scripts/install-peers.sh as root ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from("chromium")
}

/// Runs headless chromium with `args` + `url` (bounded to 120 s); returns stdout.
pub fn run_chromium(bin: &Path, profile: &Path, args: &[String], url: &str) -> String {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chromium");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().expect("reader")
}

/// The bucket boundaries the OTel HTTP semantic conventions advise for
/// `http.server.request.duration` (seconds): loopwatch's and the OTel SDKs' default.
pub const HTTP_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The `q` quantile of raw observations: the value of rank `ceil(q * n)`.
pub fn raw_quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
    v[rank - 1]
}

/// The bucket `(lower, upper]` of `bounds` that holds `v` (the overflow bucket's upper bound
/// is infinite).
pub fn bucket_of(bounds: &[f64], v: f64) -> (f64, f64) {
    let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
    let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
    (lower, bounds.get(i).copied().unwrap_or(f64::INFINITY))
}

/// Request durations a test sends to a `/sleep?ms=N` route, in milliseconds: each in the
/// middle of a wide bucket of [`HTTP_DURATION_BUCKETS`], so a server's own overhead (a few
/// ms) leaves it in its bucket, and each percentile's rank several requests inside its
/// group (a few slow requests do not move it): p50 in (10, 25] ms, p95 and p99 in
/// (250, 500] ms.
pub const SLEEP_PLAN_MS: [(u64, usize); 4] = [(15, 30), (35, 12), (150, 4), (350, 4)];

/// Checks the `p50_seconds`, `p95_seconds` and `p99_seconds` of a `/v1/status` route entry
/// against the raw observations: each must lie in the bucket of the raw percentile.
pub fn assert_percentiles_in_raw_buckets(route: &serde_json::Value, raw_seconds: &[f64]) {
    for (field, q) in [
        ("p50_seconds", 0.5),
        ("p95_seconds", 0.95),
        ("p99_seconds", 0.99),
    ] {
        let raw = raw_quantile(raw_seconds, q);
        let (lower, upper) = bucket_of(&HTTP_DURATION_BUCKETS, raw);
        let got = route[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field} missing: {route}"));
        assert!(
            got > lower && got <= upper,
            "{field} {got} s not in the raw percentile's bucket ({lower}, {upper}] (raw {raw} s): {route}"
        );
    }
}
