//! Helpers shared by the integration tests: inject a real block into a runtime and watch the
//! guard's snapshot while it lasts.
#![allow(dead_code, unreachable_pub)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use loopwatch::{LoopwatchGuard, ProbeSnapshot};

/// Probe interval used by the tests.
pub const PROBE: Duration = Duration::from_millis(10);
/// The probe samples: a block that starts right after a probe finished is seen from the next
/// spawn on, `PROBE` later plus however late the OS wakes the probe thread (sub-ms when idle,
/// a few ms on a loaded 2-core machine). So the corrected p99 can read this much below the
/// injected block: a sampling bound, not a speed threshold. It never reads above it.
pub const SAMPLING_SLACK: Duration = Duration::from_millis(PROBE.as_millis() as u64 + 5);
/// How much a reading may exceed the injected block as the blocking task measured it: the
/// worker returns from the block's poll and then polls the probe, and on a loaded 2-core
/// machine (two tests of a binary run at once, each with its runtime, probe and export threads)
/// the OS may run it that much later. That delay is real and the probe rightly counts it; the
/// bound still catches a reading that adds anything of its own (a second block, double
/// counting). Not a speed threshold.
pub const OVER_READ_SLACK: Duration = Duration::from_millis(25);
/// Lowest correct p99 of a window holding a block of `injected` among `samples` samples.
///
/// The corrected samples of a block `d` form a ramp `d, d - PROBE, d - 2 PROBE, ...`. The p99
/// sits `ceil(1% of samples) - 1` samples below the top, i.e. that many probe intervals below
/// the real probe's `d`, which itself is up to `SAMPLING_SLACK` below the injected block. (For
/// a 1.5 s block at 10 ms this is >= 1.47 s.)
pub fn p99_floor(injected: Duration, samples: u64) -> Duration {
    let below_top = u32::try_from(samples.div_ceil(100)).unwrap_or(u32::MAX);
    injected.saturating_sub(SAMPLING_SLACK + PROBE * below_top)
}

/// Stall threshold used by the tests.
pub const THRESHOLD: Duration = Duration::from_millis(150);

/// Records the real extent of an injected block: from the moment the first worker is taken
/// until the last one is released ([`BlockState::injected`], the most a reading may show),
/// and the part during which every worker is blocked at once, from the last one taken until
/// the first one released ([`BlockState::fully_blocked`], the least a reading must show: the
/// probe task runs on any free worker).
#[derive(Default)]
pub struct BlockState {
    pub blocking: AtomicBool,
    pub finish: AtomicBool,
    arrived: AtomicUsize,
    start: Mutex<Option<Instant>>,
    end: Mutex<Option<Instant>>,
    last_taken: Mutex<Option<Instant>>,
    first_released: Mutex<Option<Instant>>,
}

