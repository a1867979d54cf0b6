//! `peer_service`: the stack a user would pick instead of loopwatch (issue 14, item 5), for the
//! end-to-end comparisons (`benches/callgrind.py`, `benches/harness.py e2e`).
//!
//! It serves what `example-service` serves on `GET /` (the same body, axum over hyper HTTP/1, a
//! `current_thread` runtime, the default `info` fmt subscriber on stderr), so that the only
//! difference from `example-service-bare --no-loopwatch` is the peer stack:
//!
//! - `opentelemetry-instrumentation-tower`'s HTTP layer, metrics only (the request span is off,
//!   as loopwatch's is at the default `info` level);
//! - a `tokio-metrics` `RuntimeMonitor` sampled once a second by a task on the runtime (the
//!   usage its documentation shows), its stable-tier figures recorded into OTel observable
//!   instruments under the names loopwatch exports for the same figures;
//! - the OTel SDK's `PeriodicReader` with the OTLP gRPC exporter (tonic, built inside the
//!   runtime as opentelemetry-otlp documents), every second, as loopwatch's default interval.
//!
//! Usage: `peer_service [--port N] [--otlp-endpoint URL] [--bare]`
//! - `--port`: port on 127.0.0.1 (default 0: a free one);
//! - `--otlp-endpoint`: OTLP gRPC endpoint (default `OTEL_EXPORTER_OTLP_ENDPOINT`, else
//!   `http://127.0.0.1:4317`, where `loopwatch-agent` listens);
//! - `--bare`: the same binary with the peer stack off (checks that it costs what
//!   `example-service-bare --no-loopwatch` costs).
//!
//! Prints `peer-service listening on http://ADDR` to stdout. On SIGTERM it stops accepting,
//! finishes in-flight requests, exports once more (the meter provider's shutdown) and exits.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use opentelemetry::metrics::Meter;
use opentelemetry_otlp::{MetricExporter, WithExportConfig};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use tokio_metrics::RuntimeMonitor;

/// Export and runtime-sampling period: loopwatch's default export interval.
const INTERVAL: Duration = Duration::from_secs(1);

/// Command-line flags.
struct Args {
    port: u16,
    otlp_endpoint: String,
    bare: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut out = Args {
        port: 0,
        otlp_endpoint: std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .unwrap_or_else(|_| "http://127.0.0.1:4317".to_owned()),
        bare: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bare" => out.bare = true,
            "--port" | "--otlp-endpoint" => {
                let v = args.next().ok_or_else(|| format!("{a}: missing value"))?;
                if a == "--port" {
                    out.port = v.parse().map_err(|e| format!("--port {v:?}: {e}"))?;
                } else {
                    out.otlp_endpoint = v;
                }
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    Ok(out)
}

async fn hello() -> &'static str {
    "hello from example-service\n"
}

async fn not_mirrored() -> axum::http::StatusCode {
    axum::http::StatusCode::NOT_IMPLEMENTED
}

/// `example-service`'s route table (its own routes plus loopwatch's `/livez`, `/readyz`, which
/// its bare build serves too), so that axum's route matching does the same work for `GET /`.
/// Only `/` is measured; the others are placeholders.
fn router() -> Router {
    let mut r = Router::new().route("/", get(hello));
    for path in [
        "/block",
        "/spin",
        "/fail",
        "/sleep",
        "/items/{id}",
        "/alloc",
        "/livez",
        "/readyz",
    ] {
        r = r.route(path, get(not_mirrored));
    }
    r
}

/// The last `RuntimeMonitor` interval, in the shape the instruments read: gauges of the last
/// interval, counters summed since start.
#[derive(Default)]
struct Sampled {
    workers: u64,
    tasks_alive: u64,
    global_queue_depth: u64,
    utilization: f64,
    park_count: u64,
    busy: Duration,
}

/// Samples the runtime every [`INTERVAL`] from a task on it.
fn spawn_sampler(sampled: Arc<Mutex<Sampled>>) {
    let monitor = RuntimeMonitor::new(&tokio::runtime::Handle::current());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        for m in monitor.intervals() {
            {
                let mut s = sampled.lock().unwrap_or_else(|e| e.into_inner());
                s.workers = m.workers_count as u64;
                s.tasks_alive = m.live_tasks_count as u64;
                s.global_queue_depth = m.global_queue_depth as u64;
                s.utilization = m.busy_ratio() / m.workers_count.max(1) as f64;
                s.park_count += m.total_park_count;
                s.busy += m.total_busy_duration;
            }
            tick.tick().await;
        }
    });
}

