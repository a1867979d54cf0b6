//! Decoding a request into updates: borrowed values, the caps on one series' identity, and
//! what is dropped and why, before anything is applied.

use std::ops::Range;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

use super::*;
use crate::wire;

/// 8-byte values borrowed from a request: prost's decoded list, or the packed
/// little-endian bytes of the body (a multiple of 8 bytes) from [`crate::wire`].
#[derive(Debug, Clone, Copy)]
pub(super) enum Packed<'a, T> {
    Slice(&'a [T]),
    Wire(&'a [u8]),
}

/// A value packed as 8 little-endian bytes.
pub(super) trait Le: Copy {
    fn from_le(b: [u8; 8]) -> Self;
}

impl Le for u64 {
    fn from_le(b: [u8; 8]) -> Self {
        u64::from_le_bytes(b)
    }
}

impl Le for f64 {
    fn from_le(b: [u8; 8]) -> Self {
        f64::from_bits(u64::from_le_bytes(b))
    }
}

impl<'a, T: Le> Packed<'a, T> {
    pub(super) fn len(self) -> usize {
        match self {
            Packed::Slice(s) => s.len(),
            Packed::Wire(b) => b.len() / 8,
        }
    }

    pub(super) fn iter(self) -> PackedIter<'a, T> {
        match self {
            Packed::Slice(s) => PackedIter::Slice(s.iter()),
            Packed::Wire(b) => PackedIter::Wire(b.chunks_exact(8)),
        }
    }
}

/// The values of a [`Packed`].
pub(super) enum PackedIter<'a, T> {
    Slice(std::slice::Iter<'a, T>),
    Wire(std::slice::ChunksExact<'a, u8>),
}

impl<T: Le> Iterator for PackedIter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        match self {
            PackedIter::Slice(i) => i.next().copied(),
            // Chunks of exactly 8 bytes.
            PackedIter::Wire(c) => c.next().map(|b| T::from_le(b.try_into().unwrap_or([0; 8]))),
        }
    }
}

/// A decoded value borrowing histogram buckets from the request.
#[derive(Debug, Clone, Copy)]
pub(super) enum ValueRef<'a> {
    Number(f64),
    Histogram {
        bounds: Packed<'a, f64>,
        /// `None`: no buckets were sent, everything is in the `+Inf` bucket.
        counts: Option<Packed<'a, u64>>,
        sum: f64,
        count: u64,
    },
}

impl ValueRef<'_> {
    pub(super) fn approx_bytes(&self) -> usize {
        match self {
            ValueRef::Number(_) => 0,
            ValueRef::Histogram { bounds, .. } => (bounds.len() * 2 + 1) * 8,
        }
    }

    pub(super) fn to_owned_value(self) -> SeriesValue {
        match self {
            ValueRef::Number(v) => SeriesValue::Number(v),
            ValueRef::Histogram {
                bounds,
                counts,
                sum,
                count,
            } => {
                let mut c = Vec::new();
                fill_counts(&mut c, bounds.len(), counts, count);
                SeriesValue::Histogram {
                    bounds: bounds.iter().collect(),
                    counts: c,
                    sum,
                    count,
                }
            }
        }
    }

    /// Overwrites `stored` with this value, reusing its allocations.
    pub(super) fn replace(self, stored: &mut SeriesValue) {
        match (self, stored) {
            (ValueRef::Number(v), SeriesValue::Number(s)) => *s = v,
            (
                ValueRef::Histogram {
                    bounds: b2,
                    counts: c2,
                    sum: s2,
                    count: n2,
                },
                SeriesValue::Histogram {
                    bounds,
                    counts,
                    sum,
                    count,
                },
            ) => {
                bounds.clear();
                bounds.extend(b2.iter());
                fill_counts(counts, b2.len(), c2, n2);
                *sum = s2;
                *count = n2;
            }
            (v, stored) => *stored = v.to_owned_value(),
        }
    }
}

/// Sets `out` to the per-bucket counts (`bounds + 1` entries).
pub(super) fn fill_counts(
    out: &mut Vec<u64>,
    bounds: usize,
    counts: Option<Packed<'_, u64>>,
    count: u64,
) {
    out.clear();
    match counts {
        Some(c) => out.extend(c.iter()),
        None => {
            out.resize(bounds, 0);
            out.push(count);
        }
    }
}

