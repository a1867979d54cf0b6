//! Upstream OTLP export: batching, a bounded queue, retry with backoff.
//!
//! Disabled when `exporter.endpoint` is empty (the default). When enabled:
//!
//! - received metrics are merged into a [`batch::Batcher`] and sent once per
//!   `exporter.interval`, together with derived per-service metrics (in the service's own
//!   resource) and the agent's self-telemetry (resource `service.name=loopwatch-agent`);
//! - a batch reaching [`MAX_BATCH_POINTS`] datapoints is queued early (bounded memory);
//! - received traces and logs are enqueued unchanged as they arrive;
//! - the queue holds at most `exporter.queue_size` requests; a request that does not fit is
//!   dropped and its items counted (`loopwatch_agent_export_dropped_total{reason="queue_full"}`);
//! - one worker sends requests in order; retryable failures (gRPC UNAVAILABLE,
//!   RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED, CANCELLED, OUT_OF_RANGE, DATA_LOSS,
//!   UNKNOWN; HTTP 429/502/503/504; connection errors and timeouts) are retried with
//!   exponential backoff (100 ms doubling to 5 s) for up to `exporter.max_retry_time`, then
//!   dropped (`reason="retries_exhausted"`); other failures are dropped at once
//!   (`reason="rejected"`); at shutdown whatever cannot be sent before the flush deadline is
//!   dropped (`reason="shutdown"`).
//!
//! Derived metrics exported per service: the table in `derived`, the same gauges as
//! `/metrics` under their OTel names (`loopwatch.pressure`, `loopwatch.service.lag`,
//! `loopwatch.service.ready`, `loopwatch.service.stuck_workers`, ...). Self-telemetry: the
//! table in `self_telemetry`, the same metrics as `/metrics` (`loopwatch.agent.*`).

pub(crate) mod batch;
pub(crate) mod client;
mod tls;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::sync::{Notify, watch};

use crate::config::ExporterConfig;
use crate::state::{AgentState, ServiceView};
use crate::store::ServiceKey;

/// Datapoints one metrics batch may hold; a batch reaching it is queued before the interval
/// ends.
pub(crate) const MAX_BATCH_POINTS: u64 = 100_000;

/// One queued upstream request.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A metrics batch.
    Metrics(ExportMetricsServiceRequest),
    /// Traces, forwarded unchanged.
    Traces(ExportTraceServiceRequest),
    /// Logs, forwarded unchanged.
    Logs(ExportLogsServiceRequest),
}

/// A queued request and the number of items (datapoints, spans, log records) in it.
#[derive(Debug, Clone)]
pub struct Item {
    /// The request.
    pub payload: Payload,
    /// Items in it.
    pub items: u64,
}

/// Why queued items were dropped (label `reason` of `loopwatch_agent_export_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportDrop {
    /// The queue was full.
    QueueFull,
    /// Retrying took longer than `exporter.max_retry_time`.
    RetriesExhausted,
    /// The upstream refused the request with a non-retryable error.
    Rejected,
    /// Not sent before the shutdown flush deadline.
    Shutdown,
}

impl ExportDrop {
    /// All reasons, for exposition.
    pub const ALL: [ExportDrop; 4] = [
        ExportDrop::QueueFull,
        ExportDrop::RetriesExhausted,
        ExportDrop::Rejected,
        ExportDrop::Shutdown,
    ];
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportDrop::QueueFull => "queue_full",
            ExportDrop::RetriesExhausted => "retries_exhausted",
            ExportDrop::Rejected => "rejected",
            ExportDrop::Shutdown => "shutdown",
        }
    }
    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// Export self-telemetry counters.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Items (datapoints, spans, log records) accepted by the upstream.
    pub sent_items: AtomicU64,
    /// Requests accepted by the upstream.
    pub sent_requests: AtomicU64,
    /// Failed send attempts (each retry counts).
    pub errors: AtomicU64,
    dropped: [AtomicU64; 4],
}

impl ExportStats {
    /// Items dropped so far for `reason`.
    pub fn dropped(&self, reason: ExportDrop) -> u64 {
        self.dropped[reason.index()].load(Ordering::Relaxed)
    }
    fn drop_items(&self, reason: ExportDrop, n: u64) {
        self.dropped[reason.index()].fetch_add(n, Ordering::Relaxed);
    }
}

