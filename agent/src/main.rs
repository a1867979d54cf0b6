//! loopwatch-agent: the loopwatch sidecar binary. See the library docs for configuration.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use loopwatch_agent::config::{Config, KEYS};

/// mimalloc instead of the system allocator: OTLP decoding and the series store allocate many
/// small strings per datapoint, and glibc malloc made allocation ~30% of the receive path
/// (BENCHMARKS.md, agent ingest: +50% datapoints per CPU-second with mimalloc).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The loopwatch sidecar: OTLP in, event-loop health out.
#[derive(Debug, Parser)]
#[command(name = "loopwatch-agent", version, about)]
struct Args {
    /// TOML config file (sections [receiver], [admin], [health], [drain], [shutdown], [exporter]).
    #[arg(long)]
    config: Option<PathBuf>,
    /// OTLP/gRPC listen address (receiver.grpc_listen).
    #[arg(long)]
    grpc_listen: Option<String>,
    /// OTLP/HTTP listen address (receiver.http_listen).
    #[arg(long)]
    http_listen: Option<String>,
    /// Admin HTTP listen address (admin.listen).
    #[arg(long)]
    admin_listen: Option<String>,
    /// Lag that makes a service unhealthy, e.g. 250ms (health.lag_enter).
    #[arg(long)]
    lag_enter: Option<String>,
    /// Lag below which a service may recover, e.g. 100ms (health.lag_leave).
    #[arg(long)]
    lag_leave: Option<String>,
    /// Recovery hold time, e.g. 3s (health.hold).
    #[arg(long)]
    hold: Option<String>,
    /// Staleness timeout, e.g. 5s (health.stale_after).
    #[arg(long)]
    stale_after: Option<String>,
    /// Set any key: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Log line format on stderr: `text` (coloured only when stderr is a terminal) or `json`
    /// (one object per line). The level comes from `LOOPWATCH_LOG`, else `RUST_LOG`, else
    /// `info`.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`).
    Json,
}

/// Installs the stderr logger. A pipe or file gets no ANSI escapes: log aggregators show them
/// as garbage. An invalid level filter is a startup error naming its variable.
fn init_logging(format: LogFormat) -> Result<(), String> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let (var, directives) = match (std::env::var("LOOPWATCH_LOG"), std::env::var("RUST_LOG")) {
        (Ok(v), _) => ("LOOPWATCH_LOG", v),
        (_, Ok(v)) => ("RUST_LOG", v),
        _ => ("default", "info".to_string()),
    };
    let filter = EnvFilter::try_new(&directives)
        .map_err(|e| format!("{var}: invalid log filter {directives:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    }
    .map_err(|e| format!("cannot install the logger: {e}"))
}

fn overrides(args: &Args) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for s in &args.set {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("--set {s:?}: expected section.key=value"))?;
        let k = k.trim();
        if !KEYS.contains(&k) {
            return Err(format!("{k}: unknown configuration key (from --set)"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    let named = [
        ("receiver.grpc_listen", &args.grpc_listen),
        ("receiver.http_listen", &args.http_listen),
        ("admin.listen", &args.admin_listen),
        ("health.lag_enter", &args.lag_enter),
        ("health.lag_leave", &args.lag_leave),
        ("health.hold", &args.hold),
        ("health.stale_after", &args.stale_after),
    ];
    for (k, v) in named {
        if let Some(v) = v {
            out.push((k.to_string(), v.clone()));
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match overrides(&args).and_then(|o| {
        Config::load(args.config.as_deref(), |k| std::env::var(k).ok(), &o)
            .map_err(|e| e.to_string())
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loopwatch-agent: config error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    if let Err(e) = init_logging(args.log_format) {
        eprintln!("loopwatch-agent: config error: {e}");
        return ExitCode::from(2);
    }
    // One thread: a request's work is tens of microseconds, and a multi-thread runtime wakes
    // a second worker to look for work on every request that arrives while idle (context
    // switches that cost more than the request itself at a few requests per second).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loopwatch-agent: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let agent = match loopwatch_agent::start(config).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loopwatch-agent: {e}");
            return ExitCode::from(1);
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", agent.listening_line());
        let _ = out.flush();
    }
    if let Err(e) = wait_for_signal().await {
        tracing::error!(error = %e, "cannot wait for signals");
    }
    let grace = agent.state().config().shutdown.grace;
    tracing::info!(?grace, "SIGTERM: waiting for the services' final exports");
    if agent.wait_for_final_exports(grace).await {
        tracing::info!("every service sent its final export (or went stale)");
    } else {
        tracing::warn!(
            ?grace,
            "shutdown grace passed before every service finished"
        );
    }
    tracing::info!("shutting down: flushing upstream");
    agent.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