/// One decoded update to a series.
#[derive(Debug, Clone)]
pub(crate) struct Update<'a> {
    pub(super) key: UpdateKey<'a>,
    pub(super) kind: SeriesKind,
    pub(super) unit: &'a str,
    /// Full description; truncated when a series is created.
    pub(super) description: &'a str,
    pub(super) delta: bool,
    pub(super) value: ValueRef<'a>,
}

/// A request decoded into per-service updates, with dropped datapoints counted.
#[derive(Debug, Default)]
pub struct Prepared<'a> {
    pub(super) batches: Vec<(ServiceKey, Vec<Update<'a>>)>,
    /// One per batch, in order.
    pub(super) infos: Vec<ResourceInfo>,
    /// Datapoints dropped during decoding, by reason.
    pub dropped: Vec<(DropReason, u64)>,
}

impl Prepared<'_> {
    /// Number of datapoints that will be applied.
    pub fn datapoints(&self) -> u64 {
        self.batches.iter().map(|(_, u)| u.len() as u64).sum()
    }

    pub(super) fn drop(&mut self, reason: DropReason) {
        match self.dropped.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.dropped.push((reason, 1)),
        }
    }
}

/// Renders an OTLP attribute value as a label string.
pub(super) fn render_value(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => b.iter().map(|x| format!("{x:02x}")).collect(),
        Some(any_value::Value::ArrayValue(a)) => {
            let parts: Vec<String> = a.values.iter().map(|v| render_value(Some(v))).collect();
            format!("[{}]", parts.join(","))
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            let parts: Vec<String> = kv
                .values
                .iter()
                .map(|kv| format!("{}={}", kv.key, render_value(kv.value.as_ref())))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        // Dictionary references (profiles only) have no meaning without the dictionary.
        Some(_) => String::new(),
    }
}

pub(super) fn attributes(attrs: AttrSlice<'_>) -> Option<Vec<(String, String)>> {
    if attrs.len() > MAX_ATTRIBUTES {
        return None;
    }
    let mut out = Vec::with_capacity(attrs.len());
    for i in 0..attrs.len() {
        let key = attrs.key(i);
        if key.len() > MAX_NAME_BYTES {
            return None;
        }
        let v = attrs.render(i);
        if v.len() > MAX_VALUE_BYTES {
            return None;
        }
        out.push((key.to_owned(), v));
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    Some(out)
}

/// The service instance identity of a resource.
pub(crate) fn service_key(resource_attrs: &[KeyValue]) -> ServiceKey {
    service_key_of(AttrSlice::Proto(resource_attrs))
}

pub(super) fn service_key_of(attrs: AttrSlice<'_>) -> ServiceKey {
    let find = |k: &str| {
        (0..attrs.len())
            .find(|&i| attrs.key(i) == k)
            .map(|i| attrs.render(i))
    };
    let mut service = find("service.name").unwrap_or_default();
    if service.is_empty() {
        service = "unknown_service".into();
    }
    let mut instance = find("service.instance.id").unwrap_or_default();
    service.truncate(MAX_VALUE_BYTES.min(service.len()));
    instance.truncate(MAX_VALUE_BYTES.min(instance.len()));
    ServiceKey { service, instance }
}

/// Decodes a request into updates. Never fails: bad datapoints are dropped and counted.
pub(crate) fn prepare(req: &ExportMetricsServiceRequest) -> Prepared<'_> {
    let mut prepared = Prepared::default();
    for rm in &req.resource_metrics {
        let resource_attrs = rm
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or(&[]);
        let key = service_key(resource_attrs);
        let window_ns = rm
            .scope_metrics
            .iter()
            .flat_map(|sm| &sm.metrics)
            .flat_map(|m| -> Box<dyn Iterator<Item = (u64, u64)> + '_> {
                match &m.data {
                    Some(metric::Data::Gauge(g)) => Box::new(
                        g.data_points
                            .iter()
                            .map(|p| (p.start_time_unix_nano, p.time_unix_nano)),
                    ),
                    Some(metric::Data::Sum(g)) => Box::new(
                        g.data_points
                            .iter()
                            .map(|p| (p.start_time_unix_nano, p.time_unix_nano)),
                    ),
                    Some(metric::Data::Histogram(g)) => Box::new(
                        g.data_points
                            .iter()
                            .map(|p| (p.start_time_unix_nano, p.time_unix_nano)),
                    ),
                    _ => Box::new(std::iter::empty()),
                }
            })
            .filter(|(start, _)| *start > 0)
            .map(|(start, time)| time.saturating_sub(start))
            .max()
            .unwrap_or(0);
        prepared
            .infos
            .push(resource_info(AttrSlice::Proto(resource_attrs), window_ns));
        // One allocation: the datapoints of the resource (an upper bound of its updates).
        let points = rm
            .scope_metrics
            .iter()
            .flat_map(|sm| &sm.metrics)
            .map(|m| match &m.data {
                Some(metric::Data::Gauge(g)) => g.data_points.len(),
                Some(metric::Data::Sum(s)) => s.data_points.len(),
                Some(metric::Data::Histogram(h)) => h.data_points.len(),
                _ => 0,
            })
            .sum();
        let mut updates = Vec::with_capacity(points);
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                prepare_metric(m, &mut updates, &mut prepared);
            }
        }
        prepared.batches.push((key, updates));
    }
    prepared
}

