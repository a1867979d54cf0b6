//! An in-memory OTel exporter for the tests: keeps the gauges and sums of the last export.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};

/// (metric name, attributes rendered `k=v` sorted, value) of gauges and sums of the last export.
pub type Points = Vec<(String, Vec<String>, f64)>;

#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Points>>);

impl PushMetricExporter for Capture {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let mut out = Vec::new();
        for scope in metrics.scope_metrics() {
            for m in scope.metrics() {
                let name = m.name().to_owned();
                let mut push = |attrs: Vec<String>, v: f64| out.push((name.clone(), attrs, v));
                let render = |it: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
                    let mut v: Vec<String> =
                        it.map(|kv| format!("{}={}", kv.key, kv.value)).collect();
                    v.sort();
                    v
                };
                match m.data() {
                    AggregatedMetrics::F64(MetricData::Gauge(g)) => {
                        for p in g.data_points() {
                            push(render(&mut p.attributes()), p.value());
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                        for p in g.data_points() {
                            push(render(&mut p.attributes()), p.value() as f64);
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Sum(s)) => {
                        for p in s.data_points() {
                            push(render(&mut p.attributes()), p.value() as f64);
                        }
                    }
                    AggregatedMetrics::I64(MetricData::Sum(s)) => {
                        for p in s.data_points() {
                            push(render(&mut p.attributes()), p.value() as f64);
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Sum(s)) => {
                        for p in s.data_points() {
                            push(render(&mut p.attributes()), p.value());
                        }
                    }
                    _ => {}
                }
            }
        }
        *self.0.lock().expect("capture lock") = out;
        Ok(())
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

pub fn provider() -> (SdkMeterProvider, Capture) {
    let capture = Capture::default();
    let reader = PeriodicReader::builder(capture.clone())
        .with_interval(Duration::from_secs(3600))
        .build();
    (
        SdkMeterProvider::builder().with_reader(reader).build(),
        capture,
    )
}
