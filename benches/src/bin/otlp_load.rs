//! OTLP/HTTP protobuf load generator for the agent-ingest benchmark (issue 6, item 6).
//!
//! Sends a realistic loopwatch-like export (~9 KB protobuf, ~70 datapoints: event-loop gauges,
//! runtime counters, the schedule histogram, per-route HTTP histograms, task-family metrics) to
//! `POST <url>` over keep-alive HTTP/1.1 connections.
//!
//! Usage:
//! - saturation: `otlp_load --url http://127.0.0.1:4318/v1/metrics --conns 4 --duration 10`
//! - paced: `otlp_load --url ... --services 10 --rate 1 --duration 30` (each service pushes
//!   `rate` times per second, fresh timestamps each time)
//! - `otlp_load --print-size` prints the payload size and datapoint count and exits.
//!
//! Prints one JSON line: requests, ok, errors, datapoints (accepted requests × datapoints per
//! request), elapsed seconds, payload bytes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

/// Routes of the simulated service (each gets a 200 and a 500 histogram series).
const ROUTES: &[&str] = &["/", "/users/{id}", "/users", "/orders/{id}", "/orders"];
/// Worker threads of the simulated runtime (per-worker counters).
const WORKERS: i64 = 4;
/// Task families of the simulated service.
const FAMILIES: &[&str] = &["ingest", "flush", "gc", "poller", "cache", "mailer", "jobs"];
/// HTTP duration buckets recommended by the OTel semantic conventions (s).
const HTTP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn kvi(k: &str, v: i64) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn gauge(name: &str, unit: &str, v: f64, attrs: &[KeyValue], t: u64) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                attributes: attrs.to_vec(),
                time_unix_nano: t,
                value: Some(number_data_point::Value::AsDouble(v)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

fn sum_points(points: Vec<NumberDataPoint>, name: &str, unit: &str, monotonic: bool) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: monotonic,
        })),
        ..Default::default()
    }
}

fn int_point(v: i64, attrs: Vec<KeyValue>, start: u64, t: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: start,
        time_unix_nano: t,
        value: Some(number_data_point::Value::AsInt(v)),
        ..Default::default()
    }
}

fn hist_point(
    attrs: Vec<KeyValue>,
    bounds: &[f64],
    seed: u64,
    start: u64,
    t: u64,
) -> HistogramDataPoint {
    let counts: Vec<u64> = (0..=bounds.len() as u64)
        .map(|i| (seed * 7919 + i * 104_729) % 120)
        .collect();
    let count = counts.iter().sum();
    HistogramDataPoint {
        attributes: attrs,
        start_time_unix_nano: start,
        time_unix_nano: t,
        count,
        sum: Some(count as f64 * 0.0123),
        bucket_counts: counts,
        explicit_bounds: bounds.to_vec(),
        ..Default::default()
    }
}