/// [`prepare`] for a request read by the borrowing decoder ([`crate::wire`]): the same
/// updates and drops as [`prepare`] gives for the prost decoding of the same body.
pub(crate) fn prepare_wire<'a>(req: &'a wire::Request<'a>) -> Prepared<'a> {
    let mut prepared = Prepared::default();
    let attrs = |r: &Range<usize>| AttrSlice::Wire(req.attrs.get(r.clone()).unwrap_or(&[]));
    for res in &req.resources {
        let key = service_key_of(attrs(&res.attrs));
        prepared
            .infos
            .push(resource_info(attrs(&res.attrs), res.window_ns));
        let metrics = req.metrics.get(res.metrics.clone()).unwrap_or(&[]);
        let mut updates = Vec::with_capacity(metrics.iter().map(|m| m.points.len()).sum());
        for m in metrics {
            let r = MetricRef {
                name: m.name,
                unit: m.unit,
                description: m.description,
            };
            let (kind, delta) = match m.data {
                wire::Data::None => continue,
                wire::Data::Gauge => (SeriesKind::Gauge, false),
                wire::Data::Sum {
                    monotonic,
                    temporality,
                } => (sum_kind(monotonic), temporality == TEMPORALITY_DELTA),
                wire::Data::Histogram { temporality } => {
                    let delta = temporality == TEMPORALITY_DELTA;
                    for p in req.histograms.get(m.points.clone()).unwrap_or(&[]) {
                        let point = HistogramRef {
                            sum: p.sum,
                            count: p.count,
                            bounds: Packed::Wire(p.explicit_bounds),
                            counts: Packed::Wire(p.bucket_counts),
                        };
                        let mut sink = (&mut updates, &mut prepared);
                        push_histogram(&mut sink, r, attrs(&p.attrs), delta, point);
                    }
                    continue;
                }
            };
            for p in req.numbers.get(m.points.clone()).unwrap_or(&[]) {
                let mut sink = (&mut updates, &mut prepared);
                push_number(&mut sink, r, attrs(&p.attrs), kind, delta, p.value);
            }
        }
        prepared.batches.push((key, updates));
    }
    prepared
}

/// The first 512 characters of a description.
pub(super) fn truncate_description(d: &str) -> &str {
    match d.char_indices().nth(512) {
        Some((i, _)) => &d[..i],
        None => d,
    }
}

/// What an update takes from its metric.
#[derive(Debug, Clone, Copy)]
pub(super) struct MetricRef<'a> {
    pub(super) name: &'a str,
    pub(super) unit: &'a str,
    pub(super) description: &'a str,
}

/// A histogram datapoint as sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct HistogramRef<'a> {
    pub(super) sum: Option<f64>,
    pub(super) count: u64,
    pub(super) bounds: Packed<'a, f64>,
    pub(super) counts: Packed<'a, u64>,
}

/// Where prepared updates go: the resource's updates, and the request's drop counts.
pub(super) type Sink<'s, 'a> = (&'s mut Vec<Update<'a>>, &'s mut Prepared<'a>);

pub(super) fn sum_kind(monotonic: bool) -> SeriesKind {
    if monotonic {
        SeriesKind::Counter
    } else {
        SeriesKind::UpDownCounter
    }
}

