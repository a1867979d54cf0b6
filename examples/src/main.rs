//! `example-service`: an axum service instrumented with loopwatch.
//!
//! Routes:
//!
//! | route | what it does |
//! |---|---|
//! | `GET /` | answers at once |
//! | `GET /block?ms=N[&how=H]` | blocks the runtime thread for N ms (capped at 60 s): `how` is `sleep` (`std::thread::sleep`, the default), `mutex` (a `std::sync::Mutex` held by another thread), `net` (a blocking `std::net` read) or `file` (a blocking `std::fs::File` read) |
//! | `GET /fail` | answers 500 |
//! | `GET /sleep?ms=N` | waits N ms asynchronously (capped at 60 s): a slow but well-behaved request |
//! | `GET /items/{id}` | answers at once (a templated route: `http.route` is `/items/{id}`) |
//! | `GET /alloc?bytes=N` | allocates N bytes and keeps them (heap-growth demo; 1 GiB total cap) |
//! | `GET /spin?ms=N` | burns CPU on its worker for N ms (capped at 60 s): with `--workers 4` one stuck worker hides behind healthy ones; loopwatch reports `tokio.worker.stuck.duration` |
//! | `GET /livez`, `GET /readyz` | loopwatch's local health router (readiness 503 while overloaded or draining) |
//!
//! Every route goes through loopwatch's `RouteLayer` (`http.server.*` metrics per route, request
//! spans with `loopwatch.waited_ms`), optionally a `ShedLayer` (`--shed-delay-ms`), and the
//! server shuts down with `GracefulShutdown`: on SIGTERM readiness goes 503 and
//! `loopwatch.lifecycle.state` = 1 is exported, after `--drain-delay-ms` the listener closes,
//! in-flight requests finish (bounded by `--drain-deadline-ms`), then the final export carries
//! `loopwatch.lifecycle.state` = 2.
//!
//! It runs a `current_thread` runtime by default, like a Node.js event loop: one blocking
//! handler stalls every request. `--workers N` (N ≥ 1) switches to a `multi_thread` runtime.
//!
//! The global allocator is `loopwatch::heap::CountingAllocator` (`loopwatch.heap.allocated`,
//! `loopwatch.heap.growth_rate`). Built with `RUSTFLAGS="--cfg tokio_unstable"`, the
//! `multi_thread` runtime gets loopwatch's poll hooks (stuck reports name the task's spawn
//! location) and the unstable runtime metrics.
//!
//! Telemetry goes to the OTLP endpoint from the standard `OTEL_*` variables (default
//! `http://127.0.0.1:4317`, where `loopwatch-agent` listens). On start it prints
//! `example-service listening on http://ADDR` to stdout.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Parser;
use serde::Deserialize;

mod blocking;

/// Counts live heap bytes for `loopwatch.heap.*`.
#[cfg(feature = "counting-alloc")]
#[global_allocator]
static ALLOC: loopwatch::heap::CountingAllocator = loopwatch::heap::CountingAllocator::system();

