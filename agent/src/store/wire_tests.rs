//! The borrowing decoder ([`crate::wire`]) against prost: what it accepts gives the same
//! store and drop counts as prost's decoding, and what it refuses is left to prost.

use super::tests::Plain;
use super::*;
use crate::wire;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Exemplar, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(k: &str, v: &str) -> KeyValue {
    kv(k, any_value::Value::StringValue(v.into()))
}

fn number(attrs: Vec<KeyValue>, v: Option<number_data_point::Value>) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        time_unix_nano: 17,
        start_time_unix_nano: 3,
        value: v,
        flags: 1,
        ..Default::default()
    }
}

fn hist(attrs: Vec<KeyValue>, bounds: Vec<f64>, counts: Vec<u64>) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes: attrs,
        count: counts.iter().sum::<u64>().max(4),
        sum: Some(1.5),
        bucket_counts: counts,
        explicit_bounds: bounds,
        min: Some(0.1),
        ..Default::default()
    }
}

fn metric(name: &str, unit: &str, data: metric::Data) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        description: "d".into(),
        data: Some(data),
        ..Default::default()
    }
}

/// Every shape the fast path handles, with every drop reason.
fn full_request() -> ExportMetricsServiceRequest {
    use number_data_point::Value::{AsDouble, AsInt};
    let d = |v| Some(AsDouble(v));
    let gauge = |pts| metric::Data::Gauge(Gauge { data_points: pts });
    let sum = |pts, temporality, mono| {
        metric::Data::Sum(Sum {
            data_points: pts,
            aggregation_temporality: temporality,
            is_monotonic: mono,
        })
    };
    let histogram = |pts, temporality| {
        metric::Data::Histogram(Histogram {
            data_points: pts,
            aggregation_temporality: temporality,
        })
    };
    let long = "x".repeat(MAX_NAME_BYTES + 1);
    let metrics = vec![
        metric(
            "g",
            "s",
            gauge(vec![number(vec![s("b", "2"), s("a", "1")], d(0.5))]),
        ),
        metric(
            "g.kinds",
            "ms",
            gauge(vec![
                number(
                    vec![
                        kv("i", any_value::Value::IntValue(-42)),
                        kv("t", any_value::Value::BoolValue(true)),
                    ],
                    Some(AsInt(7)),
                ),
                number(vec![s("k", "v"), s("k", "w")], d(1.0)),
                number(vec![], d(f64::NAN)),
                number(vec![], None),
                number(vec![s(&long, "v")], d(2.0)),
            ]),
        ),
        metric(&long, "", gauge(vec![number(vec![], d(1.0))])),
        metric(
            "c",
            "{x}",
            sum(vec![number(vec![s("a", "1")], d(3.0))], 2, true),
        ),
        metric(
            "c.delta",
            "",
            sum(vec![number(vec![], Some(AsInt(5)))], 1, true),
        ),
        metric("u", "", sum(vec![number(vec![], d(-1.0))], 2, false)),
        metric(
            "h",
            "s",
            histogram(
                vec![
                    hist(vec![s("r", "/")], vec![0.1, 1.0], vec![1, 2, 3]),
                    hist(vec![s("r", "/x")], vec![0.1], vec![]),
                    hist(vec![], vec![1.0, 0.5], vec![1, 1, 1]),
                    hist(vec![], vec![1.0], vec![1, 1, 1]),
                    hist(vec![], vec![f64::INFINITY], vec![1, 1]),
                    hist(vec![], vec![0.0; MAX_HISTOGRAM_BUCKETS + 1], vec![]),
                ],
                2,
            ),
        ),
        metric(
            "h.delta",
            "",
            histogram(vec![hist(vec![], vec![1.0], vec![2, 2])], 1),
        ),
        Metric {
            name: "empty".into(),
            ..Default::default()
        },
    ];
    let resource = |attrs| ResourceMetrics {
        resource: Some(Resource {
            attributes: attrs,
            ..Default::default()
        }),
        scope_metrics: vec![ScopeMetrics {
            scope: Some(InstrumentationScope {
                name: "loopwatch".into(),
                version: "0.1.0".into(),
                ..Default::default()
            }),
            metrics: metrics.clone(),
            schema_url: "https://x".into(),
        }],
        schema_url: String::new(),
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![
            resource(vec![
                s("service.name", "svc"),
                s("service.instance.id", "i-1"),
            ]),
            resource(vec![kv("service.name", any_value::Value::IntValue(9))]),
            ResourceMetrics::default(),
        ],
    }
}

