//! Probe accuracy (issue 6, item 3): injects blocks of known length into a `current_thread` and a
//! `multi_thread` runtime (every worker blocked) and records, for each block, what loopwatch
//! reads (max scheduling delay of the windows around the block, peak of the in-progress stall
//! gauge, `last_stall`), what the `tokio::time::sleep`-overshoot method reads, and what a
//! `tokio-metrics` `TaskMonitor` wrapped around the blocking task (the timing loopwatch's task
//! families and route layer use) reads for the blocking poll.
//!
//! Usage: `probe_accuracy [--repeats N] [--blocks 1,5,20,100,500,2000] [--workers W]
//! [--flavors current_thread,multi_thread] [--sleep-reference on|off]`. Prints one JSON line per
//! injected block on stdout. With `--sleep-reference off` nothing else runs in the runtime, so
//! every block starts from a *quiet* runtime (every worker parked for the 300 ms settle time),
//! where loopwatch's probe thread ticks at its idle tick (25 ms) instead of the probe interval.
//! loopwatch runs with default probe interval and stall threshold, on a meter provider without
//! a reader (no export), so its readings come from `LoopwatchGuard::snapshot`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use opentelemetry_sdk::metrics::SdkMeterProvider;
use tokio_metrics::TaskMonitor;

/// Period of the sleep-overshoot reference probe (Node's default resolution).
const SLEEP_PERIOD: Duration = Duration::from_millis(10);
/// How long the harness idles before each injected block.
const SETTLE: Duration = Duration::from_millis(300);
/// Longest time block tasks spin waiting for each other before blocking anyway. (Waiting by
/// yielding does not work: tokio defers a yielded task's wake-up until its worker is free,
/// so the tasks would run one after another.)
const RENDEZVOUS: Duration = Duration::from_millis(200);
/// Bound on waiting for the windows after a block to complete.
const WINDOW_WAIT: Duration = Duration::from_secs(5);

