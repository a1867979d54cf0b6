//! The `loopwatch-agent` binary: config errors (exit 2, key named), precedence
//! flag > env > file > default, the startup line with port 0, and SIGTERM -> exit 0.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_loopwatch-agent");

fn agent_cmd() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("LOOPWATCH_") {
            c.env_remove(k);
        }
    }
    c
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loopwatch-agent-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write config");
    path
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_keys_exit_2_naming_the_key() {
    let path = temp_file("unknown.toml", "[health]\nlag_entr = \"1s\"\n");
    let (code, _, err) = run(agent_cmd().arg("--config").arg(&path));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("health.lag_entr: unknown configuration key"),
        "{err}"
    );

    let path = temp_file("section.toml", "[bogus]\nx = 1\n");
    let (code, _, err) = run(agent_cmd().arg("--config").arg(&path));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bogus.x"), "{err}");

    let (code, _, err) = run(agent_cmd().args(["--set", "health.nope=1s"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("health.nope"), "{err}");
}

#[test]
fn bad_values_exit_2_naming_the_key() {
    let path = temp_file("bad.toml", "[health]\nlag_enter = \"abc\"\n");
    let (code, _, err) = run(agent_cmd().arg("--config").arg(&path));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(r#"health.lag_enter: invalid duration "abc" (expected e.g. "250ms", "1.5s")"#),
        "{err}"
    );
    let (code, _, err) = run(agent_cmd().env("LOOPWATCH_HEALTH_HOLD", "soon"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("health.hold (LOOPWATCH_HEALTH_HOLD): invalid duration"),
        "{err}"
    );
    let (code, _, err) = run(agent_cmd().args(["--admin-listen", "not-an-address"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("admin.listen"), "{err}");
    let (code, _, err) = run(agent_cmd().args(["--lag-enter", "50ms"]));
    assert_eq!(code, 2, "lag_leave (100ms) > lag_enter (50ms): {err}");
    assert!(err.contains("health.lag_leave"), "{err}");
}

#[test]
fn precedence_flag_over_env_over_file_over_default() {
    let path = temp_file(
        "prec.toml",
        "[health]\nhold = \"1s\"\nstale_after = \"9s\"\n[admin]\nlisten = \"127.0.0.1:9999\"\n",
    );
    let print = |env: Option<&str>, flag: Option<&str>| {
        let mut c = agent_cmd();
        c.arg("--config").arg(&path).arg("--print-config");
        if let Some(e) = env {
            c.env("LOOPWATCH_HEALTH_HOLD", e);
        }
        if let Some(f) = flag {
            c.args(["--hold", f]);
        }
        let (code, out, err) = run(&mut c);
        assert_eq!(code, 0, "{err}");
        out
    };
    let file_only = print(None, None);
    assert!(file_only.contains("hold = \"1s\""), "{file_only}");
    assert!(file_only.contains("stale_after = \"9s\""), "{file_only}");
    assert!(
        file_only.contains("listen = \"127.0.0.1:9999\""),
        "{file_only}"
    );
    assert!(
        file_only.contains("lag_enter = \"250ms\""),
        "default kept: {file_only}"
    );
    let env = print(Some("2s"), None);
    assert!(env.contains("hold = \"2s\""), "env beats file: {env}");
    let flag = print(Some("2s"), Some("4s"));
    assert!(flag.contains("hold = \"4s\""), "flag beats env: {flag}");

    // No file at all: embedded defaults.
    let (code, out, err) = run(agent_cmd().arg("--print-config"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("grpc_listen = \"127.0.0.1:4317\""), "{out}");
    assert!(out.contains("listen = \"0.0.0.0:9464\""), "{out}");
}

#[test]
fn prints_listening_line_serves_and_exits_0_on_sigterm() {
    let mut child = agent_cmd()
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read startup line");
    let parts: Vec<&str> = line.trim().split(' ').collect();
    assert_eq!(parts.len(), 5, "{line}");
    assert_eq!(&parts[..2], ["loopwatch-agent", "listening"], "{line}");
    let addr = |prefix: &str, part: &str| -> std::net::SocketAddr {
        part.strip_prefix(prefix)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("bad {prefix} in {line}"))
    };
    let grpc = addr("grpc=", parts[2]);
    let http = addr("http=", parts[3]);
    let admin = addr("admin=", parts[4]);
    for a in [grpc, http, admin] {
        assert!(a.ip().is_loopback() && a.port() != 0, "{line}");
    }

    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let live = client
        .get(format!("http://{admin}/livez"))
        .send()
        .expect("livez");
    assert_eq!(live.status().as_u16(), 200);
    assert_eq!(live.text().expect("body"), r#"{"status":"ok"}"#);
    let posted = client
        .post(format!("http://{http}/v1/metrics"))
        .header("content-type", "application/json")
        .body(r#"{"resourceMetrics":[]}"#)
        .send()
        .expect("post");
    assert_eq!(posted.status().as_u16(), 200);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("agent did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}
