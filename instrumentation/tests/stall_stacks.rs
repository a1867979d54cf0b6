//! Stall stacks end to end: a runtime blocked in a named user function is reported, while the
//! block lasts, as an OTLP log record over gRPC whose `code.stacktrace` names that function.
//! Both flavours; a CPU spin and `std::thread::sleep`; the second capture at twice the
//! threshold; a signal landing in allocator calls; many captures in a row.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_sdk::metrics::SdkMeterProvider;

/// Every allocation of these tests goes through loopwatch's counting allocator, so that a
/// signal landing in `malloc`/`free` lands inside it too.
#[global_allocator]
static ALLOC: loopwatch::heap::CountingAllocator = loopwatch::heap::CountingAllocator::system();

const THRESHOLD: Duration = Duration::from_millis(100);
/// Generous upper bound on waiting for reports (never a timing assertion).
const WAIT: Duration = Duration::from_secs(60);

/// One received log record: event name, attributes rendered as strings, resource instance.
#[derive(Debug, Clone)]
struct Record {
    event: String,
    attrs: BTreeMap<String, String>,
    service_instance: Option<String>,
}

#[derive(Default, Clone)]
struct Receiver(Arc<Mutex<Vec<Record>>>);

fn render(v: Option<&Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().expect("lock");
        for rl in request.into_inner().resource_logs {
            let instance = rl.resource.as_ref().and_then(|r| {
                r.attributes
                    .iter()
                    .find(|kv| kv.key == "service.instance.id")
                    .map(|kv| render(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            });
            for sl in rl.scope_logs {
                for lr in sl.log_records {
                    let attrs = lr
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = render(kv.value.as_ref().and_then(|v| v.value.as_ref()));
                            (kv.key.clone(), v)
                        })
                        .collect();
                    got.push(Record {
                        event: lr.event_name.clone(),
                        attrs,
                        service_instance: instance.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

#[inline(never)]
fn spin_in_user_code(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

#[inline(never)]
fn sleep_in_user_code(d: Duration) {
    std::thread::sleep(d);
}

#[inline(never)]
fn allocate_in_user_code(d: Duration) {
    let end = Instant::now() + d;
    let mut keep = Vec::new();
    while Instant::now() < end {
        keep.push(vec![0u8; 64]);
        if keep.len() > 1000 {
            keep.clear();
        }
    }
}

#[inline(never)]
fn wait_on_mutex_in_user_code(d: Duration) {
    let m = Arc::new(Mutex::new(()));
    let (held_tx, held) = std::sync::mpsc::channel();
    let holder = {
        let m = Arc::clone(&m);
        std::thread::spawn(move || {
            let _g = m.lock().expect("lock");
            let _ = held_tx.send(());
            std::thread::sleep(d);
        })
    };
    let _ = held.recv();
    drop(m.lock().expect("lock"));
    holder.join().expect("holder");
}

#[inline(never)]
fn read_socket_in_user_code(d: Duration) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut stream =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let _peer = listener.accept().expect("accept");
    let end = Instant::now() + d;
    // A socket read with a timeout is not restarted after a signal (SO_RCVTIMEO): it returns
    // `Interrupted`, which careful code retries, as here (std's `read_exact` does too).
    while let Some(left) = end
        .checked_duration_since(Instant::now())
        .filter(|l| !l.is_zero())
    {
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut [0u8; 16]) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            _ => break,
        }
    }
}

#[inline(never)]
fn read_fifo_in_user_code(d: Duration) {
    use std::io::Read;
    let path = std::env::temp_dir().join(format!("loopwatch-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            std::thread::sleep(d);
            let _ = std::fs::write(&path, b"done");
        })
    };
    // Opening a FIFO for reading blocks until the writer opens it; the read then blocks too.
    let mut buf = Vec::new();
    let _ = std::fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut buf));
    writer.join().expect("writer");
    let _ = std::fs::remove_file(&path);
}

#[inline(never)]
fn panic_and_catch_in_user_code(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let _ = std::panic::catch_unwind(|| std::panic::panic_any(7u8));
    }
}

