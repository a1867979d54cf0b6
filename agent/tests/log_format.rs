//! The agent's log as a pipeline reads it: stderr is a pipe here, so no ANSI escapes; with
//! `--log-format json` every line is one JSON object; `LOOPWATCH_LOG` beats `RUST_LOG`; an
//! invalid filter exits 2 naming its variable.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_loopwatch-agent");

/// Runs the agent on loopback with `args` and `env`, waits for its startup line, sends
/// SIGTERM and returns its whole stderr.
fn log_of(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("LOOPWATCH_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--set",
            "shutdown.grace=0s",
        ])
        // An unreachable upstream makes the agent log warnings and errors too.
        .args(["--set", "exporter.endpoint=http://127.0.0.1:9"])
        .args(["--set", "exporter.interval=100ms"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("startup line");
    assert!(line.starts_with("loopwatch-agent listening"), "{line}");
    // Long enough for a few failed exports to be logged.
    std::thread::sleep(Duration::from_millis(800));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("agent did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    err
}

#[test]
fn text_log_to_a_pipe_has_no_escape_bytes() {
    let log = log_of(&[], &[("RUST_LOG", "debug")]);
    assert!(log.contains("loopwatch-agent started"), "{log}");
    assert!(log.contains("DEBUG"), "RUST_LOG=debug is honoured:\n{log}");
    assert!(
        !log.contains('\x1b'),
        "escape bytes in a piped log:\n{log:?}"
    );
}

#[test]
fn json_log_lines_all_parse() {
    let log = log_of(
        &["--log-format", "json"],
        &[("LOOPWATCH_LOG", "info"), ("RUST_LOG", "trace")],
    );
    assert!(!log.contains('\x1b'), "{log:?}");
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "startup, export errors, shutdown:\n{log}");
    let mut started = false;
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("line is not JSON ({e}): {line:?}"));
        let level = v["level"].as_str().unwrap_or_else(|| panic!("{line}"));
        assert!(
            ["INFO", "WARN", "ERROR"].contains(&level),
            "LOOPWATCH_LOG=info beats RUST_LOG=trace: {line}"
        );
        assert!(v["timestamp"].is_string(), "{line}");
        started |= v["fields"]["message"] == "loopwatch-agent started";
    }
    assert!(started, "{log}");
}

#[test]
fn invalid_log_filter_exits_2_naming_the_variable() {
    let out = Command::new(BIN)
        .env("LOOPWATCH_LOG", "info,[=")
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--admin-listen", "127.0.0.1:0"])
        .output()
        .expect("run agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("LOOPWATCH_LOG"), "{err}");
}