impl BlockState {
    /// Blocks the calling worker thread. With `workers > 1`, first waits (bounded) until
    /// `workers` tasks are all inside, so every worker is blocked at once, then sleeps `d`.
    pub fn block(&self, workers: usize, d: Duration) {
        {
            let mut s = self.start.lock().expect("start lock");
            if s.is_none() {
                *s = Some(Instant::now());
            }
        }
        self.blocking.store(true, Ordering::SeqCst);
        if self.arrived.fetch_add(1, Ordering::SeqCst) + 1 == workers {
            *self.last_taken.lock().expect("taken lock") = Some(Instant::now());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.arrived.load(Ordering::SeqCst) < workers && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        assert!(
            self.arrived.load(Ordering::SeqCst) >= workers,
            "not every worker picked up a blocking task"
        );
        std::thread::sleep(d);
        self.first_released
            .lock()
            .expect("released lock")
            .get_or_insert_with(Instant::now);
        let done = self.arrived.fetch_sub(1, Ordering::SeqCst) == 1;
        if done {
            *self.end.lock().expect("end lock") = Some(Instant::now());
            self.blocking.store(false, Ordering::SeqCst);
        }
    }

    /// Real length of the block, once it ended.
    pub fn injected(&self) -> Option<Duration> {
        let s = (*self.start.lock().expect("start lock"))?;
        let e = (*self.end.lock().expect("end lock"))?;
        Some(e - s)
    }

    /// How long every worker was blocked at once, once the block ended.
    pub fn fully_blocked(&self) -> Option<Duration> {
        let s = (*self.last_taken.lock().expect("taken lock"))?;
        let e = (*self.first_released.lock().expect("released lock"))?;
        Some(e.saturating_duration_since(s))
    }

    /// When the block ended.
    pub fn end(&self) -> Option<Instant> {
        *self.end.lock().expect("end lock")
    }

    pub fn ended(&self) -> bool {
        self.end.lock().expect("end lock").is_some()
    }
}

/// What the guard reported while the block was in progress.
#[derive(Debug, Default)]
pub struct Observed {
    pub max_stall_during: Duration,
    pub max_stalls_during: u64,
    pub snapshots_during: u32,
}

/// Polls the snapshot every 2 ms until the block ended (bounded by 20 s).
pub fn observe_block(guard: &LoopwatchGuard, state: &BlockState) -> Observed {
    let mut o = Observed::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !state.ended() && Instant::now() < deadline {
        let s = guard.snapshot();
        // Only count snapshots taken while the block is certainly in progress.
        if state.blocking.load(Ordering::SeqCst) && !state.ended() {
            o.snapshots_during += 1;
            o.max_stall_during = o.max_stall_during.max(s.current_stall);
            o.max_stalls_during = o.max_stalls_during.max(s.stalls);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    o
}

/// Waits (bounded by 10 s) until the probe has seen the stall end.
pub fn wait_stall_end(guard: &LoopwatchGuard) -> ProbeSnapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = guard.snapshot();
        if s.last_stall > Duration::ZERO && s.current_stall < THRESHOLD {
            return s;
        }
        assert!(Instant::now() < deadline, "stall end never seen: {s:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The checks every block test makes.
pub fn assert_block_reported(o: &Observed, after: &ProbeSnapshot, state: &BlockState) {
    let injected = state.injected().expect("block ended");
    let fully = state.fully_blocked().expect("block ended");
    eprintln!("injected {injected:?} (fully blocked {fully:?}); during {o:?}; after {after:?}");
    assert!(o.snapshots_during > 0, "no snapshot taken during the block");
    assert!(
        o.max_stall_during >= THRESHOLD,
        "current stall never passed the threshold during the block: {o:?}"
    );
    assert_eq!(
        o.max_stalls_during, 1,
        "stall not counted once during the block: {o:?}"
    );
    assert_eq!(after.stalls, 1, "{after:?}");
    assert_eq!(after.current_stall.max(THRESHOLD), THRESHOLD, "{after:?}");
    // The one real probe that hit the block measured it, up to the sampling gap...
    assert!(
        after.delay_max + SAMPLING_SLACK >= fully,
        "max {:?} < fully blocked {fully:?} - sampling slack; {after:?}",
        after.delay_max
    );
    // ... and coordinated-omission correction puts the block into the tail.
    let floor = p99_floor(fully, after.window_samples);
    assert!(
        after.delay_p99 >= floor,
        "p99 {:?} < {floor:?} for fully blocked {fully:?}; {after:?}",
        after.delay_p99
    );
    // ... and nothing ever reads higher than the real block.
    assert!(
        after.delay_max <= injected + OVER_READ_SLACK,
        "max {:?} > injected {injected:?} + {OVER_READ_SLACK:?}; {after:?}",
        after.delay_max
    );
    assert!(after.delay_p99 <= after.delay_max, "{after:?}");
    assert!(after.last_stall <= injected + OVER_READ_SLACK, "{after:?}");
}

/// Serves an OTLP/gRPC metrics receiver on 127.0.0.1 (any free port) on a runtime of its own,
/// never a watched one. Keep the returned runtime alive while the receiver is needed.
pub fn serve_metrics<R>(receiver: R) -> (tokio::runtime::Runtime, std::net::SocketAddr)
where
    R: opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService,
{
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer;
    serve_grpc(tonic::transport::Server::builder().add_service(MetricsServiceServer::new(receiver)))
}

/// Serves these gRPC routes on 127.0.0.1 (any free port) on a runtime of its own, never a
/// watched one. Keep the returned runtime alive while the server is needed.
pub fn serve_grpc(
    routes: tonic::transport::server::Router,
) -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    server_rt.spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = routes.serve_with_incoming(incoming).await;
    });
    (server_rt, addr)
}