#[inline(never)]
fn take_own_backtraces_in_user_code(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::black_box(std::backtrace::Backtrace::force_capture().to_string());
    }
}

/// Starts a watched runtime (`workers` = 0: current_thread), blocks it with `block` for `d`
/// on every worker, and returns the records received until `enough` says so.
fn run(
    workers: usize,
    block: fn(Duration),
    d: Duration,
    enough: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    run_with(workers, block, d, enough, true)
}

/// [`run`] with stall stacks on or off.
fn run_with(
    workers: usize,
    block: fn(Duration),
    d: Duration,
    enough: impl Fn(&[Record]) -> bool,
    stall_stacks: bool,
) -> Vec<Record> {
    let receiver = Receiver::default();
    let (_server, addr) = common::serve_grpc(
        tonic::transport::Server::builder().add_service(LogsServiceServer::new(receiver.clone())),
    );
    let hook = loopwatch::UnparkHook::new();
    let rt = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        hook.install(&mut b).worker_threads(workers).enable_all();
        b.build()
    }
    .expect("runtime");
    let mut builder = loopwatch::Loopwatch::builder()
        .meter_provider(SdkMeterProvider::builder().build())
        .endpoint(format!("http://{addr}"))
        .stall_threshold(THRESHOLD)
        .stuck_threshold(THRESHOLD)
        .runtime_name("stacks")
        .stall_stacks(stall_stacks);
    if workers > 0 {
        builder = builder.unpark_hook(hook);
    }
    let guard = rt.block_on(async { builder.start() }).expect("start");
    let done = Arc::new(AtomicBool::new(false));
    let d2 = Arc::clone(&done);
    let driver = std::thread::spawn(move || {
        rt.block_on(async move {
            // Ordinary probes first: the probe task notes the thread(s) it runs on.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let tasks: Vec<_> = (0..workers.max(1))
                .map(|_| tokio::spawn(async move { block(d) }))
                .collect();
            for t in tasks {
                let _ = t.await;
            }
            while !d2.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    });
    let deadline = Instant::now() + WAIT;
    let got = loop {
        let got = receiver.0.lock().expect("lock").clone();
        if enough(&got) || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    done.store(true, Ordering::Release);
    driver.join().expect("driver");
    guard.shutdown();
    got
}

fn stalls(got: &[Record]) -> Vec<&Record> {
    got.iter()
        .filter(|r| r.event == "loopwatch.stall")
        .collect()
}

fn names(r: &Record, f: &str) -> bool {
    r.attrs
        .get("code.stacktrace")
        .is_some_and(|s| s.contains(f))
}

fn assert_named(got: &[Record], f: &str, want: usize) {
    let s = stalls(got);
    assert!(s.len() >= want, "want {want} stall reports: {got:#?}");
    for r in &s {
        assert!(names(r, f), "report does not name {f}: {r:#?}");
        assert!(
            r.attrs
                .get("thread.id")
                .is_some_and(|t| t.parse::<i64>().is_ok_and(|t| t > 0))
        );
        assert!(r.attrs.contains_key("thread.name"), "{r:#?}");
        let dur: f64 = r.attrs["loopwatch.stall.duration"]
            .parse()
            .expect("duration");
        assert!(dur >= THRESHOLD.as_secs_f64(), "{r:#?}");
        assert!(r.service_instance.is_some(), "{r:#?}");
    }
}

#[test]
fn current_thread_spin_is_named_twice_during_the_stall() {
    let got = run(0, spin_in_user_code, Duration::from_millis(800), |g| {
        stalls(g).len() >= 2
    });
    assert_named(&got, "spin_in_user_code", 2);
    let s = stalls(&got);
    assert_eq!(s[0].attrs["tokio.worker.index"], "0");
    assert_eq!(s[0].attrs["loopwatch.stall.capture"], "1");
    assert_eq!(s[1].attrs["loopwatch.stall.capture"], "2");
    // The user function sits above the runtime's frames: those stay below it.
    let st = &s[0].attrs["code.stacktrace"];
    let user = st.find("spin_in_user_code").expect("user frame");
    let rt = st.find("tokio::runtime").expect("runtime frames kept");
    assert!(user < rt, "{st}");
}

#[test]
fn current_thread_sleep_is_named() {
    let got = run(0, sleep_in_user_code, Duration::from_millis(800), |g| {
        stalls(g).len() >= 2
    });
    assert_named(&got, "sleep_in_user_code", 2);
}

#[test]
fn multi_thread_spin_on_every_worker_names_each_worker() {
    let got = run(2, spin_in_user_code, Duration::from_millis(800), |g| {
        stalls(g).len() >= 4
    });
    assert_named(&got, "spin_in_user_code", 4);
    let threads: std::collections::BTreeSet<_> = stalls(&got)
        .iter()
        .map(|r| r.attrs["thread.id"].clone())
        .collect();
    assert_eq!(threads.len(), 2, "{got:#?}");
    // With tokio_unstable, tokio names each worker thread's index; on stable it is unknown
    // for a runtime-wide stall of a multi_thread runtime.
    let indexes: std::collections::BTreeSet<_> = stalls(&got)
        .iter()
        .filter_map(|r| r.attrs.get("tokio.worker.index").cloned())
        .collect();
    if cfg!(tokio_unstable) {
        assert_eq!(indexes.len(), 2, "{got:#?}");
    } else {
        assert!(indexes.is_empty(), "{got:#?}");
    }
}

#[test]
fn multi_thread_sleep_is_named() {
    let got = run(2, sleep_in_user_code, Duration::from_millis(800), |g| {
        stalls(g).len() >= 2
    });
    assert_named(&got, "sleep_in_user_code", 2);
}

#[test]
fn a_signal_landing_in_allocation_is_harmless() {
    let got = run(0, allocate_in_user_code, Duration::from_millis(800), |g| {
        stalls(g).len() >= 2
    });
    // Every capture arrives with a stack. A signal landing deep in glibc's malloc (growing the
    // heap) can end the walk there, so one of the two captures naming the caller is required.
    let s = stalls(&got);
    assert!(s.len() >= 2, "{got:#?}");
    assert!(
        s.iter().all(|r| r
            .attrs
            .get("code.stacktrace")
            .is_some_and(|t| t.contains("   0: "))),
        "{got:#?}"
    );
    assert!(
        s.iter().any(|r| names(r, "allocate_in_user_code")),
        "{got:#?}"
    );
}

#[test]
fn a_mutex_wait_is_named() {
    let got = run(
        0,
        wait_on_mutex_in_user_code,
        Duration::from_millis(800),
        |g| stalls(g).len() >= 2,
    );
    assert_named(&got, "wait_on_mutex_in_user_code", 2);
}

#[test]
fn a_blocking_socket_read_is_named() {
    let got = run(
        0,
        read_socket_in_user_code,
        Duration::from_millis(800),
        |g| stalls(g).len() >= 2,
    );
    assert_named(&got, "read_socket_in_user_code", 2);
}

#[test]
fn a_blocking_file_read_is_named() {
    let got = run(0, read_fifo_in_user_code, Duration::from_millis(800), |g| {
        stalls(g).len() >= 2
    });
    assert_named(&got, "read_fifo_in_user_code", 2);
}

#[test]
fn a_signal_during_panic_unwinding_is_harmless() {
    // Silence the caught panics' messages; the hook is process-wide, restored after.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let got = run(
        0,
        panic_and_catch_in_user_code,
        Duration::from_millis(800),
        |g| stalls(g).len() >= 2,
    );
    std::panic::set_hook(hook);
    assert_named(&got, "panic_and_catch_in_user_code", 2);
}

#[test]
fn a_signal_while_the_app_takes_its_own_backtrace_is_harmless() {
    let got = run(
        0,
        take_own_backtraces_in_user_code,
        Duration::from_millis(800),
        |g| stalls(g).len() >= 2,
    );
    // Both captures arrive and the app's own backtraces keep working (the block ran to its
    // end). The signal often lands inside glibc's malloc here, whose unwind rules framehop
    // cannot always follow: the walk may end there, so only the stack's presence is checked.
    let s = stalls(&got);
    assert!(s.len() >= 2, "{got:#?}");
    for r in s {
        let st = r.attrs.get("code.stacktrace");
        assert!(st.is_some_and(|t| t.contains("   0: ")), "{r:#?}");
    }
}

#[test]
fn stall_stacks_off_reports_nothing() {
    // `enough` never holds: the run waits for the driver's block to end, then a while longer
    // for anything late (bounded by WAIT; a report would end the wait early and fail below).
    let started = Instant::now();
    let got = run_with(
        0,
        spin_in_user_code,
        Duration::from_millis(600),
        |g| !g.is_empty() || started.elapsed() > Duration::from_secs(3),
        false,
    );
    assert!(got.is_empty(), "{got:#?}");
}

#[inline(never)]
fn block_in_place_in_user_code(d: Duration) {
    tokio::task::block_in_place(|| spin_in_user_code(d));
}

#[test]
fn a_block_in_place_worker_is_not_a_stall() {
    // `block_in_place` hands the worker's core to a new thread before the closure runs: the
    // runtime keeps scheduling, so there is no stall and no stuck worker to report.
    let started = Instant::now();
    let got = run(
        2,
        block_in_place_in_user_code,
        Duration::from_millis(600),
        |g| !g.is_empty() || started.elapsed() > Duration::from_secs(3),
    );
    assert!(got.is_empty(), "{got:#?}");
}

/// A current_thread runtime with the unpark hook, watched from outside (`start_with_handle`)
/// and driven by a second thread after a first one: the only thread the probe has run on is
/// gone, the runtime is quiet (the hook lets the probe spawn nothing), and then a block starts
/// on the new thread. The hook saw that thread wake up, so its stack is the one reported.
#[test]
fn a_current_thread_runtime_moved_to_a_new_thread_is_captured_there() {
    let receiver = Receiver::default();
    let (_server, addr) = common::serve_grpc(
        tonic::transport::Server::builder().add_service(LogsServiceServer::new(receiver.clone())),
    );
    let hook = loopwatch::UnparkHook::new();
    let mut b = tokio::runtime::Builder::new_current_thread();
    hook.install(&mut b).enable_all();
    let rt = Arc::new(b.build().expect("runtime"));
    let guard = loopwatch::Loopwatch::builder()
        .meter_provider(SdkMeterProvider::builder().build())
        .endpoint(format!("http://{addr}"))
        .stall_threshold(THRESHOLD)
        .runtime_name("moved")
        .unpark_hook(hook)
        .start_with_handle(rt.handle().clone())
        .expect("start");
    // The first driver runs the first probes, then ends.
    let first = Arc::clone(&rt);
    std::thread::spawn(move || {
        first.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    })
    .join()
    .expect("first driver");
    let second = Arc::clone(&rt);
    let driver = std::thread::spawn(move || {
        second.block_on(async {
            // Quiet for longer than the probe needs to call the runtime quiet.
            tokio::time::sleep(Duration::from_millis(400)).await;
            sleep_in_user_code(Duration::from_millis(600));
        });
    });
    let deadline = Instant::now() + WAIT;
    let got = loop {
        let got = receiver.0.lock().expect("lock").clone();
        if !stalls(&got).is_empty() || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    driver.join().expect("second driver");
    guard.shutdown();
    assert_named(&got, "sleep_in_user_code", 1);
}