/// The export pipeline shared by receivers, the interval timer and the worker.
#[derive(Debug)]
pub struct Pipeline {
    config: ExporterConfig,
    batch: Mutex<batch::Batcher>,
    queue: Mutex<VecDeque<Item>>,
    inflight: AtomicBool,
    wake: Notify,
    resources: Mutex<BTreeMap<ServiceKey, Resource>>,
    start_unix_nanos: u64,
    /// Self-telemetry.
    pub stats: ExportStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

impl Pipeline {
    /// A pipeline for `config` (inactive when the endpoint is empty).
    pub fn new(config: ExporterConfig) -> Self {
        Pipeline {
            config,
            batch: Mutex::new(batch::Batcher::default()),
            queue: Mutex::new(VecDeque::new()),
            inflight: AtomicBool::new(false),
            wake: Notify::new(),
            resources: Mutex::new(BTreeMap::new()),
            start_unix_nanos: unix_nanos(),
            stats: ExportStats::default(),
        }
    }

    /// Whether an upstream endpoint is configured.
    pub fn enabled(&self) -> bool {
        !self.config.endpoint.is_empty()
    }

    /// The exporter configuration.
    pub fn config(&self) -> &ExporterConfig {
        &self.config
    }

    /// Requests waiting (including the one being sent).
    pub fn queue_depth(&self) -> usize {
        lock(&self.queue).len() + usize::from(self.inflight.load(Ordering::Relaxed))
    }

    /// Merges an accepted metrics request into the current batch.
    pub fn add_metrics(&self, req: &ExportMetricsServiceRequest, keys: &[ServiceKey]) {
        if !self.enabled() {
            return;
        }
        let full = {
            let mut batch = lock(&self.batch);
            batch.add(req);
            // Bounded memory: a batch past the cap is queued at once (without derived
            // metrics, which follow with the interval).
            (batch.points() >= MAX_BATCH_POINTS).then(|| batch.take())
        };
        if let Some(req) = full {
            let items = batch::count_points(&req);
            self.enqueue(Item {
                payload: Payload::Metrics(req),
                items,
            });
        }
        let mut known = lock(&self.resources);
        for (rm, key) in req.resource_metrics.iter().zip(keys) {
            if let Some(r) = &rm.resource {
                known.insert(key.clone(), r.clone());
            }
        }
    }

    /// Enqueues traces unchanged.
    pub fn add_traces(&self, req: ExportTraceServiceRequest, spans: u64) {
        if self.enabled() {
            self.enqueue(Item {
                payload: Payload::Traces(req),
                items: spans,
            });
        }
    }

    /// Enqueues logs unchanged.
    pub fn add_logs(&self, req: ExportLogsServiceRequest, records: u64) {
        if self.enabled() {
            self.enqueue(Item {
                payload: Payload::Logs(req),
                items: records,
            });
        }
    }

    /// Puts a request on the queue, or drops and counts it when the queue is full.
    pub fn enqueue(&self, item: Item) {
        let mut q = lock(&self.queue);
        if q.len() + usize::from(self.inflight.load(Ordering::Relaxed)) >= self.config.queue_size {
            drop(q);
            self.stats.drop_items(ExportDrop::QueueFull, item.items);
            tracing::warn!(items = item.items, "export queue full: request dropped");
            return;
        }
        q.push_back(item);
        drop(q);
        self.wake.notify_one();
    }

