//! The agent's accept backoff on `EMFILE`, against the real binary: its fd limit is lowered
//! (`prlimit` on the running agent, util-linux) to a few above what it has open, then filled
//! with idle connections, so every further accept fails while the listener stays readable. The
//! agent backs off (10 ms doubling to 1 s) instead of spinning: its CPU time (utime + stime from
//! `/proc/PID/stat`) over a bounded window stays under a fifth of one core. Once the
//! connections close it accepts again and has counted the errors in
//! `loopwatch_agent_accept_errors_total`.

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use loopwatch_e2e::{Agent, host_port, http_get, prom_values, wait_for};

/// Sets the soft and hard `RLIMIT_NOFILE` of `pid`.
fn prlimit(pid: u32, limit: usize) {
    let out = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .output()
        .expect("run prlimit (util-linux)");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Clock ticks per second of `/proc/PID/stat` times.
fn clock_ticks() -> f64 {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("run getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK is a number")
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).expect("stat format");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> u64 { fields[i].parse().expect("a tick count") };
    field(11) + field(12)
}

#[test]
fn emfile_backs_off_without_spinning_and_accepts_again() {
    let agent = Agent::start(&[]);
    let pid = agent.proc.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list fds")
        .count();
    prlimit(pid, open + 4);

    let http = host_port(&agent.http);
    let conns: Vec<TcpStream> = (0..32)
        .map(|_| TcpStream::connect(&http).expect("connect (the kernel's backlog takes it)"))
        .collect();
    wait_for(
        "an accept error in the agent's log",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            agent
                .proc
                .log_text()
                .contains("accept error: backing off")
                .then_some(())
        },
    );

    let (ticks, start) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let used = (cpu_ticks(pid) - ticks) as f64 / clock_ticks();
    let share = used / start.elapsed().as_secs_f64();
    assert!(
        share < 0.2,
        "the agent used {share:.3} of a core while accept kept failing"
    );

    drop(conns);
    let errors = wait_for(
        "the admin server answering again",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let (code, text) = http_get(&format!("{}/metrics", agent.admin));
            (code == 200).then(|| prom_values(&text, "loopwatch_agent_accept_errors_total", ""))
        },
    );
    assert!(errors.iter().sum::<f64>() >= 1.0, "{errors:?}");
    let (code, _) = http_get(&format!("{}/readyz", agent.admin));
    assert!(
        code == 200 || code == 503,
        "a fresh connection is served: {code}"
    );
}
