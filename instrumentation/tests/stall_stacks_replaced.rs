//! An application that takes loopwatch's stall-stack signal after `start()` (its own handler,
//! or the default action, which for a real-time signal terminates the process) is never sent
//! that signal: the stall is still measured, the process lives, and the application's handler
//! never runs. A process of its own: the signal disposition is process-wide.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
// Installing the application's handler needs `sigaction`, which is unsafe.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use opentelemetry_sdk::metrics::SdkMeterProvider;

const SIGNAL_OFFSET: i32 = 6;
static APP_HANDLER_RAN: AtomicU32 = AtomicU32::new(0);

extern "C" fn app_handler(_: libc::c_int) {
    APP_HANDLER_RAN.fetch_add(1, Ordering::Relaxed);
}

fn set_disposition(sig: i32, handler: libc::sighandler_t) {
    // SAFETY: valid, zero-initialized structs; the handler only does an atomic add.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
}

#[inline(never)]
fn sleep_in_user_code(d: Duration) {
    std::thread::sleep(d);
}

#[test]
fn a_replaced_handler_is_never_signalled() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Nothing listens on port 9 (discard): exports fail fast, which is not under test here.
    let guard = rt
        .block_on(async {
            loopwatch::Loopwatch::builder()
                .meter_provider(SdkMeterProvider::builder().build())
                .endpoint("http://127.0.0.1:9")
                .stall_threshold(Duration::from_millis(100))
                .stall_stacks(true)
                .start()
        })
        .expect("start");
    let sig = libc::SIGRTMIN() + SIGNAL_OFFSET;
    let stalls_before = guard.snapshot().stalls;
    for (what, handler) in [
        ("SIG_DFL", libc::SIG_DFL),
        (
            "the application's handler",
            app_handler as extern "C" fn(libc::c_int) as libc::sighandler_t,
        ),
    ] {
        set_disposition(sig, handler);
        rt.block_on(async {
            // Ordinary probes first, so the probe task has noted this thread.
            tokio::time::sleep(Duration::from_millis(200)).await;
            sleep_in_user_code(Duration::from_millis(600));
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        // Still here: with SIG_DFL, a sent signal would have terminated the test process.
        assert_eq!(
            APP_HANDLER_RAN.load(Ordering::Relaxed),
            0,
            "loopwatch signalled a thread whose signal runs {what}"
        );
    }
    assert!(
        guard.snapshot().stalls >= stalls_before + 2,
        "both blocks are still measured as stalls"
    );
    drop(rt);
    guard.shutdown();
}
