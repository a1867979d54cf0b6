//! Shared pieces of the reliability tests: OTLP request builders, gzip, a gRPC client, and
//! the "after each case" checks (agent up, RSS bounded, the well-behaved service unchanged).

#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::time::Duration;

use loopwatch_e2e::{Agent, Service, wait_for};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tonic::codec::CompressionEncoding;

/// Protobuf content type.
pub const PB: &str = "application/x-protobuf";
/// JSON content type.
pub const JSON: &str = "application/json";

/// A string attribute.
pub fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// A gauge with one datapoint.
pub fn gauge(name: &str, unit: &str, value: f64, attrs: &[(&str, &str)]) -> Metric {
    gauge_at(name, unit, value, attrs, 0)
}

/// A gauge with one datapoint carrying `time_unix_nano`.
pub fn gauge_at(name: &str, unit: &str, value: f64, attrs: &[(&str, &str)], time: u64) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
                value: Some(number_data_point::Value::AsDouble(value)),
                time_unix_nano: time,
                start_time_unix_nano: time,
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

/// One resource (service) with its metrics.
pub fn resource(service: &str, metrics: Vec<Metric>) -> ResourceMetrics {
    ResourceMetrics {
        resource: Some(Resource {
            attributes: vec![kv("service.name", service)],
            ..Default::default()
        }),
        scope_metrics: vec![ScopeMetrics {
            metrics,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A request for one service.
pub fn request(service: &str, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![resource(service, metrics)],
    }
}

/// A tokio-style export: delay p99 and stall (seconds), utilization.
pub fn tokio_export(service: &str, p99: f64, stall: f64, util: f64) -> ExportMetricsServiceRequest {
    let rt = [("tokio.runtime.name", "main")];
    request(
        service,
        vec![
            gauge("tokio.eventloop.delay.p99", "s", p99, &rt),
            gauge("tokio.eventloop.stall.duration", "s", stall, &rt),
            gauge("tokio.eventloop.utilization", "1", util, &rt),
        ],
    )
}

/// Encodes a request as protobuf.
pub fn pb(req: &ExportMetricsServiceRequest) -> Vec<u8> {
    prost::Message::encode_to_vec(req)
}

/// Gzips `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

/// A gzip stream of `n` zero bytes, built without holding `n` bytes.
pub fn gzip_zeros(n: usize) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![0u8; 1024 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(block.len());
        enc.write_all(&block[..k]).expect("gzip");
        left -= k;
    }
    enc.finish().expect("gzip")
}

/// Exports over OTLP/gRPC (optionally gzip): Ok or the gRPC status code.
pub fn grpc_export(
    endpoint: &str,
    req: ExportMetricsServiceRequest,
    gzip: bool,
) -> Result<(), tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let fut = async {
            let mut c = MetricsServiceClient::connect(endpoint.to_string())
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?
                .max_encoding_message_size(usize::MAX);
            if gzip {
                c = c.send_compressed(CompressionEncoding::Gzip);
            }
            c.export(req).await.map(|_| ())
        };
        tokio::time::timeout(Duration::from_secs(60), fut)
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("test timeout")))
    })
}

/// RSS growth allowed over one bad-input case (64 MiB): the caps bound memory, this catches
/// anything proportional to the attack (a 128 MiB gzip bomb, 100k series, 10k services).
pub const RSS_GROWTH_LIMIT_KIB: u64 = 64 * 1024;

/// The checks after each case: the agent process runs and `/livez` is 200; its RSS grew by
/// at most [`RSS_GROWTH_LIMIT_KIB`]; the well-behaved service is tracked, `ok`, fresh, and
/// `/readyz?service=` for it is 200. Returns the RSS after.
pub fn after_case(case: &str, agent: &mut Agent, well: &Service, rss_before: u64) -> u64 {
    assert!(agent.proc.is_running(), "[{case}] agent process exited");
    assert_eq!(agent.get("/livez").0, 200, "[{case}] /livez");
    let rss_after = agent.rss_kib();
    eprintln!("[{case}] agent RSS {rss_before} KiB -> {rss_after} KiB");
    assert!(
        rss_after <= rss_before + RSS_GROWTH_LIMIT_KIB,
        "[{case}] agent RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // The well-behaved service exports every second: it must be fresh and ok.
    let status = wait_for(
        &format!("[{case}] well-behaved service ok and fresh"),
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            let s = agent.service_status(&well.name)?;
            let fresh = s["last_seen_age_seconds"].as_f64().is_some_and(|a| a < 3.0);
            (s["state"] == "ok" && fresh).then_some(s)
        },
    );
    let (code, body) = agent.get(&format!("/readyz?service={}", well.name));
    assert_eq!(
        code, 200,
        "[{case}] /readyz for the well-behaved service: {body} {status}"
    );
    rss_after
}
