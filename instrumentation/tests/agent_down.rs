//! The agent is down (closed port) or hung (accepts TCP, never answers): the service keeps
//! running, stalls are still detected, nothing panics and shutdown returns in bounded time.

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{BlockState, PROBE, THRESHOLD};
use loopwatch::Protocol;

fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
    // dropped here: nothing listens on the port any more
}

fn run_against(endpoint: String, protocol: Protocol) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let export_timeout = Duration::from_millis(500);
    let guard = rt.block_on(async {
        loopwatch::Loopwatch::builder()
            .endpoint(endpoint.clone())
            .protocol(protocol)
            .export_interval(Duration::from_millis(200))
            .export_timeout(export_timeout)
            .probe_interval(PROBE)
            .stall_threshold(THRESHOLD)
            .start()
            .expect("start works without an agent")
    });

    // Ordinary async work keeps running and completes.
    let sum = rt.block_on(async {
        let mut handles = Vec::new();
        for i in 0..50u64 {
            handles.push(tokio::spawn(async move {
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                i
            }));
        }
        let mut sum = 0;
        for h in handles {
            sum += h.await.expect("task");
        }
        sum
    });
    assert_eq!(sum, (0..50).sum::<u64>());

    // A stall triggers flushes that fail; detection must not depend on them.
    let state = Arc::new(BlockState::default());
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let s = Arc::clone(&state);
            rt.spawn(async move { s.block(2, Duration::from_millis(400)) })
        })
        .collect();
    let observed = common::observe_block(&guard, &state);
    let after = common::wait_stall_end(&guard);
    assert!(observed.max_stall_during >= THRESHOLD, "{observed:?}");
    assert_eq!(after.stalls, 1, "{after:?}");
    rt.block_on(async {
        for t in tasks {
            t.await.expect("block task");
        }
    });

    // Probes keep running after failed exports.
    let probes = guard.snapshot().probes;
    let deadline = Instant::now() + Duration::from_secs(5);
    while guard.snapshot().probes <= probes + 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(guard.snapshot().probes > probes + 5, "probe stopped");

    let t = Instant::now();
    guard.shutdown();
    let took = t.elapsed();
    // Protocol bound: a pending flush plus the final export, each bounded by export_timeout,
    // capped by LoopwatchBuilder::DEFAULT_SHUTDOWN_TIMEOUT per thread.
    assert!(
        took < 2 * loopwatch::LoopwatchBuilder::DEFAULT_SHUTDOWN_TIMEOUT,
        "shutdown took {took:?} against {endpoint}"
    );
    eprintln!("{protocol:?} {endpoint}: shutdown took {took:?}");
    rt.shutdown_timeout(Duration::from_secs(1));
}

#[test]
fn grpc_agent_down() {
    run_against(
        format!("http://127.0.0.1:{}", closed_port()),
        Protocol::Grpc,
    );
}

#[test]
fn http_agent_down() {
    run_against(
        format!("http://127.0.0.1:{}/v1/metrics", closed_port()),
        Protocol::HttpProtobuf,
    );
}

#[test]
fn grpc_agent_hung() {
    // Accepts connections (kernel backlog) but never answers.
    let hung = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = hung.local_addr().expect("addr").port();
    run_against(format!("http://127.0.0.1:{port}"), Protocol::Grpc);
    drop(hung);
}

#[test]
fn start_outside_runtime_is_an_error() {
    let err = loopwatch::Loopwatch::builder()
        .start()
        .expect_err("no runtime here");
    assert!(matches!(err, loopwatch::StartError::NoRuntime), "{err}");
}

#[test]
fn invalid_endpoint_is_an_error_naming_the_value() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let err = loopwatch::Loopwatch::builder()
        .endpoint("127.0.0.1:4317")
        .start_with_handle(rt.handle().clone())
        .expect_err("no scheme");
    assert!(
        matches!(&err, loopwatch::StartError::InvalidEndpoint { value, .. } if value == "127.0.0.1:4317"),
        "{err}"
    );
}
