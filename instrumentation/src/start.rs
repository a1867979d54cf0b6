//! Starting loopwatch and the guard that keeps it running: where the subsystems, the
//! instruments and the pipeline are wired together. Nothing imports this module but the root.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use opentelemetry::KeyValue;

use crate::heap::HeapSnapshot;
#[cfg(feature = "axum")]
use crate::http::{RouteMetrics, RouteMetricsBuilder};
use crate::shed::Pressure;
use crate::shutdown::{Lifecycle, LifecycleState};
use crate::workers::StuckWorker;
use crate::{
    LoopwatchBuilder, ProbeSnapshot, StartError, config, nudge, process, shutdown, stacks,
};

use crate::export::{self, FlushTarget};
use crate::flush::{self, FlushTrigger};
use crate::instruments;
use crate::live::Shared;
use crate::probe::{ProbeTask, Window};

impl LoopwatchBuilder {
    /// Starts watching the runtime this is called from (`Handle::try_current()`).
    ///
    /// # Errors
    /// [`StartError::NoRuntime`] outside a tokio runtime, and see
    /// [`LoopwatchBuilder::start_with_handle`].
    pub fn start(self) -> Result<LoopwatchGuard, StartError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        // Inside a current_thread runtime this thread is the one that drives it (`block_on`):
        // stall stacks know it before any probe has run on it.
        let on_runtime_thread = matches!(
            handle.runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        self.start_inner(handle, on_runtime_thread)
    }

    /// Starts watching the runtime behind `handle`: resolves the configuration, builds the
    /// OTLP pipeline (unless a provider was given) and starts the `loopwatch-probe` and
    /// `loopwatch-flush` threads. Does not block on the watched runtime.
    ///
    /// # Errors
    /// Invalid builder values or environment variables, an invalid endpoint, an exporter that
    /// cannot be built, or a thread that cannot be spawned.
    pub fn start_with_handle(
        self,
        handle: tokio::runtime::Handle,
    ) -> Result<LoopwatchGuard, StartError> {
        self.start_inner(handle, false)
    }

