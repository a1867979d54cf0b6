//! `example-service`: an axum service instrumented with loopwatch.
//!
//! Routes:
//!
//! | route | what it does |
//! |---|---|
//! | `GET /` | answers at once |
//! | `GET /block?ms=N` | blocks the runtime thread with `std::thread::sleep` for N ms (capped at 60 s) |
//! | `GET /fail` | answers 500 |
//!
//! It runs a `current_thread` runtime by default, like a Node.js event loop: one blocking
//! handler stalls every request. `--workers N` (N ≥ 1) switches to a `multi_thread` runtime.
//!
//! Telemetry goes to the OTLP endpoint from the standard `OTEL_*` variables (default
//! `http://127.0.0.1:4317`, where `loopwatch-agent` listens). On start it prints
//! `example-service listening on http://ADDR` to stdout.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Parser;
use serde::Deserialize;

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
}

#[derive(Debug, Deserialize)]
struct BlockParams {
    ms: Option<u64>,
}

async fn hello() -> &'static str {
    "hello from example-service\n"
}

/// Blocks the thread that polls this handler: the bug loopwatch exists to catch.
async fn block(Query(params): Query<BlockParams>) -> String {
    let wanted = Duration::from_millis(params.ms.unwrap_or(100));
    let blocked = wanted.min(MAX_BLOCK);
    std::thread::sleep(blocked);
    format!("blocked the runtime for {} ms\n", blocked.as_millis())
}

async fn fail() -> (StatusCode, &'static str) {
    (StatusCode::INTERNAL_SERVER_ERROR, "failed on purpose\n")
}

fn router() -> Router {
    Router::new()
        .route("/", get(hello))
        .route("/block", get(block))
        .route("/fail", get(fail))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

async fn serve(args: &Args) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("local_addr: {e}"))?;
    println!("example-service listening on http://{addr}");
    tracing::info!(%addr, "serving");
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("serve: {e}"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = if args.workers == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.workers)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("example-service: cannot build the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut builder = loopwatch::Loopwatch::builder();
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
    let result = runtime.block_on(serve(&args));
    // Final export, outside the watched runtime.
    if let Some(guard) = guard {
        guard.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-service: {e}");
            ExitCode::FAILURE
        }
    }
}