pub(super) fn push_update<'a>(
    (updates, prepared): &mut Sink<'_, 'a>,
    m: MetricRef<'a>,
    attrs: AttrSlice<'a>,
    kind: SeriesKind,
    delta: bool,
    value: ValueRef<'a>,
) {
    if m.name.len() > MAX_NAME_BYTES || m.unit.len() > MAX_NAME_BYTES {
        prepared.drop(DropReason::Oversize);
        return;
    }
    let key = match BorrowedKey::new(m.name, attrs) {
        Some(k) => UpdateKey::Borrowed(k),
        None => match attributes(attrs) {
            Some(attributes) => UpdateKey::Owned(SeriesKey {
                name: m.name.to_owned(),
                attributes,
            }),
            None => {
                prepared.drop(DropReason::Oversize);
                return;
            }
        },
    };
    updates.push(Update {
        key,
        kind,
        unit: m.unit,
        description: m.description,
        delta,
        value,
    });
}

pub(super) fn push_number<'a>(
    sink: &mut Sink<'_, 'a>,
    m: MetricRef<'a>,
    attrs: AttrSlice<'a>,
    kind: SeriesKind,
    delta: bool,
    value: Option<f64>,
) {
    match value {
        None => sink.1.drop(DropReason::Unsupported),
        Some(v) if !v.is_finite() => sink.1.drop(DropReason::NonFinite),
        Some(v) => push_update(sink, m, attrs, kind, delta, ValueRef::Number(v)),
    }
}

pub(super) fn push_histogram<'a>(
    sink: &mut Sink<'_, 'a>,
    m: MetricRef<'a>,
    attrs: AttrSlice<'a>,
    delta: bool,
    p: HistogramRef<'a>,
) {
    let sum = p.sum.unwrap_or(0.0);
    let (bounds, counts) = (p.bounds, p.counts);
    if bounds.len() > MAX_HISTOGRAM_BUCKETS {
        sink.1.drop(DropReason::Oversize);
    } else if !sum.is_finite() || bounds.iter().any(|b| !b.is_finite()) {
        sink.1.drop(DropReason::NonFinite);
    } else if !(counts.len() == 0 || counts.len() == bounds.len() + 1)
        || bounds
            .iter()
            .zip(bounds.iter().skip(1))
            .any(|(a, b)| a >= b)
    {
        sink.1.drop(DropReason::Invalid);
    } else {
        // No buckets: everything in the +Inf bucket.
        let counts = (counts.len() != 0).then_some(counts);
        let value = ValueRef::Histogram {
            bounds,
            counts,
            sum,
            count: p.count,
        };
        push_update(sink, m, attrs, SeriesKind::Histogram, delta, value);
    }
}

pub(super) fn prepare_metric<'a>(
    m: &'a opentelemetry_proto::tonic::metrics::v1::Metric,
    updates: &mut Vec<Update<'a>>,
    prepared: &mut Prepared<'a>,
) {
    let r = MetricRef {
        name: &m.name,
        unit: &m.unit,
        description: &m.description,
    };
    let sink = &mut (updates, prepared);
    let number = |v: Option<&number_data_point::Value>| match v {
        Some(number_data_point::Value::AsDouble(d)) => Some(*d),
        Some(number_data_point::Value::AsInt(i)) => Some(*i as f64),
        None => None,
    };
    match &m.data {
        Some(metric::Data::Gauge(g)) => {
            for dp in &g.data_points {
                let attrs = AttrSlice::Proto(&dp.attributes);
                let v = number(dp.value.as_ref());
                push_number(sink, r, attrs, SeriesKind::Gauge, false, v);
            }
        }
        Some(metric::Data::Sum(s)) => {
            let kind = sum_kind(s.is_monotonic);
            let delta = s.aggregation_temporality == TEMPORALITY_DELTA;
            for dp in &s.data_points {
                let attrs = AttrSlice::Proto(&dp.attributes);
                push_number(sink, r, attrs, kind, delta, number(dp.value.as_ref()));
            }
        }
        Some(metric::Data::Histogram(h)) => {
            let delta = h.aggregation_temporality == TEMPORALITY_DELTA;
            for dp in &h.data_points {
                let point = HistogramRef {
                    sum: dp.sum,
                    count: dp.count,
                    bounds: Packed::Slice(&dp.explicit_bounds),
                    counts: Packed::Slice(&dp.bucket_counts),
                };
                push_histogram(sink, r, AttrSlice::Proto(&dp.attributes), delta, point);
            }
        }
        Some(metric::Data::ExponentialHistogram(h)) => {
            for _ in &h.data_points {
                sink.1.drop(DropReason::Unsupported);
            }
        }
        Some(metric::Data::Summary(s)) => {
            for _ in &s.data_points {
                sink.1.drop(DropReason::Unsupported);
            }
        }
        None => {}
    }
}