/// The store and drop counts after applying `prepared` twice (delta accumulation).
fn outcome(prepared: impl Fn() -> Prepared<'static>) -> (Vec<String>, Vec<(DropReason, u64)>) {
    let mut store = Store::<Plain>::new(Limits {
        max_services: 10,
        max_series_per_service: 100,
        max_total_bytes: MAX_TOTAL_BYTES,
    });
    let now = Instant::now();
    let mut dropped = Vec::new();
    for _ in 0..2 {
        let p = prepared();
        dropped = p.dropped.clone();
        store.apply(p, now).expect("within caps");
    }
    let mut out: Vec<String> = store
        .services()
        .flat_map(|(k, s)| s.series.iter().map(move |e| format!("{k:?} {e:?}")))
        .collect();
    out.push(format!("bytes {}", store.approx_bytes()));
    (out, dropped)
}

/// Checks one body: the fast path gives prost's result, or refuses what prost refuses
/// or what it does not handle.
fn check(body: &'static [u8]) -> bool {
    let fast = wire::decode(body).map(|r| &*Box::leak(Box::new(r)));
    let slow = ExportMetricsServiceRequest::decode(body)
        .ok()
        .map(|r| &*Box::leak(Box::new(r)));
    match (fast, slow) {
        (Some(f), Some(s)) => {
            assert_eq!(outcome(|| prepare_wire(f)), outcome(|| prepare(s)));
            true
        }
        (Some(_), None) => panic!("fast path accepted a body prost refuses: {body:?}"),
        (None, _) => false,
    }
}

#[test]
fn fast_path_matches_prost() {
    let body: &'static [u8] = full_request().encode_to_vec().leak();
    assert!(check(body), "the fast path handles the common shapes");
    let (store, dropped) =
        outcome(|| prepare_wire(Box::leak(Box::new(wire::decode(body).unwrap()))));
    assert!(store.len() > 10, "{store:?}");
    assert_eq!(dropped.len(), 4, "every drop reason: {dropped:?}");
}

#[test]
fn fast_path_leaves_other_shapes_to_prost() {
    let with = |f: &dyn Fn(&mut ExportMetricsServiceRequest)| {
        let mut r = full_request();
        f(&mut r);
        let body: &'static [u8] = r.encode_to_vec().leak();
        assert!(!check(body), "expected the prost path");
    };
    fn first(r: &mut ExportMetricsServiceRequest) -> &mut Metric {
        &mut r.resource_metrics[0].scope_metrics[0].metrics[0]
    }
    with(&|r| {
        r.resource_metrics[0].resource.as_mut().unwrap().attributes[0] =
            kv("service.name", any_value::Value::DoubleValue(1.0));
    });
    with(&|r| {
        r.resource_metrics[0].scope_metrics[0]
            .scope
            .as_mut()
            .unwrap()
            .attributes = vec![s("a", "b")];
    });
    with(&|r| first(r).metadata = vec![s("a", "b")]);
    with(&|r| {
        if let Some(metric::Data::Gauge(g)) = &mut first(r).data {
            g.data_points[0].exemplars = vec![Exemplar::default()];
        }
    });
    with(&|r| {
        first(r).data = Some(metric::Data::Summary(Summary {
            data_points: vec![SummaryDataPoint::default()],
        }));
    });
    with(&|r| {
        if let Some(metric::Data::Gauge(g)) = &mut first(r).data {
            g.data_points[0].attributes[0].value = None;
        }
    });
}

#[test]
fn truncated_and_corrupted_bodies_match_prost() {
    let full = full_request().encode_to_vec();
    let mut accepted = 0;
    for n in 0..full.len() {
        accepted += usize::from(check(full[..n].to_vec().leak()));
    }
    assert!(accepted > 0, "some prefixes end on a field boundary");
    for i in 0..full.len() {
        for x in [0x00, 0xff, 0x80] {
            let mut b = full.clone();
            b[i] = x;
            check(b.leak());
        }
    }
    // Unpacked repeated buckets and repeated singular messages decode (and merge) in
    // prost: left to it.
    let unpacked: &'static [u8] = [&full[..], &[0x0a, 0x02, 0x0a, 0x00]].concat().leak();
    check(unpacked);
}
