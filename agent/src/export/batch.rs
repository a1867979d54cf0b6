//! Merges the metrics that arrive during one export interval into one upstream request.
//!
//! Identity of a point: resource attributes + scope (name, version) + metric name, type and
//! temporality + datapoint attributes. Merge rules:
//!
//! - gauges, cumulative sums and cumulative histograms: the latest point wins (by
//!   `time_unix_nano`, ties to the later arrival);
//! - delta sums: values added, start time = earliest, time = latest;
//! - delta histograms with identical bounds: bucket counts, count and sum added, min/max
//!   combined (different bounds: both points are kept);
//! - exponential histograms and summaries: every point is kept as received.
//!
//! Resource and scope attributes are kept exactly as received.

use std::collections::{BTreeMap, HashMap};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

/// OTLP `AGGREGATION_TEMPORALITY_DELTA`.
const DELTA: i32 = 1;

fn attrs_key(attrs: &[KeyValue]) -> String {
    let mut sorted: Vec<&KeyValue> = attrs.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    format!("{sorted:?}")
}

/// Points of one metric, merged by attribute set.
#[derive(Debug)]
struct MetricBatch {
    meta: Metric,
    numbers: Vec<NumberDataPoint>,
    histograms: Vec<HistogramDataPoint>,
    index: HashMap<String, usize>,
    /// Exponential histograms and summaries, appended unmerged.
    other: Vec<metric::Data>,
}

impl MetricBatch {
    fn new(m: &Metric) -> Self {
        MetricBatch {
            meta: Metric {
                name: m.name.clone(),
                description: m.description.clone(),
                unit: m.unit.clone(),
                metadata: m.metadata.clone(),
                data: None,
            },
            numbers: Vec::new(),
            histograms: Vec::new(),
            index: HashMap::new(),
            other: Vec::new(),
        }
    }

    fn merge_number(&mut self, p: &NumberDataPoint, delta: bool) {
        let key = attrs_key(&p.attributes);
        match self.index.get(&key) {
            None => {
                self.index.insert(key, self.numbers.len());
                self.numbers.push(p.clone());
            }
            Some(&i) => {
                let old = &mut self.numbers[i];
                if delta {
                    use number_data_point::Value::{AsDouble, AsInt};
                    old.value = match (old.value, p.value) {
                        (Some(AsInt(a)), Some(AsInt(b))) => Some(AsInt(a.saturating_add(b))),
                        (Some(AsInt(a)), Some(AsDouble(b))) => Some(AsDouble(a as f64 + b)),
                        (Some(AsDouble(a)), Some(AsInt(b))) => Some(AsDouble(a + b as f64)),
                        (Some(AsDouble(a)), Some(AsDouble(b))) => Some(AsDouble(a + b)),
                        (a, None) => a,
                        (None, b) => b,
                    };
                    old.start_time_unix_nano = old.start_time_unix_nano.min(p.start_time_unix_nano);
                    old.time_unix_nano = old.time_unix_nano.max(p.time_unix_nano);
                    old.exemplars.extend(p.exemplars.iter().cloned());
                } else if p.time_unix_nano >= old.time_unix_nano {
                    *old = p.clone();
                }
            }
        }
    }

    fn merge_histogram(&mut self, p: &HistogramDataPoint, delta: bool) {
        let key = attrs_key(&p.attributes);
        match self.index.get(&key) {
            None => {
                self.index.insert(key, self.histograms.len());
                self.histograms.push(p.clone());
            }
            Some(&i) => {
                let old = &mut self.histograms[i];
                if !delta {
                    if p.time_unix_nano >= old.time_unix_nano {
                        *old = p.clone();
                    }
                } else if old.explicit_bounds == p.explicit_bounds
                    && old.bucket_counts.len() == p.bucket_counts.len()
                {
                    for (a, b) in old.bucket_counts.iter_mut().zip(&p.bucket_counts) {
                        *a = a.saturating_add(*b);
                    }
                    old.count = old.count.saturating_add(p.count);
                    old.sum = match (old.sum, p.sum) {
                        (Some(a), Some(b)) => Some(a + b),
                        (a, b) => a.or(b),
                    };
                    old.min = match (old.min, p.min) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    old.max = match (old.max, p.max) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                    old.start_time_unix_nano = old.start_time_unix_nano.min(p.start_time_unix_nano);
                    old.time_unix_nano = old.time_unix_nano.max(p.time_unix_nano);
                    old.exemplars.extend(p.exemplars.iter().cloned());
                } else {
                    // Bounds changed within the interval: keep both points.
                    self.histograms.push(p.clone());
                }
            }
        }
    }