struct Opts {
    repeats: usize,
    blocks: Vec<u64>,
    workers: usize,
    flavors: Vec<String>,
    sleep_reference: bool,
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        repeats: 3,
        blocks: vec![1, 5, 20, 100, 500, 2000],
        workers: 2,
        flavors: vec!["current_thread".into(), "multi_thread".into()],
        sleep_reference: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().ok_or_else(|| format!("{a}: missing value"))?;
        match a.as_str() {
            "--repeats" => o.repeats = v.parse().map_err(|e| format!("--repeats: {e}"))?,
            "--workers" => o.workers = v.parse().map_err(|e| format!("--workers: {e}"))?,
            "--blocks" => {
                o.blocks = v
                    .split(',')
                    .map(|s| s.trim().parse::<u64>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--blocks: {e}"))?
            }
            "--flavors" => o.flavors = v.split(',').map(str::to_owned).collect(),
            "--sleep-reference" => o.sleep_reference = v != "off",
            _ => return Err(format!("unknown flag {a}")),
        }
    }
    Ok(o)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Max of a `Duration` stored as µs.
fn fetch_max(a: &AtomicU64, d: Duration) {
    a.fetch_max(
        u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

fn load_ms(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64 / 1e3
}

/// One block task's own view: when its (only) poll began, when it started sleeping, when it
/// stopped, and what its `TaskMonitor` timed for its polls.
#[derive(Clone, Copy)]
struct TaskTimes {
    poll_start: Instant,
    block_start: Instant,
    block_end: Instant,
    monitored_poll: Duration,
}

fn run_flavor(flavor: &str, o: &Opts) -> Result<(), String> {
    let multi = flavor == "multi_thread";
    // loopwatch's unpark hook, as a service wires it: a block starting from a quiet runtime is
    // probed from its start.
    let hook = loopwatch::UnparkHook::new();
    let mut builder = if multi {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(o.workers);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let rt = hook
        .install(&mut builder)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let handle = rt.handle().clone();
    let n_block = if multi { o.workers } else { 1 };

    // Drive the runtime (current_thread needs a block_on) until told to stop.
    let stop = Arc::new(tokio::sync::Notify::new());
    let stop2 = Arc::clone(&stop);
    let driver = thread::spawn(move || rt.block_on(async move { stop2.notified().await }));

    let guard = loopwatch::Loopwatch::builder()
        .service_name("probe-accuracy")
        .runtime_name(flavor)
        .meter_provider(SdkMeterProvider::builder().build())
        .unpark_hook(hook)
        .start_with_handle(handle.clone())
        .map_err(|e| format!("loopwatch: {e}"))?;

    // sleep-overshoot reference: max overshoot of a 10 ms sleep, reset per block.
    let sleep_max = Arc::new(AtomicU64::new(0));
    let sleep_stop = Arc::new(AtomicBool::new(false));
    if o.sleep_reference {
        let sleep_max = Arc::clone(&sleep_max);
        let sleep_stop = Arc::clone(&sleep_stop);
        handle.spawn(async move {
            while !sleep_stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                tokio::time::sleep(SLEEP_PERIOD).await;
                fetch_max(&sleep_max, t.elapsed().saturating_sub(SLEEP_PERIOD));
            }
        });
    }

    // Snapshot readings: peak current stall, peak delay.max and new last_stall values, read
    // every 1 ms by this thread while it waits.
    let peak_stall = AtomicU64::new(0);
    let peak_delay_max = AtomicU64::new(0);
    let peak_last_stall = AtomicU64::new(0);
    let mut last_stall_seen = guard.snapshot().last_stall;
    let mut observe = |g: &loopwatch::LoopwatchGuard| {
        let s = g.snapshot();
        fetch_max(&peak_stall, s.current_stall);
        fetch_max(&peak_delay_max, s.delay_max);
        if s.last_stall != last_stall_seen {
            fetch_max(&peak_last_stall, s.last_stall);
            last_stall_seen = s.last_stall;
        }
    };

    thread::sleep(Duration::from_millis(1500));
    for &b in &o.blocks {
        for rep in 0..o.repeats {
            thread::sleep(SETTLE);
            for a in [&*sleep_max, &peak_stall, &peak_delay_max, &peak_last_stall] {
                a.store(0, Ordering::Relaxed);
            }
            let before = guard.snapshot();
            let arrived = Arc::new(AtomicUsize::new(0));
            let (tx, rx) = std::sync::mpsc::channel::<TaskTimes>();
            for _ in 0..n_block {
                let arrived = Arc::clone(&arrived);
                let tx = tx.clone();
                let monitor = TaskMonitor::new();
                let m2 = monitor.clone();
                let fut = monitor.instrument(async move {
                    let poll_start = Instant::now();
                    arrived.fetch_add(1, Ordering::AcqRel);
                    while arrived.load(Ordering::Acquire) < n_block
                        && poll_start.elapsed() < RENDEZVOUS
                    {
                        std::hint::spin_loop();
                    }
                    let block_start = Instant::now();
                    thread::sleep(Duration::from_millis(b));
                    let block_end = Instant::now();
                    (poll_start, block_start, block_end)
                });
                handle.spawn(async move {
                    let (poll_start, block_start, block_end) = fut.await;
                    let _ = tx.send(TaskTimes {
                        poll_start,
                        block_start,
                        block_end,
                        monitored_poll: m2.cumulative().total_poll_duration,
                    });
                });
            }
            drop(tx);
            let mut times: Vec<TaskTimes> = Vec::new();
            loop {
                match rx.recv_timeout(Duration::from_millis(1)) {
                    Ok(t) => times.push(t),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => observe(&guard),
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            if times.len() != n_block {
                return Err(format!(
                    "{flavor}: {} of {n_block} block tasks ran",
                    times.len()
                ));
            }
            // The runtime is fully blocked from the last block start to the first block end.
            let all_start = times.iter().map(|t| t.block_start).max();
            let all_end = times.iter().map(|t| t.block_end).min();
            let injected = match (all_start, all_end) {
                (Some(s), Some(e)) => e.saturating_duration_since(s),
                _ => Duration::ZERO,
            };
            // The blocking poll: from the first block task's poll start (the runtime is short
            // of a worker from then on: on multi_thread the others may still have to wake up and
            // reach their block) to the first block's end (a worker is free again). On
            // current_thread this is the block task's whole poll. Every probe delay the block
            // causes lies within it; `injected` (every worker blocked) lies within it too.
            let blocking_poll = match (
                times.iter().map(|t| t.poll_start).min(),
                times.iter().map(|t| t.block_end).min(),
            ) {
                (Some(s), Some(e)) => e.saturating_duration_since(s),
                _ => Duration::ZERO,
            };
            // Wait for two more windows to complete, so the block's window is published.
            let w0 = guard.snapshot().windows;
            let deadline = Instant::now() + WINDOW_WAIT;
            while guard.snapshot().windows < w0 + 2 && Instant::now() < deadline {
                observe(&guard);
                thread::sleep(Duration::from_millis(1));
            }
            observe(&guard);
            let after = guard.snapshot();
            // The blocking poll as the task itself timed it (its one poll: spin + sleep).
            let poll_err_ms = times
                .iter()
                .map(|t| {
                    let own = t.block_end.saturating_duration_since(t.poll_start);
                    (ms(t.monitored_poll) - ms(own)).abs()
                })
                .fold(0.0, f64::max);
            // Rendezvous spread: how long the first block task's worker was busy spinning
            // before the last one arrived (worker wake-up latency; ~0 on a quiet machine).
            let spin = match (
                times.iter().map(|t| t.poll_start).min(),
                times.iter().map(|t| t.block_start).max(),
            ) {
                (Some(a), Some(b)) => b.saturating_duration_since(a),
                _ => Duration::ZERO,
            };
            let monitored_poll_ms = times
                .iter()
                .map(|t| ms(t.monitored_poll))
                .fold(0.0, f64::max);
            let line = serde_json::json!({
                "bench": "probe_accuracy",
                "flavor": flavor,
                "sleep_reference": o.sleep_reference,
                "workers": n_block,
                "requested_ms": b,
                "repeat": rep,
                "injected_ms": ms(injected),
                "blocking_poll_ms": ms(blocking_poll),
                "rendezvous_spin_ms": ms(spin),
                "lw_delay_max_ms": load_ms(&peak_delay_max),
                "lw_stall_peak_ms": load_ms(&peak_stall),
                "lw_last_stall_ms": load_ms(&peak_last_stall),
                "lw_stalls_counted": after.stalls - before.stalls,
                "sleep_overshoot_ms": load_ms(&sleep_max),
                "task_monitor_poll_ms": monitored_poll_ms,
                "task_monitor_poll_abs_err_ms": poll_err_ms,
                "idle_skips": after.idle_skips - before.idle_skips,
                "probes": after.probes - before.probes,
            });
            println!("{line}");
        }
    }

    sleep_stop.store(true, Ordering::Relaxed);
    guard.shutdown();
    stop.notify_one();
    let _ = driver.join();
    Ok(())
}

fn main() -> std::process::ExitCode {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("probe_accuracy: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    for f in &o.flavors {
        if let Err(e) = run_flavor(f, &o) {
            eprintln!("probe_accuracy: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}