    /// [`LoopwatchBuilder::start_with_handle`]; `on_runtime_thread`: the calling thread drives
    /// the watched runtime.
    fn start_inner(
        self,
        handle: tokio::runtime::Handle,
        on_runtime_thread: bool,
    ) -> Result<LoopwatchGuard, StartError> {
        let hook_threads = self.unpark_hook.as_ref().map(|h| Arc::clone(&h.threads));
        let nudge = match &self.unpark_hook {
            Some(hook) => Arc::clone(&hook.nudge),
            None => nudge::Nudge::unhooked(),
        };
        // Released when the probe thread ends, or on any error before it starts.
        let claim = nudge.claim().ok_or_else(|| StartError::InvalidConfig {
            key: "unpark_hook",
            reason: "this UnparkHook is in use by a running loopwatch (one hook per runtime \
                     and loopwatch)"
                .into(),
        })?;
        let settings = config::resolve(self, &config::process_env)?;
        #[cfg(feature = "axum")]
        crate::http::calibrate_clock();
        let sampler = process::SamplerSettings::of(&settings);
        let window = Window::new().map_err(|e| StartError::InvalidConfig {
            key: "probe_interval",
            reason: format!("delay histogram: {e}"),
        })?;
        let attrs = vec![KeyValue::new(
            "tokio.runtime.name",
            settings.runtime_name.clone(),
        )];
        let shared = Arc::new(Shared::new(nudge));

        // The flush thread is spawned before the pipeline exists, so that no spawn failure can
        // leave us dropping loopwatch's export runtime here (which panics in async contexts).
        let (flush, flush_rx) = flush::flush_channel();
        let (target_tx, target_rx) = mpsc::sync_channel::<FlushTarget>(1);
        let (flush_done_tx, flush_done) = mpsc::channel();
        let export_timeout = settings.export_timeout;
        let flush_shared = Arc::clone(&shared);
        let flush_thread = thread::Builder::new()
            .name("loopwatch-flush".into())
            .spawn(move || {
                if let Ok(target) = target_rx.recv() {
                    export::run_flush(flush_rx, &flush_shared, target, export_timeout);
                }
                let _ = flush_done_tx.send(());
            })
            .map_err(|source| StartError::Thread {
                name: "loopwatch-flush",
                source,
            })?;

        // Loaded once, for the metrics and the stall logs exporters alike.
        let tls = if settings.meter_provider.is_none() || settings.stall_stacks {
            export::tls_for(&settings.endpoint, &settings.tls)?.map(Arc::new)
        } else {
            None
        };
        let (provider, target) = match settings.meter_provider.clone() {
            Some(p) => (p.clone(), FlushTarget::Borrowed(p)),
            None => {
                let pipeline = export::build_pipeline(&settings, tls.as_deref())?;
                (
                    pipeline.provider.clone(),
                    FlushTarget::Owned(Box::new(pipeline)),
                )
            }
        };
        let meter = instruments::loopwatch_meter(&provider);
        let lifecycle = shutdown::Lifecycle::with_flush(flush.clone());
        let (extras, mut sampler) = process::Extras::start(&handle, flush.clone(), sampler);
        let schedule = instruments::register(
            &meter,
            &instruments::Sources {
                shared: &shared,
                workers: &extras.workers,
                heap: &extras.heap,
                lifecycle: &lifecycle,
                handle: &handle,
                attrs: &attrs,
            },
        );
        let stacks = start_stacks(&settings, &handle, hook_threads, tls);
        if on_runtime_thread && let Some(s) = &stacks {
            s.threads().note_driver();
        }
        sampler.set_stacks(stacks.clone());
        drop(provider);
        // loopwatch's own pipeline exports when the probe asks (see `export::OwnedPipeline`).
        let drive_exports = matches!(target, FlushTarget::Owned(_));
        let idle_window = match &target {
            FlushTarget::Owned(p) => p.heartbeat,
            FlushTarget::Borrowed(_) => settings.export_interval,
        };
        // Cannot fail: the flush thread waits for exactly this message.
        let _ = target_tx.send(target);

        let task = ProbeTask {
            shared: Arc::clone(&shared),
            _claim: claim,
            handle,
            probe_interval: settings.probe_interval,
            stall_threshold: settings.stall_threshold,
            export_interval: settings.export_interval,
            idle_window,
            runtime_name: settings.runtime_name.clone(),
            window,
            flush: flush.clone(),
            drive_exports,
            window_start: std::time::Instant::now(),
            sampler,
            schedule: Box::new(schedule),
            stacks,
        };
        let (probe_done_tx, probe_done) = mpsc::channel();
        let probe_thread =
            match thread::Builder::new()
                .name("loopwatch-probe".into())
                .spawn(move || {
                    task.run();
                    let _ = probe_done_tx.send(());
                }) {
                Ok(t) => t,
                Err(source) => {
                    shared.stop.store(true, Ordering::Release);
                    flush.request();
                    drop(flush);
                    return Err(StartError::Thread {
                        name: "loopwatch-probe",
                        source,
                    });
                }
            };

        tracing::debug!(
            runtime = %settings.runtime_name,
            endpoint = %settings.endpoint,
            "loopwatch started"
        );
        Ok(LoopwatchGuard {
            shared,
            flush: Some(flush),
            probe: Some((probe_thread, probe_done)),
            flusher: Some((flush_thread, flush_done)),
            extras,
            meter,
            lifecycle,
            #[cfg(feature = "axum")]
            routes: std::sync::OnceLock::new(),
        })
    }
}

/// Keeps loopwatch running; [`LoopwatchGuard::shutdown`] or drop stops it with a final flush.
#[derive(Debug)]
pub struct LoopwatchGuard {
    shared: Arc<Shared>,
    flush: Option<FlushTrigger>,
    probe: Option<(JoinHandle<()>, mpsc::Receiver<()>)>,
    flusher: Option<(JoinHandle<()>, mpsc::Receiver<()>)>,
    extras: process::Extras,
    meter: opentelemetry::metrics::Meter,
    lifecycle: shutdown::Lifecycle,
    /// The route metrics [`LoopwatchGuard::route_metrics`] hands out, built on first use.
    #[cfg(feature = "axum")]
    routes: std::sync::OnceLock<RouteMetrics>,
}

impl LoopwatchGuard {
    /// Current values: ongoing stall, stall count, last window's delay statistics, runtime
    /// metrics. Cheap (a few atomics and two short std mutex copies); never touches the runtime.
    pub fn snapshot(&self) -> ProbeSnapshot {
        self.shared.snapshot()
    }

    /// Requests an immediate export (non-blocking, coalesced with pending requests).
    pub fn force_flush(&self) {
        if let Some(f) = &self.flush {
            f.request();
        }
    }

    /// Stops the probe, exports one last time and stops loopwatch's threads. Blocks the calling
    /// thread for at most about [`LoopwatchBuilder::DEFAULT_SHUTDOWN_TIMEOUT`] plus one probe-thread wake-up;
    /// threads that do not finish in time are left to finish on their own.
    pub fn shutdown(mut self) {
        self.shutdown_inner();
    }