/// Builds one export of service `svc`; returns the request and its datapoint count.
fn payload(svc: usize, start: u64, t: u64) -> (ExportMetricsServiceRequest, usize) {
    let rt = [kv("tokio.runtime.name", "main")];
    let mut metrics = Vec::new();
    for (i, q) in ["min", "max", "mean", "p50", "p90", "p99"]
        .iter()
        .enumerate()
    {
        metrics.push(gauge(
            &format!("tokio.eventloop.delay.{q}"),
            "s",
            0.0001 * (i + 1) as f64,
            &rt,
            t,
        ));
    }
    metrics.push(gauge("tokio.eventloop.stall.duration", "s", 0.0, &rt, t));
    metrics.push(gauge("tokio.eventloop.utilization", "1", 0.42, &rt, t));
    metrics.push(gauge("tokio.runtime.workers", "{thread}", 2.0, &rt, t));
    metrics.push(gauge("tokio.runtime.tasks.alive", "{task}", 37.0, &rt, t));
    metrics.push(gauge(
        "tokio.runtime.global_queue.depth",
        "{task}",
        0.0,
        &rt,
        t,
    ));
    metrics.push(gauge("process.memory.usage", "By", 31_457_280.0, &[], t));
    metrics.push(gauge("process.cpu.utilization", "1", 0.12, &[], t));
    metrics.push(gauge(
        "loopwatch.heap.allocated",
        "By",
        12_582_912.0,
        &[],
        t,
    ));
    metrics.push(gauge("loopwatch.heap.growth_rate", "By/s", 1024.0, &[], t));
    metrics.push(gauge("process.thread.count", "{thread}", 9.0, &[], t));
    metrics.push(gauge(
        "process.open_file_descriptor.count",
        "{fd}",
        23.0,
        &[],
        t,
    ));
    metrics.push(gauge(
        "tokio.runtime.blocking.threads",
        "{thread}",
        1.0,
        &rt,
        t,
    ));
    metrics.push(sum_points(
        vec![int_point(123_456, rt.to_vec(), start, t)],
        "tokio.worker.park.count",
        "{park}",
        true,
    ));
    metrics.push(sum_points(
        vec![int_point(3, rt.to_vec(), start, t)],
        "tokio.eventloop.stalls",
        "{stall}",
        true,
    ));
    metrics.push(Metric {
        name: "tokio.worker.busy.duration".into(),
        unit: "s".into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: vec![NumberDataPoint {
                attributes: rt.to_vec(),
                start_time_unix_nano: start,
                time_unix_nano: t,
                value: Some(number_data_point::Value::AsDouble(812.5)),
                ..Default::default()
            }],
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    });
    let sched_bounds = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ];
    metrics.push(Metric {
        name: "tokio.schedule.duration".into(),
        unit: "s".into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: vec![hist_point(rt.to_vec(), &sched_bounds, 1, start, t)],
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        })),
        ..Default::default()
    });
    let mut http = Vec::new();
    let mut active = Vec::new();
    for (i, r) in ROUTES.iter().enumerate() {
        for status in [200, 500] {
            http.push(hist_point(
                vec![
                    kv("http.request.method", "GET"),
                    kv("http.route", r),
                    kvi("http.response.status_code", status),
                ],
                HTTP_BUCKETS,
                (i * 2 + status as usize) as u64,
                start,
                t,
            ));
        }
        active.push(int_point(
            i as i64 % 3,
            vec![kv("http.request.method", "GET"), kv("http.route", r)],
            start,
            t,
        ));
    }
    metrics.push(Metric {
        name: "http.server.request.duration".into(),
        unit: "s".into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: http,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        })),
        ..Default::default()
    });
    metrics.push(sum_points(
        active,
        "http.server.active_requests",
        "{request}",
        false,
    ));
    for (name, unit) in [
        ("tokio.task.polls", "{poll}"),
        ("tokio.task.poll.duration", "us"),
        ("tokio.task.scheduled.duration", "us"),
    ] {
        let pts = FAMILIES
            .iter()
            .enumerate()
            .map(|(i, f)| {
                int_point(
                    1000 * (i as i64 + 1),
                    vec![kv("tokio.task.family", f), rt[0].clone()],
                    start,
                    t,
                )
            })
            .collect();
        metrics.push(sum_points(pts, name, unit, true));
    }
    for name in [
        "tokio.worker.polls",
        "tokio.worker.steals",
        "tokio.worker.noops",
    ] {
        let pts = (0..WORKERS)
            .map(|w| {
                int_point(
                    5000 + w * 17,
                    vec![rt[0].clone(), kvi("tokio.worker.index", w)],
                    start,
                    t,
                )
            })
            .collect();
        metrics.push(sum_points(pts, name, "{event}", true));
    }
    let datapoints = metrics
        .iter()
        .map(|m| match &m.data {
            Some(metric::Data::Gauge(g)) => g.data_points.len(),
            Some(metric::Data::Sum(s)) => s.data_points.len(),
            Some(metric::Data::Histogram(h)) => h.data_points.len(),
            _ => 0,
        })
        .sum();
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", &format!("bench-service-{svc}")),
                    kv(
                        "service.instance.id",
                        &format!("bench-host-{svc}-4242-18a2b3c4d5e6f708"),
                    ),
                    kv(
                        "k8s.pod.name",
                        &format!("bench-service-{svc}-7d9f8b6c5-x2x9z"),
                    ),
                    kv("telemetry.sdk.language", "rust"),
                    kv("telemetry.sdk.name", "opentelemetry"),
                    kv("telemetry.sdk.version", "0.33.1"),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "loopwatch".into(),
                    version: "0.1.0".into(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    (req, datapoints)
}