    fn points(&self) -> u64 {
        let other: usize = self
            .other
            .iter()
            .map(|d| match d {
                metric::Data::ExponentialHistogram(h) => h.data_points.len(),
                metric::Data::Summary(s) => s.data_points.len(),
                _ => 0,
            })
            .sum();
        (self.numbers.len() + self.histograms.len() + other) as u64
    }
}

/// What kind of data a metric entry holds (part of its identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Shape {
    Gauge,
    Sum { temporality: i32, monotonic: bool },
    Histogram { temporality: i32 },
    Other,
}

#[derive(Debug)]
struct ScopeBatch {
    scope: Option<InstrumentationScope>,
    schema_url: String,
    metrics: BTreeMap<(String, Shape), MetricBatch>,
}

#[derive(Debug)]
struct ResourceBatch {
    resource: Option<Resource>,
    schema_url: String,
    scopes: BTreeMap<String, ScopeBatch>,
}

/// Accumulates metrics between upstream exports.
#[derive(Debug, Default)]
pub(crate) struct Batcher {
    resources: BTreeMap<String, ResourceBatch>,
    points: u64,
}

impl Batcher {
    /// Merges one received request.
    pub(crate) fn add(&mut self, req: &ExportMetricsServiceRequest) {
        for rm in &req.resource_metrics {
            let rkey = attrs_key(
                rm.resource
                    .as_ref()
                    .map(|r| r.attributes.as_slice())
                    .unwrap_or(&[]),
            );
            let rb = self.resources.entry(rkey).or_insert_with(|| ResourceBatch {
                resource: rm.resource.clone(),
                schema_url: rm.schema_url.clone(),
                scopes: BTreeMap::new(),
            });
            for sm in &rm.scope_metrics {
                let skey = match &sm.scope {
                    Some(s) => format!(
                        "{}\u{0}{}\u{0}{}",
                        s.name,
                        s.version,
                        attrs_key(&s.attributes)
                    ),
                    None => String::new(),
                };
                let sb = rb.scopes.entry(skey).or_insert_with(|| ScopeBatch {
                    scope: sm.scope.clone(),
                    schema_url: sm.schema_url.clone(),
                    metrics: BTreeMap::new(),
                });
                for m in &sm.metrics {
                    let shape = match &m.data {
                        Some(metric::Data::Gauge(_)) => Shape::Gauge,
                        Some(metric::Data::Sum(s)) => Shape::Sum {
                            temporality: s.aggregation_temporality,
                            monotonic: s.is_monotonic,
                        },
                        Some(metric::Data::Histogram(h)) => Shape::Histogram {
                            temporality: h.aggregation_temporality,
                        },
                        Some(_) => Shape::Other,
                        None => continue,
                    };
                    let mb = sb
                        .metrics
                        .entry((m.name.clone(), shape))
                        .or_insert_with(|| MetricBatch::new(m));
                    let before = mb.points();
                    match &m.data {
                        Some(metric::Data::Gauge(g)) => {
                            for p in &g.data_points {
                                mb.merge_number(p, false);
                            }
                        }
                        Some(metric::Data::Sum(s)) => {
                            for p in &s.data_points {
                                mb.merge_number(p, s.aggregation_temporality == DELTA);
                            }
                        }
                        Some(metric::Data::Histogram(h)) => {
                            for p in &h.data_points {
                                mb.merge_histogram(p, h.aggregation_temporality == DELTA);
                            }
                        }
                        Some(other) => mb.other.push(other.clone()),
                        None => {}
                    }
                    self.points = self.points + mb.points() - before;
                }
            }
        }
    }

    /// Datapoints currently held.
    pub(crate) fn points(&self) -> u64 {
        self.points
    }

    /// Takes everything held as one request (empty request when nothing arrived).
    pub(crate) fn take(&mut self) -> ExportMetricsServiceRequest {
        self.points = 0;
        let resources = std::mem::take(&mut self.resources);
        let mut out = ExportMetricsServiceRequest::default();
        for (_, rb) in resources {
            let mut scope_metrics = Vec::new();
            for (_, sb) in rb.scopes {
                let mut metrics = Vec::new();
                for ((_, shape), mb) in sb.metrics {
                    let MetricBatch {
                        meta,
                        numbers,
                        histograms,
                        other,
                        ..
                    } = mb;
                    let with = |data| Metric {
                        data: Some(data),
                        ..meta.clone()
                    };
                    match shape {
                        Shape::Gauge => metrics.push(with(metric::Data::Gauge(Gauge {
                            data_points: numbers,
                        }))),
                        Shape::Sum {
                            temporality,
                            monotonic,
                        } => metrics.push(with(metric::Data::Sum(Sum {
                            data_points: numbers,
                            aggregation_temporality: temporality,
                            is_monotonic: monotonic,
                        }))),
                        Shape::Histogram { temporality } => {
                            metrics.push(with(metric::Data::Histogram(Histogram {
                                data_points: histograms,
                                aggregation_temporality: temporality,
                            })))
                        }
                        Shape::Other => metrics.extend(other.into_iter().map(with)),
                    }
                }
                scope_metrics.push(ScopeMetrics {
                    scope: sb.scope,
                    metrics,
                    schema_url: sb.schema_url,
                });
            }
            out.resource_metrics.push(ResourceMetrics {
                resource: rb.resource,
                scope_metrics,
                schema_url: rb.schema_url,
            });
        }
        out
    }
}

