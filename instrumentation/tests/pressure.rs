//! `Pressure` (what `ShedLayer` and `Health` read) sees a block while it is still going on:
//! the stall in progress counts at once, not only after the window completes; after the block
//! the window p99 keeps it visible, and a `ShedLayer` sheds on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use tower::ServiceExt;

const BLOCK: Duration = Duration::from_millis(600);
const LIMIT: Duration = Duration::from_millis(200);

#[test]
fn pressure_reads_a_block_while_it_lasts_and_the_shed_layer_acts_on_it() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let guard = loopwatch::Loopwatch::builder()
        .meter_provider(SdkMeterProvider::builder().build())
        .probe_interval(Duration::from_millis(10))
        .export_interval(Duration::from_secs(60))
        .start_with_handle(rt.handle().clone())
        .expect("loopwatch");
    let pressure = guard.pressure();
    assert!(
        pressure.scheduling_delay() < LIMIT,
        "idle runtime is not late"
    );

    let blocking = Arc::new(AtomicBool::new(false));
    let b = Arc::clone(&blocking);
    let watcher = {
        let p = pressure.clone();
        let b = Arc::clone(&blocking);
        std::thread::spawn(move || {
            // Bounded: look for the block for at most 10 s.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if b.load(Ordering::SeqCst) && p.scheduling_delay() >= LIMIT {
                    // Seen while the block is still on (the flag is cleared after it).
                    return b.load(Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            false
        })
    };
    rt.block_on(async move {
        tokio::spawn(async move {
            b.store(true, Ordering::SeqCst);
            std::thread::sleep(BLOCK);
            b.store(false, Ordering::SeqCst);
        })
        .await
        .expect("block task");
    });
    assert!(
        watcher.join().expect("watcher"),
        "the pressure crossed {LIMIT:?} during the block"
    );
    assert!(!blocking.load(Ordering::SeqCst));

    // Right after: the completed window's p99 keeps it visible, and the shedder acts on it.
    let shed = loopwatch::shed::ShedLayer::builder(pressure.clone())
        .max_delay(LIMIT)
        .build();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(shed.clone());
    let status = rt.block_on(async {
        // The probe thread completes the stall's window right after the block (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(5);
        while guard.snapshot().last_stall.is_zero() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        app.oneshot(Request::get("/").body(Body::empty()).expect("req"))
            .await
            .expect("infallible")
            .status()
    });
    assert_eq!(status, 503, "shed right after the block");
    assert_eq!(shed.shed_count(), 1);
    guard.shutdown();
}