/// Longest block `/block` accepts, so a typo cannot wedge the demo for hours.
const MAX_BLOCK: Duration = Duration::from_secs(60);

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(name = "example-service", version, about)]
struct Args {
    /// Address to serve HTTP on (port 0 picks a free port).
    #[arg(long, env = "EXAMPLE_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Worker threads: 0 runs a `current_thread` runtime, N ≥ 1 a `multi_thread` one.
    #[arg(long, env = "EXAMPLE_WORKERS", default_value_t = 0)]
    workers: usize,
    /// Run without loopwatch (the uninstrumented baseline of the overhead benchmarks).
    #[arg(long, env = "EXAMPLE_NO_LOOPWATCH")]
    no_loopwatch: bool,
    /// Run loopwatch without its per-route layer (isolates the layer's share of the overhead).
    #[arg(long, env = "EXAMPLE_NO_ROUTE_LAYER")]
    no_route_layer: bool,
    /// Run loopwatch without its per-route layer, with an empty tower layer attached the same
    /// way in its place: what axum itself charges for any layer (the overhead benchmarks'
    /// floor).
    #[arg(long, env = "EXAMPLE_FLOOR_LAYER", conflicts_with = "no_route_layer")]
    floor_layer: bool,
    /// Build the runtime without loopwatch's unpark hook (the probe thread then looks at a quiet
    /// runtime every 25 ms instead of sleeping until it wakes).
    #[arg(long, env = "EXAMPLE_NO_UNPARK_HOOK")]
    no_unpark_hook: bool,
    /// Milliseconds between SIGTERM (readiness 503) and closing the listener.
    #[arg(long, env = "EXAMPLE_DRAIN_DELAY_MS", default_value_t = 5000)]
    drain_delay_ms: u64,
    /// Milliseconds in-flight requests get after the listener closed.
    #[arg(long, env = "EXAMPLE_DRAIN_DEADLINE_MS", default_value_t = 20000)]
    drain_deadline_ms: u64,
    /// Shed requests (503 + Retry-After) while scheduling delay is at least this many ms; 0 = off.
    #[arg(long, env = "EXAMPLE_SHED_DELAY_MS", default_value_t = 0)]
    shed_delay_ms: u64,
    /// Local /readyz answers 503 while scheduling delay is at least this many ms.
    #[arg(long, env = "EXAMPLE_READY_MAX_DELAY_MS", default_value_t = 200)]
    ready_max_delay_ms: u64,
    /// Also export tracing spans over OTLP (same endpoint/protocol as metrics).
    #[arg(long, env = "EXAMPLE_OTLP_TRACES")]
    otlp_traces: bool,
    /// Log line format on stderr: `text` (coloured only when stderr is a terminal) or `json`
    /// (one object per line). The level comes from `LOOPWATCH_LOG`, else `RUST_LOG`, else
    /// `info`.
    #[arg(long, env = "EXAMPLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The level filter from `LOOPWATCH_LOG`, else `RUST_LOG`, else `info` (with OTLP traces
/// on, also the route layer's DEBUG request spans); an invalid one is an error naming its
/// variable.
fn log_filter(traces: bool) -> Result<tracing_subscriber::EnvFilter, String> {
    let default = if traces {
        "info,loopwatch::http=debug"
    } else {
        "info"
    };
    let (var, directives) = match (std::env::var("LOOPWATCH_LOG"), std::env::var("RUST_LOG")) {
        (Ok(v), _) => ("LOOPWATCH_LOG", v),
        (_, Ok(v)) => ("RUST_LOG", v),
        _ => ("default", default.to_string()),
    };
    tracing_subscriber::EnvFilter::try_new(&directives)
        .map_err(|e| format!("{var}: invalid log filter {directives:?}: {e}"))
}

#[derive(Debug, Deserialize)]
struct BlockParams {
    ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct HowParams {
    ms: Option<u64>,
    #[serde(default)]
    how: blocking::How,
}

async fn hello() -> &'static str {
    "hello from example-service\n"
}

/// Blocks the thread that polls this handler: the bug loopwatch exists to catch.
async fn block(Query(params): Query<HowParams>) -> String {
    let wanted = Duration::from_millis(params.ms.unwrap_or(100));
    let blocked = wanted.min(MAX_BLOCK);
    blocking::block(params.how, blocked);
    format!("blocked the runtime for {} ms\n", blocked.as_millis())
}

/// Burns CPU on the worker that polls this handler (a stuck worker, not a sleeping one).
async fn spin(Query(params): Query<BlockParams>) -> String {
    let spun = Duration::from_millis(params.ms.unwrap_or(100)).min(MAX_BLOCK);
    let start = std::time::Instant::now();
    let mut x = 0u64;
    while start.elapsed() < spun {
        for i in 0..1000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    std::hint::black_box(x);
    format!("spun a worker for {} ms\n", spun.as_millis())
}

async fn fail() -> (StatusCode, &'static str) {
    (StatusCode::INTERNAL_SERVER_ERROR, "failed on purpose\n")
}

/// Waits asynchronously: slow, but leaves the runtime free.
async fn sleep(Query(params): Query<BlockParams>) -> String {
    let wanted = Duration::from_millis(params.ms.unwrap_or(100)).min(MAX_BLOCK);
    tokio::time::sleep(wanted).await;
    format!("slept {} ms\n", wanted.as_millis())
}

async fn item(axum::extract::Path(id): axum::extract::Path<String>) -> String {
    format!("item {id}\n")
}

/// Largest total `/alloc` keeps.
const MAX_RETAINED: usize = 1 << 30;
static RETAINED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

#[derive(Debug, Deserialize)]
struct AllocParams {
    bytes: Option<usize>,
}

/// Allocates and keeps `bytes` (touched, so they are resident), up to [`MAX_RETAINED`] in total.
async fn alloc(Query(params): Query<AllocParams>) -> (StatusCode, String) {
    let mut kept = RETAINED.lock().unwrap_or_else(|e| e.into_inner());
    let total: usize = kept.iter().map(Vec::len).sum();
    let want = params.bytes.unwrap_or(1 << 20);
    if total.saturating_add(want) > MAX_RETAINED {
        return (
            StatusCode::INSUFFICIENT_STORAGE,
            format!("retained {total} bytes; cap {MAX_RETAINED}\n"),
        );
    }
    kept.push(vec![1u8; want]);
    (StatusCode::OK, format!("retained {} bytes\n", total + want))
}

fn router() -> Router {
    Router::new()
        .route("/", get(hello))
        .route("/block", get(block))
        .route("/spin", get(spin))
        .route("/fail", get(fail))
        .route("/sleep", get(sleep))
        .route("/items/{id}", get(item))
        .route("/alloc", get(alloc))
}

/// Everything `serve` needs from loopwatch (route metrics and pressure only when it runs).
struct Wiring {
    routes: Option<loopwatch::http::RouteMetrics>,
    pressure: Option<loopwatch::shed::Pressure>,
    health: loopwatch::health::Health,
    shutdown: loopwatch::shutdown::GracefulShutdown,
}

fn app(args: &Args, w: &Wiring) -> Router {
    let mut app = router().merge(w.health.router());
    if let Some(pressure) = w.pressure.clone().filter(|_| args.shed_delay_ms > 0) {
        app = app.layer(
            loopwatch::shed::ShedLayer::builder(pressure)
                .max_delay(Duration::from_millis(args.shed_delay_ms))
                .build(),
        );
    }
    // Outermost: shed responses are measured too.
    match &w.routes {
        Some(routes) => app.layer(routes.layer()),
        None if args.floor_layer => app.layer(tower::layer::util::Identity::new()),
        None => app,
    }
}

async fn serve(args: &Args, w: Wiring) -> Result<loopwatch::shutdown::ShutdownOutcome, String> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("local_addr: {e}"))?;
    println!("example-service listening on http://{addr}");
    tracing::info!(%addr, "serving");
    let server = axum::serve(listener, app(args, &w)).with_graceful_shutdown(w.shutdown.signal());
    let outcome = w.shutdown.run(server).await;
    tracing::info!(?outcome, "server stopped");
    Ok(outcome)
}

