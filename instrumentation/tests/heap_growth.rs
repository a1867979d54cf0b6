//! A task that leaks at a known rate: `loopwatch.heap.growth_rate` (from the counting global
//! allocator) matches it within 10%; `loopwatch.heap.allocated` and the process metrics are
//! exported.

mod capture;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loopwatch::heap::{CountingAllocator, HeapSource};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::system();

/// Growth-rate window used here (generous: 60 samples of the leak's 5 ms ticks per sample).
const WINDOW: Duration = Duration::from_secs(2);
const CHUNK: usize = 32 * 1024;
const TICK: Duration = Duration::from_millis(5);

/// Least-squares slope of (t, bytes) in bytes/s.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mb = points.iter().map(|p| p.1).sum::<f64>() / n;
    let num: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - mb)).sum();
    let den: f64 = points.iter().map(|p| (p.0 - mt) * (p.0 - mt)).sum();
    num / den
}

#[test]
fn known_leak_rate_is_measured_within_ten_percent() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (provider, capture) = capture::provider();
    let guard = loopwatch::Loopwatch::builder()
        .meter_provider(provider.clone())
        .heap_window(WINDOW)
        .export_interval(Duration::from_secs(60))
        .start_with_handle(rt.handle().clone())
        .expect("start");

    // The leak: CHUNK bytes every TICK, kept forever; the test records what it really leaked
    // and when, so the reference rate does not depend on timer accuracy.
    let base = Instant::now();
    let log: Arc<Mutex<Vec<(f64, f64)>>> = Arc::new(Mutex::new(Vec::with_capacity(2000)));
    let leak_log = Arc::clone(&log);
    let leaker = rt.spawn(async move {
        let mut kept: Vec<Vec<u8>> = Vec::with_capacity(2000);
        let mut tick = tokio::time::interval(TICK);
        let until = Instant::now() + WINDOW * 2 + Duration::from_millis(500);
        let mut leaked = 0usize;
        while Instant::now() < until && kept.len() < 2000 {
            tick.tick().await;
            kept.push(vec![1u8; CHUNK]);
            leaked += CHUNK;
            leak_log
                .lock()
                .expect("log")
                .push((base.elapsed().as_secs_f64(), leaked as f64));
        }
        kept
    });

    // Once the window holds only leak samples (leak running > WINDOW + margin), compare.
    std::thread::sleep(WINDOW + Duration::from_millis(1500));
    let now = base.elapsed().as_secs_f64();
    let heap = guard.heap();
    provider.force_flush().expect("force_flush");
    let reference = {
        let log = log.lock().expect("log");
        let recent: Vec<(f64, f64)> = log
            .iter()
            .copied()
            .filter(|p| p.0 >= now - WINDOW.as_secs_f64())
            .collect();
        assert!(
            recent.len() > 100,
            "leak did not run: {} samples",
            recent.len()
        );
        (slope(&recent), recent.last().map_or(0.0, |p| p.1))
    };
    let (reference, leaked_by_then) = reference;
    let kept = rt.block_on(leaker).expect("leaker");
    eprintln!(
        "heap {heap:?}; reference {reference:.0} B/s; kept {}",
        kept.len()
    );

    assert_eq!(heap.source, Some(HeapSource::CountingAllocator));
    let rate = heap.growth_rate.expect("growth rate");
    let err = (rate - reference).abs() / reference;
    assert!(
        err <= 0.10,
        "growth rate {rate:.0} B/s vs leaked {reference:.0} B/s: {:.1}% off",
        err * 100.0
    );
    assert!(heap.window >= WINDOW / 2, "{heap:?}");
    let allocated = heap.allocated.expect("allocated");
    // The heap sample is at most one sample period (WINDOW / 30, ~14 chunks) older than the
    // snapshot; allow 100 chunks.
    assert!(
        allocated as f64 >= leaked_by_then - 100.0 * CHUNK as f64,
        "allocated {allocated} below the {leaked_by_then} bytes leaked by then"
    );

    let points = capture.0.lock().expect("capture").clone();
    let value = |name: &str| {
        points
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("{name} not exported: {points:?}"))
    };
    assert!(value("loopwatch.heap.allocated") > 0.0);
    let exported_rate = value("loopwatch.heap.growth_rate");
    assert!(
        (exported_rate - reference).abs() / reference <= 0.10,
        "exported {exported_rate}"
    );
    // The process holds at least what was leaked in resident memory (the chunks are written).
    let rss = value("process.memory.usage");
    assert!(rss >= (kept.len() / 2 * CHUNK) as f64, "rss {rss}");
    let cpu = value("process.cpu.utilization");
    assert!((0.0..=1.0).contains(&cpu), "cpu {cpu}");

    drop(kept);
    guard.shutdown();
    let _ = provider.shutdown();
    rt.shutdown_timeout(Duration::from_secs(5));
}