/// Number of datapoints in a metrics request.
pub(crate) fn count_points(req: &ExportMetricsServiceRequest) -> u64 {
    req.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(metric::Data::Gauge(g)) => g.data_points.len(),
            Some(metric::Data::Sum(s)) => s.data_points.len(),
            Some(metric::Data::Histogram(h)) => h.data_points.len(),
            Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(metric::Data::Summary(s)) => s.data_points.len(),
            None => 0,
        } as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn req(metric: Metric) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "s"), kv("k8s.pod.name", "p")],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![metric],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn sum(v: i64, t: u64, temporality: i32) -> Metric {
        Metric {
            name: "c".into(),
            data: Some(metric::Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    attributes: vec![kv("a", "1")],
                    value: Some(number_data_point::Value::AsInt(v)),
                    start_time_unix_nano: t,
                    time_unix_nano: t + 1,
                    ..Default::default()
                }],
                aggregation_temporality: temporality,
                is_monotonic: true,
            })),
            ..Default::default()
        }
    }

    fn value(out: &ExportMetricsServiceRequest) -> (i64, u64, u64) {
        let m = &out.resource_metrics[0].scope_metrics[0].metrics[0];
        let Some(metric::Data::Sum(s)) = &m.data else {
            panic!("sum expected")
        };
        assert_eq!(s.data_points.len(), 1);
        let p = &s.data_points[0];
        let Some(number_data_point::Value::AsInt(v)) = p.value else {
            panic!("int")
        };
        (v, p.start_time_unix_nano, p.time_unix_nano)
    }

    #[test]
    fn deltas_add_cumulative_latest_wins() {
        let mut b = Batcher::default();
        for (v, t) in [(2, 10), (3, 20), (4, 30)] {
            b.add(&req(sum(v, t, DELTA)));
        }
        assert_eq!(b.points(), 1);
        let out = b.take();
        assert_eq!(value(&out), (9, 10, 31));
        let attrs = &out.resource_metrics[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes;
        assert_eq!(attrs.len(), 2, "resource attributes kept");
        assert_eq!(b.points(), 0);
        for (v, t) in [(5, 10), (7, 20), (6, 5)] {
            b.add(&req(sum(v, t, 2)));
        }
        // The point with the latest timestamp (7 at t=21) wins over a late-arriving older one.
        assert_eq!(value(&b.take()).0, 7);
    }

    fn delta_hist(counts: Vec<u64>, bounds: Vec<f64>, sum: f64) -> Metric {
        Metric {
            name: "h".into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    count: counts.iter().sum(),
                    bucket_counts: counts,
                    explicit_bounds: bounds,
                    sum: Some(sum),
                    min: Some(sum / 10.0),
                    max: Some(sum),
                    ..Default::default()
                }],
                aggregation_temporality: DELTA,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn delta_histograms_add_bucketwise() {
        let mut b = Batcher::default();
        b.add(&req(delta_hist(vec![1, 2, 3], vec![0.1, 1.0], 4.0)));
        b.add(&req(delta_hist(vec![0, 1, 1], vec![0.1, 1.0], 2.0)));
        let out = b.take();
        let Some(metric::Data::Histogram(h)) =
            &out.resource_metrics[0].scope_metrics[0].metrics[0].data
        else {
            panic!("histogram expected")
        };
        assert_eq!(h.data_points.len(), 1);
        let p = &h.data_points[0];
        assert_eq!(p.bucket_counts, vec![1, 3, 4]);
        assert_eq!(p.count, 8);
        assert_eq!(p.sum, Some(6.0));
        assert_eq!((p.min, p.max), (Some(0.2), Some(4.0)));
        // Different bounds within the interval: both points kept.
        b.add(&req(delta_hist(vec![1, 1], vec![0.5], 1.0)));
        b.add(&req(delta_hist(vec![1, 1, 1], vec![0.1, 1.0], 1.0)));
        assert_eq!(b.points(), 2);
    }
}