struct Opts {
    url: String,
    conns: usize,
    duration: Duration,
    services: usize,
    rate: f64,
    print_size: bool,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        url: "http://127.0.0.1:4318/v1/metrics".into(),
        conns: 4,
        duration: Duration::from_secs(10),
        services: 1,
        rate: 0.0,
        print_size: false,
    };
    let mut a = std::env::args().skip(1);
    while let Some(k) = a.next() {
        if k == "--print-size" {
            o.print_size = true;
            continue;
        }
        let v = a.next().ok_or_else(|| format!("{k}: missing value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{k}: {e}");
        match k.as_str() {
            "--url" => o.url = v,
            "--conns" => o.conns = v.parse().map_err(|e| bad(&e))?,
            "--duration" => o.duration = Duration::from_secs_f64(v.parse().map_err(|e| bad(&e))?),
            "--services" => o.services = v.parse().map_err(|e| bad(&e))?,
            "--rate" => o.rate = v.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {k}")),
        }
    }
    Ok(o)
}

/// `host:port` and path of an `http://` URL.
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    Ok((host.to_owned(), format!("/{path}")))
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    host: String,
    path: String,
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn open(host: &str, path: &str) -> std::io::Result<Conn> {
        let s = TcpStream::connect(host)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            host: host.into(),
            path: path.into(),
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    /// POSTs `body`; returns the status code.
    fn post(&mut self, body: &[u8]) -> std::io::Result<u16> {
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            self.path,
            self.host,
            body.len()
        );
        self.w.write_all(head.as_bytes())?;
        self.w.write_all(body)?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = 0usize;
        let mut chunked = false;
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                return Err(std::io::Error::other("eof in headers"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        if chunked {
            loop {
                line.clear();
                self.r.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                let mut buf = vec![0u8; n + 2];
                self.r.read_exact(&mut buf)?;
                if n == 0 {
                    break;
                }
            }
        } else {
            let mut buf = vec![0u8; len];
            self.r.read_exact(&mut buf)?;
        }
        Ok(status)
    }
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
}

impl Counts {
    fn record(&self, r: std::io::Result<u16>) -> bool {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(s) if (200..300).contains(&s) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("otlp_load: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let start_ns = now_ns();
    let (req, dps) = payload(0, start_ns, now_ns());
    let size = req.encoded_len();
    if o.print_size {
        println!(
            "{}",
            serde_json::json!({"payload_bytes": size, "datapoints": dps})
        );
        return std::process::ExitCode::SUCCESS;
    }
    let (host, path) = match split_url(&o.url) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("otlp_load: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let counts = Arc::new(Counts::default());
    let t0 = Instant::now();
    let deadline = t0 + o.duration;
    let mut threads = Vec::new();
    if o.rate <= 0.0 {
        // Saturation: each connection sends its service's fixed body back to back.
        for c in 0..o.conns.max(1) {
            let (host, path, counts) = (host.clone(), path.clone(), Arc::clone(&counts));
            let body = payload(c % o.services.max(1), start_ns, now_ns())
                .0
                .encode_to_vec();
            threads.push(thread::spawn(move || {
                let mut conn = None;
                while Instant::now() < deadline {
                    if conn.is_none() {
                        conn = Conn::open(&host, &path).ok();
                        if conn.is_none() {
                            counts.record(Err(std::io::Error::other("connect")));
                            thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    }
                    if let Some(cn) = conn.as_mut()
                        && !counts.record(cn.post(&body))
                    {
                        conn = None;
                    }
                }
            }));
        }
    } else {
        // Paced: every service pushes `rate` times per second with fresh timestamps.
        let period = Duration::from_secs_f64(1.0 / o.rate);
        for s in 0..o.services.max(1) {
            let (host, path, counts) = (host.clone(), path.clone(), Arc::clone(&counts));
            threads.push(thread::spawn(move || {
                let mut conn: Option<Conn> = None;
                let mut next = Instant::now() + period.mul_f64(s as f64 / 10.0 % 1.0);
                while next < deadline {
                    thread::sleep(next.saturating_duration_since(Instant::now()));
                    next += period;
                    let body = payload(s, start_ns, now_ns()).0.encode_to_vec();
                    if conn.is_none() {
                        conn = Conn::open(&host, &path).ok();
                    }
                    match conn.as_mut() {
                        Some(cn) => {
                            if !counts.record(cn.post(&body)) {
                                conn = None;
                            }
                        }
                        None => {
                            counts.record(Err(std::io::Error::other("connect")));
                        }
                    }
                }
            }));
        }
    }
    for t in threads {
        let _ = t.join();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let ok = counts.ok.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "requests": counts.requests.load(Ordering::Relaxed),
            "ok": ok,
            "errors": counts.errors.load(Ordering::Relaxed),
            "datapoints": ok * dps as u64,
            "datapoints_per_request": dps,
            "payload_bytes": size,
            "elapsed_s": elapsed,
        })
    );
    std::process::ExitCode::SUCCESS
}