    /// Builds this interval's metrics request (received batch + derived + self-telemetry) and
    /// enqueues it.
    pub fn flush_interval(&self, state: &AgentState, views: &[ServiceView]) {
        if !self.enabled() {
            return;
        }
        let mut req = lock(&self.batch).take();
        let received = batch::count_points(&req);
        let now = unix_nanos();
        {
            let mut known = lock(&self.resources);
            known.retain(|k, _| views.iter().any(|v| &v.key == k));
            for v in views {
                let resource = known.get(&v.key).cloned().unwrap_or_else(|| {
                    let mut attributes = vec![kv("service.name", &v.key.service)];
                    if !v.key.instance.is_empty() {
                        attributes.push(kv("service.instance.id", &v.key.instance));
                    }
                    Resource {
                        attributes,
                        ..Default::default()
                    }
                });
                req.resource_metrics.push(ResourceMetrics {
                    resource: Some(resource),
                    scope_metrics: vec![agent_scope(derived_metrics(v, now))],
                    ..Default::default()
                });
            }
        }
        req.resource_metrics.push(ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "loopwatch-agent")],
                ..Default::default()
            }),
            scope_metrics: vec![agent_scope(self.self_metrics(state, now))],
            ..Default::default()
        });
        let items = batch::count_points(&req);
        tracing::debug!(received, items, "metrics batch queued");
        self.enqueue(Item {
            payload: Payload::Metrics(req),
            items,
        });
    }

    fn self_metrics(&self, state: &AgentState, now: u64) -> Vec<Metric> {
        use crate::self_telemetry::{Kind, SELF_METRICS};
        let start = self.start_unix_nanos;
        SELF_METRICS
            .iter()
            .map(|m| {
                let data_points = (m.read)(state)
                    .into_iter()
                    .map(|(attrs, v)| NumberDataPoint {
                        attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
                        start_time_unix_nano: if m.kind == Kind::Counter { start } else { 0 },
                        time_unix_nano: now,
                        value: Some(match m.kind {
                            Kind::Counter => number_data_point::Value::AsInt(v as i64),
                            Kind::Gauge => number_data_point::Value::AsDouble(v),
                        }),
                        ..Default::default()
                    })
                    .collect();
                let data = match m.kind {
                    Kind::Counter => metric::Data::Sum(Sum {
                        data_points,
                        aggregation_temporality: 2,
                        is_monotonic: true,
                    }),
                    Kind::Gauge => metric::Data::Gauge(Gauge { data_points }),
                };
                Metric {
                    name: m.otel.into(),
                    unit: m.unit.into(),
                    description: m.help.into(),
                    data: Some(data),
                    ..Default::default()
                }
            })
            .collect()
    }

    /// Sends queued requests until `stop` carries a deadline and the queue is empty (or the
    /// deadline passes: the rest is dropped and counted as `shutdown`).
    pub async fn run(&self, mut stop: watch::Receiver<Option<Instant>>) {
        let mut client = match client::Client::new(&self.config) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "upstream exporter disabled");
                return;
            }
        };
        loop {
            let next = {
                let mut q = lock(&self.queue);
                let item = q.pop_front();
                self.inflight.store(item.is_some(), Ordering::Relaxed);
                item
            };
            let Some(item) = next else {
                if stop.borrow().is_some() {
                    return;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = stop.changed() => {}
                }
                continue;
            };
            self.send_with_retry(&mut client, item, &mut stop).await;
            self.inflight.store(false, Ordering::Relaxed);
            let deadline = *stop.borrow();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let rest: Vec<Item> = lock(&self.queue).drain(..).collect();
                for i in rest {
                    self.stats.drop_items(ExportDrop::Shutdown, i.items);
                }
                return;
            }
        }
    }

    async fn send_with_retry(
        &self,
        client: &mut client::Client,
        item: Item,
        stop: &mut watch::Receiver<Option<Instant>>,
    ) {
        let first = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match client.send(&item.payload, self.config.timeout).await {
                Ok(()) => {
                    self.stats.sent_requests.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .sent_items
                        .fetch_add(item.items, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    if !e.retryable {
                        tracing::warn!(error = %e.message, "upstream rejected request: dropped");
                        self.stats.drop_items(ExportDrop::Rejected, item.items);
                        return;
                    }
                    if first.elapsed() + backoff > self.config.max_retry_time {
                        tracing::warn!(error = %e.message, "upstream retries exhausted: dropped");
                        self.stats
                            .drop_items(ExportDrop::RetriesExhausted, item.items);
                        return;
                    }
                    tracing::debug!(error = %e.message, ?backoff, "upstream send failed, retrying");
                    let deadline = *stop.borrow();
                    if let Some(d) = deadline {
                        if Instant::now() + backoff >= d {
                            self.stats.drop_items(ExportDrop::Shutdown, item.items);
                            return;
                        }
                        tokio::time::sleep(backoff).await;
                    } else {
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => {}
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn agent_scope(metrics: Vec<Metric>) -> ScopeMetrics {
    ScopeMetrics {
        scope: Some(InstrumentationScope {
            name: "loopwatch-agent".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }),
        metrics,
        ..Default::default()
    }
}

fn gauge_metric(name: &str, unit: &str, desc: &str, v: f64, now: u64) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        description: desc.into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                time_unix_nano: now,
                value: Some(number_data_point::Value::AsDouble(v)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

/// The derived health metrics of one service (the table in `derived`).
pub(crate) fn derived_metrics(v: &ServiceView, now: u64) -> Vec<Metric> {
    crate::derived::DERIVED
        .iter()
        .filter_map(|d| {
            let x = (d.get)(v).filter(|x| x.is_finite())?;
            Some(gauge_metric(d.otel, d.unit, d.help, x, now))
        })
        .collect()
}
