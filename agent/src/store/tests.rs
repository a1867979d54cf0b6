use super::*;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

/// The store's own view of an instance, for its tests.
#[derive(Debug)]
pub(super) struct Plain {
    pub(super) series: SeriesMap,
    last_seen: Instant,
}

impl Entry for Plain {
    fn new(now: Instant) -> Self {
        Plain {
            series: SeriesMap::default(),
            last_seen: now,
        }
    }
    fn series(&self) -> &SeriesMap {
        &self.series
    }
    fn series_mut(&mut self) -> &mut SeriesMap {
        &mut self.series
    }
    fn last_seen(&self) -> Instant {
        self.last_seen
    }
    fn arrived(&mut self, now: Instant, _: ResourceInfo) {
        self.last_seen = now;
    }
}
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn request(service: &str, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
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

fn point(v: f64, attr: &str) -> NumberDataPoint {
    NumberDataPoint {
        attributes: vec![kv("a", attr)],
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

fn sum(name: &str, temporality: i32, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: temporality,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

fn limits() -> Limits {
    Limits {
        max_services: 2,
        max_series_per_service: 3,
        max_total_bytes: MAX_TOTAL_BYTES,
    }
}

fn value(store: &Store<Plain>, name: &str) -> f64 {
    let (_, s) = store.services().next().unwrap();
    match s
        .series
        .iter()
        .find(|(k, _)| k.name == name)
        .unwrap()
        .1
        .value
    {
        SeriesValue::Number(v) => v,
        _ => panic!("not a number"),
    }
}

#[test]
fn delta_accumulates_cumulative_replaces() {
    let mut store = Store::<Plain>::new(limits());
    let now = Instant::now();
    for _ in 0..3 {
        let req = request(
            "s",
            vec![
                sum("d", 1, vec![point(2.0, "x")]),
                sum("c", 2, vec![point(5.0, "x")]),
            ],
        );
        store.apply(prepare(&req), now).unwrap();
    }
    assert_eq!(value(&store, "d"), 6.0);
    assert_eq!(value(&store, "c"), 5.0);
}

#[test]
fn non_finite_skipped_and_counted() {
    let req = request(
        "s",
        vec![Metric {
            name: "g".into(),
            data: Some(metric::Data::Gauge(Gauge {
                data_points: vec![
                    point(f64::NAN, "1"),
                    point(f64::INFINITY, "2"),
                    point(1.0, "3"),
                ],
            })),
            ..Default::default()
        }],
    );
    let p = prepare(&req);
    assert_eq!(p.dropped, vec![(DropReason::NonFinite, 2)]);
    assert_eq!(p.datapoints(), 1);
}

#[test]
fn caps_refuse_whole_request() {
    let mut store = Store::<Plain>::new(limits());
    let now = Instant::now();
    let four: Vec<_> = (0..4).map(|i| point(1.0, &i.to_string())).collect();
    let err = store.apply(prepare(&request("s", vec![sum("d", 1, four)])), now);
    assert_eq!(err, Err(CapError::TooManySeries(3)));
    assert!(store.is_empty(), "nothing applied on refusal");
    for s in ["a", "b"] {
        store
            .apply(
                prepare(&request(s, vec![sum("d", 1, vec![point(1.0, "x")])])),
                now,
            )
            .unwrap();
    }
    let err = store.apply(prepare(&request("c", vec![])), now);
    assert_eq!(err, Err(CapError::TooManyServices(2)));
    assert_eq!(store.len(), 2);
}

#[test]
fn departed_instances_are_forgotten_and_free_their_slot_and_bytes() {
    let mut store = Store::<Plain>::new(limits());
    let t0 = Instant::now();
    let later = t0 + std::time::Duration::from_secs(300);
    let req = |s: &str| request(s, vec![sum("d", 1, vec![point(1.0, "x")])]);
    store.apply(prepare(&req("old")), t0).unwrap();
    store.apply(prepare(&req("live")), later).unwrap();
    assert_eq!(
        store.apply(prepare(&req("new")), later),
        Err(CapError::TooManyServices(2)),
        "the cap is full"
    );
    let bytes_two = store.approx_bytes();
    assert_eq!(
        store.evict_departed(later, std::time::Duration::from_secs(300)),
        1
    );
    assert_eq!(store.len(), 1);
    assert_eq!(store.services().next().unwrap().0.service, "live");
    assert!(store.approx_bytes() < bytes_two && store.approx_bytes() > 0);
    // The slot is free again.
    store.apply(prepare(&req("new")), later).unwrap();
    assert_eq!(store.len(), 2);
    assert_eq!(
        store.evict_departed(later, std::time::Duration::from_secs(300)),
        0
    );
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

fn gauge_with(attrs: Vec<KeyValue>, v: f64) -> Metric {
    Metric {
        name: "g".into(),
        unit: "s".into(),
        description: "d".repeat(600),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                attributes: attrs,
                value: Some(number_data_point::Value::AsDouble(v)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

#[test]
fn attribute_order_and_value_types_share_one_series() {
    let mut store = Store::<Plain>::new(limits());
    let now = Instant::now();
    let orders = [
        vec![kv("b", "2"), kv("a", "1"), kv("c", "3")],
        vec![kv("a", "1"), kv("b", "2"), kv("c", "3")],
        vec![kv("c", "3"), kvi("a", 1), kv("b", "2")],
        // Duplicate key: the smallest value wins, as when keys are sorted and deduplicated.
        vec![kv("c", "3"), kv("a", "9"), kv("b", "2"), kv("a", "1")],
    ];
    for (i, attrs) in orders.into_iter().enumerate() {
        store
            .apply(
                prepare(&request("s", vec![gauge_with(attrs, i as f64)])),
                now,
            )
            .unwrap();
    }
    let (_, s) = store.services().next().unwrap();
    assert_eq!(s.series.len(), 1);
    let (key, series) = s.series.iter().next().unwrap();
    let pairs: Vec<(&str, &str)> = key
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(pairs, [("a", "1"), ("b", "2"), ("c", "3")]);
    assert_eq!(series.value, SeriesValue::Number(3.0));
    assert_eq!(series.description.chars().count(), 512);
    let expected = approx_bytes(key, series);
    assert_eq!(
        store.approx_bytes(),
        expected,
        "accounting stays exact on updates"
    );
}

#[test]
fn series_found_whatever_the_order_and_kept_sorted() {
    let mut store = Store::<Plain>::new(Limits {
        max_services: 2,
        max_series_per_service: 1000,
        max_total_bytes: MAX_TOTAL_BYTES,
    });
    let now = Instant::now();
    let points = |ids: &[usize], v: f64| -> Vec<NumberDataPoint> {
        ids.iter().map(|i| point(v, &format!("{i:03}"))).collect()
    };
    let ids: Vec<usize> = (0..40).collect();
    let reversed: Vec<usize> = (0..41).rev().collect();
    // 40 new series at once (re-sorted through a tree), then one new (inserted in
    // place) with the others in reverse order, then the same order again (remembered
    // positions), then another order (the positions miss: searched), with a datapoint
    // repeated.
    let mut rotated: Vec<usize> = (0..41).map(|i| (i + 7) % 41).collect();
    rotated.push(3);
    for (round, order) in [&ids, &reversed, &reversed, &rotated]
        .into_iter()
        .enumerate()
    {
        let req = request("s", vec![sum("d", 1, points(order, 1.0))]);
        store.apply(prepare(&req), now).unwrap();
        let (_, s) = store.services().next().unwrap();
        let keys: Vec<&SeriesKey> = s.series.iter().map(|(k, _)| k).collect();
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
        assert_eq!(s.series.len(), if round == 0 { 40 } else { 41 });
    }
    let (_, s) = store.services().next().unwrap();
    let value = |attr: &str| {
        let (_, series) = s
            .series
            .iter()
            .find(|(k, _)| k.attributes[0].1 == attr)
            .unwrap();
        series.value.clone()
    };
    // Delta sums: one per request it was in (series 3 twice in the last one).
    assert_eq!(value("000"), SeriesValue::Number(4.0));
    assert_eq!(value("003"), SeriesValue::Number(5.0));
    assert_eq!(value("040"), SeriesValue::Number(3.0));
    assert_eq!(s.series.named("d").count(), 41);
    assert_eq!(s.series.named("c").count(), 0);
    let expected: usize = s.series.iter().map(|(k, v)| approx_bytes(k, v)).sum();
    assert_eq!(store.approx_bytes(), expected);
}

#[test]
fn one_service_in_several_batches_of_a_request() {
    let mut store = Store::<Plain>::new(limits());
    let now = Instant::now();
    let first = request("s", vec![sum("d", 1, vec![point(1.0, "b")])]);
    store.apply(prepare(&first), now).unwrap();
    // Batch 1 adds series "a" (sorted before "b"); batch 2, same service, updates "b",
    // whose position batch 1 moved.
    let mut req = request("s", vec![sum("d", 1, vec![point(10.0, "a")])]);
    req.resource_metrics
        .extend(request("s", vec![sum("d", 1, vec![point(100.0, "b")])]).resource_metrics);
    store.apply(prepare(&req), now).unwrap();
    let (_, s) = store.services().next().unwrap();
    let values: Vec<(&str, SeriesValue)> = s
        .series
        .iter()
        .map(|(k, v)| (k.attributes[0].1.as_str(), v.value.clone()))
        .collect();
    assert_eq!(
        values,
        [
            ("a", SeriesValue::Number(10.0)),
            ("b", SeriesValue::Number(101.0))
        ]
    );
}

#[test]
fn delta_histograms_accumulate_and_replace_on_new_bounds() {
    use opentelemetry_proto::tonic::metrics::v1::{Histogram, HistogramDataPoint};
    let hist = |bounds: Vec<f64>, counts: Vec<u64>, count: u64| Metric {
        name: "h".into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                explicit_bounds: bounds,
                bucket_counts: counts,
                count,
                sum: Some(count as f64),
                ..Default::default()
            }],
            aggregation_temporality: 1,
        })),
        ..Default::default()
    };
    let mut store = Store::<Plain>::new(limits());
    let now = Instant::now();
    let series = |store: &Store<Plain>| {
        let (_, s) = store.services().next().unwrap();
        s.series.values().next().unwrap().value.clone()
    };
    store
        .apply(
            prepare(&request("s", vec![hist(vec![1.0], vec![1, 2], 3)])),
            now,
        )
        .unwrap();
    store
        .apply(
            prepare(&request("s", vec![hist(vec![1.0], vec![], 4)])),
            now,
        )
        .unwrap();
    assert_eq!(
        series(&store),
        SeriesValue::Histogram {
            bounds: vec![1.0],
            counts: vec![1, 6],
            sum: 7.0,
            count: 7
        }
    );
    store
        .apply(
            prepare(&request("s", vec![hist(vec![1.0, 2.0], vec![1, 1, 1], 3)])),
            now,
        )
        .unwrap();
    assert_eq!(
        series(&store),
        SeriesValue::Histogram {
            bounds: vec![1.0, 2.0],
            counts: vec![1, 1, 1],
            sum: 3.0,
            count: 3
        }
    );
    let (_, s) = store.services().next().unwrap();
    let (k, v) = s.series.iter().next().unwrap();
    assert_eq!(store.approx_bytes(), approx_bytes(k, v));
}
