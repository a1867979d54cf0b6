//! End to end: a real `example-service` blocked in a handler reports the blocking code's stack
//! while the block lasts; the real `loopwatch-agent` keeps it and shows it in `/v1/status` as
//! `last_stalls`, naming the handler, also when the binary carries no debug information.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::time::{Duration, Instant};

use std::path::Path;

use loopwatch_e2e::{Agent, Service, bin, http_get, wait_for};

/// Whether a frame of any report is `function` (or inside it).
fn names(stalls: &serde_json::Value, function: &str) -> bool {
    stalls.as_array().is_some_and(|a| {
        a.iter().any(|r| {
            r["frames"].as_array().is_some_and(|f| {
                f.iter().any(|f| {
                    f["function"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(function))
                })
            })
        })
    })
}

fn run(route: &str, function: &str, extra: &[&str]) -> serde_json::Value {
    run_program(&bin("example-service"), route, function, extra)
}

/// Blocks `program`'s `route` for 1.5 s and returns the first report naming `function`.
fn run_program(program: &Path, route: &str, function: &str, extra: &[&str]) -> serde_json::Value {
    let agent = Agent::start(&[]);
    let service = Service::start_program(program, &agent, &format!("stacks-{route}"), extra);
    service.wait_ready_at(&agent);
    let url = format!("{}/{route}?ms=1500", service.url);
    let started = Instant::now();
    let block = std::thread::spawn(move || http_get(&url));
    // Reports that do not name the handler are printed as they arrive: on a timeout they say
    // what the agent had instead.
    let mut seen = serde_json::Value::Null;
    let (stalls, seen_at) = wait_for(
        "last_stalls naming the handler in /v1/status",
        Duration::from_secs(60),
        Duration::from_millis(10),
        || {
            let s = agent.service_status(&service.name)?;
            let stalls = s["last_stalls"].clone();
            if names(&stalls, function) {
                return Some((stalls, started.elapsed()));
            }
            if stalls != seen {
                eprintln!("last_stalls without {function}: {stalls}");
                seen = stalls;
            }
            None
        },
    );
    let during = !block.is_finished();
    let (code, _) = block.join().expect("block request");
    assert_eq!(code, 200);
    eprintln!(
        "{route}: block start -> stack at the agent {seen_at:?} (during the block: {during})\n{}",
        serde_json::to_string_pretty(&stalls).unwrap_or_default()
    );
    let r = stalls
        .as_array()
        .and_then(|a| a.iter().find(|r| names(&serde_json::json!([r]), function)))
        .expect("a report naming the handler")
        .clone();
    assert!(r["thread_id"].as_i64().is_some_and(|t| t > 0), "{r}");
    assert!(
        r["duration_seconds"].as_f64().is_some_and(|d| d >= 0.25),
        "{r}"
    );
    assert!(r["thread_name"].is_string(), "{r}");
    assert!(
        ["loopwatch.stall", "tokio.worker.stuck"].contains(&r["event"].as_str().unwrap_or("")),
        "{r}"
    );
    r
}

#[test]
fn a_sleeping_handler_is_named_in_status() {
    run("block", "example_service::block", &[]);
}

#[test]
fn a_spinning_handler_on_one_of_four_workers_is_named_in_status() {
    run("spin", "example_service::spin", &["--workers", "4"]);
}

#[test]
fn a_binary_without_debug_information_still_names_the_handler() {
    let stripped = std::env::temp_dir().join(format!(
        "loopwatch-example-service-stripped-{}",
        std::process::id()
    ));
    let done = std::process::Command::new(loopwatch_e2e::peer("objcopy"))
        .arg("--strip-debug")
        .arg(bin("example-service"))
        .arg(&stripped)
        .status()
        .expect("objcopy");
    assert!(done.success(), "objcopy --strip-debug failed");
    let r = run_program(&stripped, "block", "example_service::block", &[]);
    let _ = std::fs::remove_file(&stripped);
    // Names come from the symbol table; without line tables no frame has a file:line.
    let frames = r["frames"].as_array().expect("frames");
    assert!(
        frames
            .iter()
            .filter(|f| f["function"]
                .as_str()
                .is_some_and(|n| n.starts_with("example_service")))
            .all(|f| !f["location"]
                .as_str()
                .is_some_and(|l| l.contains("examples/src"))),
        "a stripped binary has no line tables: {r}"
    );
}