/// A `u64` gauge: name, unit, the figure it reads.
type U64Gauge = (&'static str, &'static str, fn(&Sampled) -> u64);

/// A reader of one sampled figure, for an instrument's callback (run on the reader's thread).
fn read<T: 'static>(
    sampled: &Arc<Mutex<Sampled>>,
    f: fn(&Sampled) -> T,
) -> impl Fn() -> T + Send + Sync + 'static {
    let s = Arc::clone(sampled);
    move || f(&s.lock().unwrap_or_else(|e| e.into_inner()))
}

/// One observable instrument per sampled figure.
fn record_runtime(meter: &Meter, sampled: &Arc<Mutex<Sampled>>) {
    let r = read(sampled, |s| s.utilization);
    let _ = meter
        .f64_observable_gauge("tokio.eventloop.utilization")
        .with_unit("1")
        .with_callback(move |obs| obs.observe(r(), &[]))
        .build();
    let r = read(sampled, |s| s.busy.as_secs_f64());
    let _ = meter
        .f64_observable_counter("tokio.worker.busy.duration")
        .with_unit("s")
        .with_callback(move |obs| obs.observe(r(), &[]))
        .build();
    let r = read(sampled, |s| s.park_count);
    let _ = meter
        .u64_observable_counter("tokio.worker.park.count")
        .with_unit("{park}")
        .with_callback(move |obs| obs.observe(r(), &[]))
        .build();
    let gauges: [U64Gauge; 3] = [
        ("tokio.runtime.workers", "{thread}", |s| s.workers),
        ("tokio.runtime.tasks.alive", "{task}", |s| s.tasks_alive),
        ("tokio.runtime.global_queue.depth", "{task}", |s| {
            s.global_queue_depth
        }),
    ];
    for (name, unit, f) in gauges {
        let r = read(sampled, f);
        let _ = meter
            .u64_observable_gauge(name)
            .with_unit(unit)
            .with_callback(move |obs| obs.observe(r(), &[]))
            .build();
    }
}

/// The OTel pipeline, the runtime sampler and the HTTP layer. Runs inside the runtime: the
/// tonic channel and the sampler task live on it.
fn peer_stack(endpoint: &str) -> Result<SdkMeterProvider, String> {
    let exporter = MetricExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let reader = PeriodicReader::builder(exporter)
        .with_interval(INTERVAL)
        .build();
    let provider = SdkMeterProvider::builder().with_reader(reader).build();
    opentelemetry::global::set_meter_provider(provider.clone());
    let sampled = Arc::new(Mutex::new(Sampled::default()));
    record_runtime(&opentelemetry::global::meter("peer_service"), &sampled);
    spawn_sampler(sampled);
    Ok(provider)
}

async fn serve(args: Args) -> Result<(), String> {
    let provider = if args.bare {
        None
    } else {
        Some(peer_stack(&args.otlp_endpoint)?)
    };
    let mut app = router();
    if provider.is_some() {
        let layer = opentelemetry_instrumentation_tower::http::server::LayerBuilder::builder()
            .with_tracing(false)
            .build()
            .map_err(|e| format!("otel tower layer: {e}"))?;
        app = app.layer(layer);
    }
    let listen = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("bind {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("local_addr: {e}"))?;
    println!("peer-service listening on http://{addr}");
    tracing::info!(%addr, "serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM handler: {e}"))?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = term.recv().await;
        })
        .await
        .map_err(|e| format!("serve: {e}"))?;
    tracing::info!("server stopped");
    if let Some(p) = provider {
        // The final export blocks this caller until the reader thread is done, and its tonic
        // channel needs this runtime driven meanwhile: block a pool thread, not the loop.
        tokio::task::spawn_blocking(move || p.shutdown())
            .await
            .map_err(|e| format!("meter provider shutdown: {e}"))?
            .map_err(|e| format!("meter provider shutdown: {e}"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("peer_service: {e}");
            return ExitCode::from(2);
        }
    };
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let filter = match tracing_subscriber::EnvFilter::try_new(&directives) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("peer_service: RUST_LOG: invalid log filter {directives:?}: {e}");
            return ExitCode::from(2);
        }
    };
    use std::io::IsTerminal as _;
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("peer_service: cannot build the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer_service: {e}");
            ExitCode::FAILURE
        }
    }
}
