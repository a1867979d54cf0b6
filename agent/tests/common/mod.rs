//! Shared helpers for the agent integration tests: an in-process agent on 127.0.0.1:0 and
//! OTLP request builders.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use loopwatch_agent::RunningAgent;
use loopwatch_agent::config::ConfigBuilder;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

/// An agent running on its own runtime, every listener on 127.0.0.1:0.
pub struct TestAgent {
    pub rt: tokio::runtime::Runtime,
    agent: Option<RunningAgent>,
}

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl TestAgent {
    pub fn start(builder: ConfigBuilder) -> Self {
        Self::start_with(
            builder
                .grpc_listen(loopback())
                .http_listen(loopback())
                .admin_listen(loopback()),
        )
    }

    /// Starts with the listen addresses of `builder` as they are.
    pub fn start_with(builder: ConfigBuilder) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let config = builder.build().expect("valid config");
        let agent = rt
            .block_on(loopwatch_agent::start(config))
            .expect("agent starts");
        TestAgent {
            rt,
            agent: Some(agent),
        }
    }

    pub fn agent(&self) -> &RunningAgent {
        self.agent.as_ref().expect("running")
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.agent().http_addr, path)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{}", self.agent().admin_addr, path)
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.agent().grpc_addr)
    }

    /// POSTs an OTLP/HTTP protobuf metrics request; returns the status code.
    pub fn post_metrics(&self, req: &ExportMetricsServiceRequest) -> u16 {
        use prost::Message;
        client()
            .post(self.http("/v1/metrics"))
            .header("content-type", "application/x-protobuf")
            .body(req.encode_to_vec())
            .send()
            .expect("POST /v1/metrics")
            .status()
            .as_u16()
    }

    /// GETs an admin path; returns status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let resp = client().get(self.admin(path)).send().expect("GET admin");
        let status = resp.status().as_u16();
        (status, resp.text().expect("body"))
    }

    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = self.get(path);
        (status, serde_json::from_str(&body).expect("JSON body"))
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.take() {
            self.rt.block_on(agent.shutdown());
        }
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Polls `f` every 50 ms until it returns true or `bound` passes (a generous protocol bound,
/// not a performance assertion). Returns whether it became true.
pub fn eventually(bound: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < bound {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

pub fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

pub fn gauge(name: &str, unit: &str, value: f64, attrs: &[(&str, &str)]) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        description: format!("test gauge {name}"),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
                value: Some(number_data_point::Value::AsDouble(value)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

pub fn counter(name: &str, unit: &str, value: i64, delta: bool) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        description: format!("test counter {name}"),
        data: Some(metric::Data::Sum(Sum {
            data_points: vec![NumberDataPoint {
                value: Some(number_data_point::Value::AsInt(value)),
                ..Default::default()
            }],
            aggregation_temporality: if delta { 1 } else { 2 },
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

pub fn histogram(name: &str, bounds: &[f64], counts: &[u64], sum: f64) -> Metric {
    Metric {
        name: name.into(),
        unit: "s".into(),
        description: format!("test histogram {name}"),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                attributes: vec![kv("tokio.runtime.name", "main")],
                explicit_bounds: bounds.to_vec(),
                bucket_counts: counts.to_vec(),
                count: counts.iter().sum(),
                sum: Some(sum),
                ..Default::default()
            }],
            aggregation_temporality: 2,
        })),
        ..Default::default()
    }
}

pub fn request(service: &str, instance: &str, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    let mut attrs = vec![kv("service.name", service)];
    if !instance.is_empty() {
        attrs.push(kv("service.instance.id", instance));
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: attrs,
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A tokio-style export: delay p99 and stall (seconds), utilization.
pub fn tokio_export(
    service: &str,
    instance: &str,
    p99: f64,
    stall: f64,
    util: f64,
) -> ExportMetricsServiceRequest {
    let rt = [("tokio.runtime.name", "main")];
    request(
        service,
        instance,
        vec![
            gauge("tokio.eventloop.delay.p99", "s", p99, &rt),
            gauge("tokio.eventloop.stall.duration", "s", stall, &rt),
            gauge("tokio.eventloop.utilization", "1", util, &rt),
        ],
    )
}

/// Finds the status entry of `service`/`instance` in `/v1/status`.
pub fn status_of(agent: &TestAgent, service: &str, instance: &str) -> Option<serde_json::Value> {
    let (_, body) = agent.get_json("/v1/status");
    body["services"]
        .as_array()?
        .iter()
        .find(|s| s["service"] == service && s["instance"] == instance)
        .cloned()
}
