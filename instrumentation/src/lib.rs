//! # loopwatch — event-loop health for tokio services
//!
//! loopwatch measures how long ready work waits before the tokio runtime polls it (scheduling
//! delay, "event-loop lag"), sees a stall *while it is happening*, and exports both with
//! OpenTelemetry (OTLP) to the `loopwatch-agent` sidecar or any OTLP receiver.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), loopwatch::StartError> {
//!     let guard = loopwatch::Loopwatch::builder()
//!         .service_name("example-service")
//!         .endpoint("http://127.0.0.1:4317")
//!         .protocol(loopwatch::Protocol::Grpc)
//!         .export_interval(Duration::from_secs(1))
//!         .probe_interval(Duration::from_millis(10))
//!         .stall_threshold(Duration::from_millis(250))
//!         .runtime_name("main")
//!         .start()?;
//!
//!     // ... serve ...
//!
//!     let snap = guard.snapshot();
//!     println!("p99 delay {:?}, stalls {}", snap.delay_p99, snap.stalls);
//!     guard.shutdown(); // final flush (bounded), stops loopwatch's threads
//!     Ok(())
//! }
//! ```
//!
//! ## What it does
//!
//! | feature | how |
//! |---|---|
//! | scheduling delay | OS thread `loopwatch-probe` spawns one tiny task every `probe_interval` through the runtime `Handle`; delay = first poll − spawn, µs precision, HDR histogram per window |
//! | coordinated omission | a delay `d` also records `d − i, d − 2i, …` (`i` = probe interval): a 1.5 s block puts ~1.5 s in p99 although only one probe was stuck |
//! | stall in progress | while a probe is outstanding its age is the current stall; past `stall_threshold` the stall is counted once, a `tracing` warning is logged and an export is forced at once |
//! | stall end | the window is completed and another export forced, so stall = 0 and the big p99 arrive together |
//! | who is blocking | Linux x86_64: when a stall passes `stall_threshold` or a worker starts a stuck episode (and again at twice the threshold), the probe thread interrupts each watched worker thread with a real-time signal (`SIGRTMIN+6`, [`LoopwatchBuilder::stall_stack_signal`]); the handler copies registers and up to 64 KiB of stack; the `loopwatch-stacks` thread unwinds and names the frames and reports a `tracing` warning and an OTLP log record `loopwatch.stall` / `tokio.worker.stuck` (`code.stacktrace`, `thread.id`, `thread.name`, `tokio.worker.index`, `loopwatch.stall.duration`) to the configured endpoint. On by default; [`LoopwatchBuilder::stall_stacks`], `LOOPWATCH_STALL_STACKS`. Threads are learned where the probe task runs, and by [`UnparkHook::install`] as they start and wake up |
//! | idle cost | a tick where every worker is parked (`worker_park_unpark_count` odd) spawns nothing — an idle runtime has no scheduling delay; one probe per window still runs (none with an [`UnparkHook`], which reports every wake-up). Delay statistics therefore describe ticks when the runtime was awake. Once the runtime has been *quiet* (every worker parked, none woke up in between) for 200 ms, the probe thread ticks every 25 ms instead of every probe interval, until it sees a worker awake; a request passing the route layer ([`http::RouteMetrics::layer`] of a running loopwatch) or [`shed::ShedLayer`] wakes it at once, so a block in that request is probed from its start (the probe waits half a probe interval, at most 4 ms, for the woken worker to get going: its start-up after a quiet spell is not the event loop's lag, and a block is then read up to that much low). A block that starts from a quiet runtime in other work is seen up to 25 ms after its start (read up to 25 ms low, a stall reported up to 25 ms later). With an [`UnparkHook`] on the runtime (`on_thread_unpark`), every wake-up of a worker wakes the probe thread, which then sleeps until the next heartbeat export (2.5 s, or the export interval if longer) while the runtime is quiet (0.4 wake-ups a second instead of 40) and probes any block from its start, after the same wait |
//! | unpark hook | [`UnparkHook::install`] on the runtime builder, then [`LoopwatchBuilder::unpark_hook`]: per worker wake-up one thread-local read, one atomic increment and one load |
//! | exports | loopwatch's own pipeline exports after every window in which the runtime was not quiet, at once on a stall (and once half way to `stall_threshold`: that export warms the export path, so the stall export at the threshold is not slowed by cold caches), its end and lifecycle changes, and otherwise every `max(export interval, 2.5 s)` as a heartbeat (the agent's default staleness is 5 s); a provider given with `meter_provider` exports on its own reader's schedule, plus the forced stall exports |
//! | runtime metrics | `tokio_metrics::RuntimeMonitor` (stable set), sampled once per window |
//! | independence | the `loopwatch-flush` thread collects and exports itself (gRPC on a current-thread runtime of its own that owns the channel; one thread wakes per export): nothing on the stall path needs the watched runtime |
//!
//! ## Windows and the "never high, never low" rule
//!
//! The probe thread completes a window every export interval and at the end of every stall. The
//! delay gauges report the last completed window. `delay.max` is the exact largest measured
//! delay (not an HDR bucket value) and every percentile and the mean are clamped to it, so
//! nothing reads higher than a really measured delay; `delay.min` is the exact smallest
//! sample, corrected samples included. If a window completes while a probe is
//! still outstanding beyond one probe interval, the window also includes that probe's current
//! age (with its corrected samples): a lower bound of the real delay, so an ongoing stall never
//! reads as a small lag either. An empty window (no probe finished, none outstanding) reports 0.
//! The probe samples: it sees a block only from its next spawn on, so it can read up to one
//! probe interval low, never high.
//!
//! ## Metrics (meter scope `loopwatch`; attribute `tokio.runtime.name` on every point)
//!
//! | name | instrument | unit | meaning |
//! |---|---|---|---|
//! | `tokio.schedule.duration` | histogram f64 (buckets 0.1 ms … 10 s) | s | probe delays, corrected samples included |
//! | `tokio.eventloop.delay.{min,max,mean,p50,p90,p99}` | observable gauge f64 | s | last completed window |
//! | `tokio.eventloop.stall.duration` | observable gauge f64 | s | age of the outstanding probe, 0 when none |
//! | `tokio.eventloop.stalls` | counter u64 | {stall} | probes that passed `stall_threshold` |
//! | `tokio.eventloop.utilization` | observable gauge f64 | 1 | busy ratio over the last window, averaged across workers, 0..1 |
//! | `tokio.runtime.workers` | observable gauge u64 | {thread} | worker threads |
//! | `tokio.runtime.tasks.alive` | observable gauge u64 | {task} | alive tasks |
//! | `tokio.runtime.global_queue.depth` | observable gauge u64 | {task} | tasks in the global queue |
//! | `tokio.worker.park.count` | observable counter u64 | {park} | parks since start, all workers |
//! | `tokio.worker.busy.duration` | observable counter f64 | s | busy time since start, all workers |
//!
//! Counters are cumulative. Tokio accounts a worker's busy time when it parks, so utilization of
//! a worker stuck in one long poll shows up after that poll returns.
//!
//! ## Stuck workers, heap growth, process (`--cfg tokio_unstable` adds the poll hooks)
//!
//! A worker of a `multi_thread` runtime blocked in one long poll hides behind the healthy
//! ones: the probe lands on a healthy worker and reads no delay. The `loopwatch-probe` thread
//! also checks every worker once per probe interval (at most every `stuck_threshold / 5`), on
//! the wake-ups it has anyway:
//!
//! | signal | when | what it tells | limits |
//! |---|---|---|---|
//! | runtime metrics (stable tokio) | always | worker `i` is awake (`worker_park_unpark_count` even) and has published no metrics (park/unpark count and busy time unchanged) for ≥ `stuck_threshold`. Tokio publishes a worker's metrics when it parks and every 61 scheduler ticks, so the worker is in one poll that long, or its polls average ≥ threshold / 61 | duration = time since loopwatch *saw* the worker's last metrics publish (up to one check interval less than since that publish, which may include < 61 short polls before the long one); no task identity; a worker in `block_in_place` hands its core away and is not reported; `multi_thread` only (on `current_thread` the stall detector covers it) |
//! | poll hooks (`--cfg tokio_unstable` + `install_poll_hooks`) | hooked runtimes | exact duration of each worker's current poll and the spawn location (`file:line:column`) of the task holding it; these take precedence | the runtime must be built with the hooks; they replace your own `on_before/after_task_poll` unless you call `before_task_poll`/`after_task_poll` from yours; the location is where the *task* was spawned: for an axum handler that is axum's per-connection task (`axum/src/serve/mod.rs`) |
//!
//! A worker passing the threshold starts a *stuck episode*: counted once, a `tracing` warning
//! `tokio.worker.stuck` with the worker index (and task spawn location) is logged, and an export
//! is forced so the agent hears of it during the block. [`LoopwatchGuard::stuck_workers`] returns
//! the workers stuck right now. Poll-hook cost per poll: one clock read and two atomic stores
//! into the worker thread's own slot (no lock, no allocation; a spawn location is interned
//! into a fixed 1024-entry table the first time it is seen).
//!
//! ```ignore
//! // Needs RUSTFLAGS="--cfg tokio_unstable".
//! let mut builder = tokio::runtime::Builder::new_multi_thread();
//! loopwatch::workers::install_poll_hooks(&mut builder).enable_all();
//! let rt = builder.build()?;
//! let guard = rt.block_on(async { loopwatch::Loopwatch::builder().start() })?;
//! ```
//!
//! Heap: install [`heap::CountingAllocator`] as the global allocator (opt-in; per-thread batching of
//! [`heap::COUNTING_BATCH_BYTES`], so no contended atomic per allocation, accurate to that many bytes
//! per thread) or build with the `jemalloc` feature on a jemalloc service. Live bytes are
//! sampled 30 times per `heap_window`; the growth rate is the least-squares slope over it.
//!
//! ```
//! #[global_allocator]
//! static ALLOC: loopwatch::heap::CountingAllocator = loopwatch::heap::CountingAllocator::system();
//! ```
//!
//! | cargo feature / cfg | adds |
//! |---|---|
//! | (default) | stuck workers from runtime metrics; `CountingAllocator`; process RSS/CPU (procfs on Linux, `sysinfo` elsewhere) |
//! | features `axum`, `grpc`, `http-proto`, `tracing-otlp` (default on) | the axum/tower layers and routers ([`http`], [`shed::ShedLayer`], [`health`], the in-flight count of [`shutdown`]); OTLP/gRPC export (tonic); OTLP/HTTP export (hyper); [`trace::OtlpTracing`] (with `grpc` or `http-proto`). Without an export feature, [`LoopwatchBuilder::meter_provider`] gives loopwatch your provider, and stall stacks are reported as `tracing` warnings only |
//! | feature `jemalloc` | heap from jemalloc `stats.allocated` (tikv-jemalloc-ctl) when no `CountingAllocator` is installed; the service must run on jemalloc: `#[global_allocator] static A: loopwatch::heap::Jemalloc = loopwatch::heap::Jemalloc;` (re-exported `tikv-jemallocator`). Off by default: jemalloc is compiled from C |
//! | `RUSTFLAGS="--cfg tokio_unstable"` | `install_poll_hooks`, `before_task_poll`, `after_task_poll`; the unstable runtime metrics below |
//!
//! | name | instrument | unit | meaning |
//! |---|---|---|---|
//! | `tokio.worker.stuck.duration` | observable gauge f64 | s | per worker (`tokio.worker.index`): how long it has been stuck, 0 when not; with poll hooks also `code.file.path`, `code.line.number`, `code.column.number` of the task's spawn location |
//! | `tokio.worker.stuck.episodes` | counter u64 | {episode} | workers passing `stuck_threshold` |
//! | `loopwatch.heap.allocated` | observable gauge u64 | By | live heap bytes (allocated − freed); absent without a source |
//! | `loopwatch.heap.growth_rate` | observable gauge f64 | By/s | slope of live bytes over `heap_window` (default 30 s) |
//! | `process.memory.usage` | observable updowncounter i64 | By | resident set size (procfs on Linux, `sysinfo` elsewhere); no attributes |
//! | `process.cpu.utilization` | observable gauge f64 | 1 | process CPU time since the previous collection / elapsed / CPUs available, 0..1; no attributes |
//! | `tokio.worker.poll.count` | observable counter u64 | {poll} | unstable: polls since start, all workers |
//! | `tokio.worker.steal.count` | observable counter u64 | {task} | unstable: tasks stolen, all workers |
//! | `tokio.worker.overflow.count` | observable counter u64 | {overflow} | unstable: local-queue overflows into the global queue |
//! | `tokio.worker.local_queue.depth` | observable gauge u64 | {task} | unstable: per worker (`tokio.worker.index`) |
//! | `tokio.worker.poll.time.mean` | observable gauge f64 | s | unstable: tokio's moving-average poll time, averaged across workers |
//! | `tokio.worker.poll.time.bucket` | observable counter u64 | {poll} | unstable: tokio's poll-time histogram (enabled by `install_poll_hooks`), one point per bucket, attribute `tokio.poll.time.le` = upper bound in s (`+Inf` last) |
//! | `tokio.runtime.blocking.threads`, `tokio.runtime.blocking.idle_threads` | observable gauge u64 | {thread} | unstable: blocking pool threads, idle ones |
//! | `tokio.runtime.blocking.queue.depth` | observable gauge u64 | {task} | unstable: tasks waiting for a blocking thread |
//! | `tokio.runtime.forced_yield.count` | observable counter u64 | {yield} | unstable: coop-budget forced yields |
//!
//! ## Environment variables (builder value > environment > default)
//!
#![doc = include_str!("env.md")]
//!
//! Unset and empty variables are ignored; a bad value fails [`LoopwatchBuilder::start`] with an
//! error naming the variable, as does an unreadable or invalid certificate file for an
//! `https://` endpoint. The certificate variables apply to `https://` endpoints only: for an
//! `http://` endpoint the generic forms are ignored (other exporters of the process may use
//! them) and a `_METRICS_` form is an error. Transport settings also apply to the stall-stack
//! log records and to [`trace::OtlpTracing`] over gRPC. `service.instance.id`, when not given, is
//! generated once per start as `<HOSTNAME or /etc/hostname or "host">-<pid>-<start time, ns since epoch, hex>`.
//!
//! ## Agent down
//!
//! Each export attempt is bounded by the export timeout ([`LoopwatchBuilder::DEFAULT_EXPORT_TIMEOUT`],
//! `OTEL_EXPORTER_OTLP_TIMEOUT`) and not retried (every export
//! carries the full cumulative state); the SDK aggregates by series, so nothing buffers without
//! bound; the probe never waits for an export.
//!
//! ## Service side: routes, task families, shedding, health, graceful shutdown, traces
//!
//! (Full reference with metric tables: `instrumentation/README.md`.)
//!
//! | piece | API |
//! |---|---|
//! | per-route HTTP metrics (`http.server.request.duration`, `http.server.active_requests`, route error ratio / latency windows, poll timing) | [`LoopwatchGuard::route_metrics`] → [`http::RouteMetrics::layer`] |
//! | per-request waiting on the `tracing` span (`loopwatch.waited_ms`, `loopwatch.poll_ms`) and OTLP traces | [`http::RouteLayer`], [`trace::OtlpTracing`] |
//! | named task families (`tokio.task.family.*`) | [`tasks::TaskFamily`], [`tasks::instrument_family`] |
//! | 503 + `Retry-After` while overloaded | [`shed::ShedLayer`] reading [`LoopwatchGuard::pressure`] |
//! | local `/livez`, `/readyz` | [`health::Health::router`] |
//! | SIGTERM → drain → stop accepting → wait → final export; `loopwatch.lifecycle.state` (0 running, 1 draining, 2 stopped) | [`shutdown::GracefulShutdown`], [`LoopwatchGuard::lifecycle`] |
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, body::Body, http::Request, routing::get};
//! use loopwatch::health::Health;
//! use loopwatch::http::RouteMetrics;
//! use loopwatch::shed::{Pressure, ShedLayer};
//! use loopwatch::shutdown::{Lifecycle, LifecycleState};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // From a running loopwatch: guard.route_metrics(), guard.pressure(), guard.lifecycle().
//! let routes = RouteMetrics::builder().build();
//! let pressure = Pressure::manual();
//! let lifecycle = Lifecycle::new();
//! let health = Health::builder().pressure(pressure.clone()).lifecycle(lifecycle.clone()).build();
//! let app = Router::new()
//!     .route("/items/{id}", get(|| async { "item" }))
//!     .merge(health.router())
//!     .layer(ShedLayer::builder(pressure.clone()).max_delay(Duration::from_millis(100)).build())
//!     .layer(routes.layer());
//! let get = |uri: &'static str| app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap());
//!
//! assert_eq!(get("/items/7").await.unwrap().status(), 200);
//! pressure.set_delay(Duration::from_millis(150)); // the runtime is late: shed
//! assert_eq!(get("/items/8").await.unwrap().status(), 503);
//! assert_eq!(get("/livez").await.unwrap().status(), 200); // health routes are exempt
//! lifecycle.set(LifecycleState::Draining);
//! assert_eq!(get("/readyz").await.unwrap().status(), 503);
//!
//! let items = routes.route("/items/{id}").unwrap();
//! assert_eq!((items.requests, items.errors), (2, 0)); // the shed 503 is shed, not an error
//! # }
//! ```
#![doc(html_no_source)]

mod config;
mod error;
mod export;
mod flush;
#[cfg(feature = "axum")]
pub mod health;
pub mod heap;
#[cfg(feature = "axum")]
pub mod http;
mod instruments;
mod live;
mod nudge;
mod observable;
mod probe;
mod process;
mod runtime;
pub mod shed;
pub mod shutdown;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod signal;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod stacks;
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
#[path = "stacks/off.rs"]
mod stacks;
mod start;
pub mod tasks;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod threads;
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
#[path = "threads_off.rs"]
mod threads;
#[cfg(any(feature = "grpc", feature = "http-proto"))]
mod tls;
#[cfg(all(
    feature = "tracing-otlp",
    any(feature = "grpc", feature = "http-proto")
))]
pub mod trace;
mod unpark;
pub mod workers;

pub use config::{Loopwatch, LoopwatchBuilder, Protocol};
pub use error::StartError;
pub use live::ProbeSnapshot;
pub use runtime::RuntimeSnapshot;
pub use start::LoopwatchGuard;
pub use unpark::UnparkHook;

/// The examples of `instrumentation/README.md`, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