    /// loopwatch's meter (scope `loopwatch`), to register more instruments on its pipeline.
    pub fn meter(&self) -> opentelemetry::metrics::Meter {
        self.meter.clone()
    }

    /// Load of the watched runtime, for [`crate::shed::ShedLayer`], [`crate::health::Health`] and your own checks.
    pub fn pressure(&self) -> Pressure {
        Pressure::from_shared(Arc::clone(&self.shared))
    }

    /// The service's lifecycle, exported as `loopwatch.lifecycle.state` (0 running, 1
    /// draining, 2 stopped); changes force an export. [`LoopwatchGuard::shutdown`] sets 2
    /// before the final export.
    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle.clone()
    }

    /// Per-route HTTP metrics exported on loopwatch's pipeline, with per-request runtime
    /// lateness from the probe. Every call returns the same metrics (built and registered on
    /// the first call; later calls only clone a reference), so routers built per test or per
    /// tenant share one set of series. Use [`LoopwatchGuard::route_metrics_builder`] to change
    /// limits.
    #[cfg(feature = "axum")]
    pub fn route_metrics(&self) -> RouteMetrics {
        self.routes
            .get_or_init(|| self.route_metrics_builder().build())
            .clone()
    }

    /// A [`crate::http::RouteMetricsBuilder`] preset with loopwatch's meter and pressure. Each
    /// [`crate::http::RouteMetricsBuilder::build`] makes new metrics and registers their instruments again:
    /// build once and clone the result (or use [`LoopwatchGuard::route_metrics`]).
    #[cfg(feature = "axum")]
    pub fn route_metrics_builder(&self) -> RouteMetricsBuilder {
        RouteMetrics::builder()
            .meter(self.meter())
            .pressure(self.pressure())
    }

    fn shutdown_inner(&mut self) {
        self.lifecycle.set(LifecycleState::Stopped);
        self.shared.stop.store(true, Ordering::Release);
        if let Some((t, done)) = self.probe.take() {
            t.thread().unpark();
            join_bounded(t, &done, LoopwatchBuilder::DEFAULT_SHUTDOWN_TIMEOUT);
        }
        if let Some(f) = self.flush.take() {
            f.request(); // wakes the flush thread, which sees `stop`
        }
        if let Some((t, done)) = self.flusher.take() {
            join_bounded(t, &done, LoopwatchBuilder::DEFAULT_SHUTDOWN_TIMEOUT);
        }
        self.shared.silence();
    }
}

/// Stall stacks as configured; off (with a warning) when the signal cannot be used.
fn start_stacks(
    s: &config::Settings,
    handle: &tokio::runtime::Handle,
    threads: Option<Arc<crate::threads::Threads>>,
    tls: Option<Arc<export::TlsMaterial>>,
) -> Option<Arc<stacks::Stacks>> {
    if !s.stall_stacks {
        return None;
    }
    let target = stacks::LogTarget {
        endpoint: s.endpoint.clone(),
        protocol: s.protocol,
        timeout: s.export_timeout,
        resource: s.resource.clone(),
        runtime_name: s.runtime_name.clone(),
        gzip: s.gzip,
        tls,
    };
    match stacks::Stacks::start(s.stall_stack_signal, threads, handle.clone(), target) {
        Ok(st) => Some(st),
        Err(e) => {
            tracing::warn!(error = %e, "loopwatch stall stacks are off");
            None
        }
    }
}

fn join_bounded(t: JoinHandle<()>, done: &mpsc::Receiver<()>, timeout: Duration) {
    match done.recv_timeout(timeout) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            let _ = t.join();
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            tracing::warn!(
                thread = t.thread().name().unwrap_or("loopwatch"),
                "loopwatch thread did not stop in time; detaching it"
            );
        }
    }
}

impl Drop for LoopwatchGuard {
    fn drop(&mut self) {
        self.shutdown_inner();
    }
}

impl LoopwatchGuard {
    /// Workers stuck right now (one long poll, or awake without progress for at least the
    /// stuck threshold). Cheap: reads atomics, allocates the returned `Vec`.
    pub fn stuck_workers(&self) -> Vec<StuckWorker> {
        self.extras.workers.stuck()
    }

    /// Stuck episodes counted since start (`tokio.worker.stuck.episodes`).
    pub fn stuck_episodes(&self) -> u64 {
        self.extras.workers.episodes()
    }

    /// Live heap bytes and growth rate as of the last heap sample.
    pub fn heap(&self) -> HeapSnapshot {
        self.extras.heap.snapshot()
    }
}