fn main() -> ExitCode {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let args = Args::parse();
    let traces = if args.otlp_traces && !args.no_loopwatch {
        let mut b = loopwatch::Loopwatch::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            b = b.service_name("example-service");
        }
        match loopwatch::trace::OtlpTracing::start(b) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("example-service: loopwatch tracing: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let filter = match log_filter(traces.is_some()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("example-service: {e}");
            return ExitCode::from(2);
        }
    };
    // A pipe or file gets no ANSI escapes: log aggregators show them as garbage.
    let text = (args.log_format == LogFormat::Text).then(|| {
        use std::io::IsTerminal as _;
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });
    let json = (args.log_format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_ansi(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(traces.as_ref().map(|t| t.layer()))
        .init();
    // Tells loopwatch when the runtime wakes up, so its probe thread can sleep while it is quiet.
    let unpark_hook = (!args.no_unpark_hook).then(loopwatch::UnparkHook::new);
    let mut rt_builder = if args.workers == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.workers);
        // Exact stuck-poll durations and the spawn location of the task holding a worker.
        #[cfg(tokio_unstable)]
        loopwatch::workers::install_poll_hooks(&mut b);
        b
    };
    if let Some(h) = &unpark_hook {
        h.install(&mut rt_builder);
    }
    let runtime = match rt_builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("example-service: cannot build the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut builder = loopwatch::Loopwatch::builder();
    if let Some(h) = unpark_hook {
        builder = builder.unpark_hook(h);
    }
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        builder = builder.service_name("example-service");
    }
    // Started from outside the runtime: loopwatch watches it through its handle, from its own threads.
    let guard = if args.no_loopwatch {
        None
    } else {
        match builder.start_with_handle(runtime.handle().clone()) {
            Ok(guard) => Some(guard),
            Err(e) => {
                eprintln!("example-service: loopwatch: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let routes = guard
        .as_ref()
        .filter(|_| !args.no_route_layer && !args.floor_layer)
        .map(|g| g.route_metrics());
    let pressure = guard.as_ref().map(|g| g.pressure());
    let lifecycle = guard.as_ref().map(|g| g.lifecycle()).unwrap_or_default();
    let mut health = loopwatch::health::Health::builder()
        .lifecycle(lifecycle.clone())
        .max_delay(Duration::from_millis(args.ready_max_delay_ms));
    if let Some(p) = &pressure {
        health = health.pressure(p.clone());
    }
    let mut shutdown = loopwatch::shutdown::GracefulShutdown::builder()
        .lifecycle(lifecycle)
        .drain_delay(Duration::from_millis(args.drain_delay_ms))
        .deadline(Duration::from_millis(args.drain_deadline_ms));
    if let Some(r) = &routes {
        shutdown = shutdown.routes(r.clone());
    }
    let wiring = Wiring {
        routes,
        pressure,
        health: health.build(),
        shutdown: shutdown.build(),
    };
    let result = runtime.block_on(serve(&args, wiring));
    // Final export (lifecycle state 2), outside the watched runtime.
    if let Some(guard) = guard {
        guard.shutdown();
    }
    if let Some(t) = traces {
        t.shutdown();
    }
    match result {
        Ok(loopwatch::shutdown::ShutdownOutcome::DeadlineExceeded { active }) => {
            eprintln!("example-service: drain deadline passed with {active} active requests");
            ExitCode::FAILURE
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-service: {e}");
            ExitCode::FAILURE
        }
    }
}
