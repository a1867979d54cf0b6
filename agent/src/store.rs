//! Series storage: the latest value of every datapoint received, per service instance.
//!
//! A service instance is keyed by the resource attributes `service.name` and
//! `service.instance.id` (missing instance id -> `""`, missing name -> `"unknown_service"`).
//! A series is keyed by metric name + datapoint attributes. Gauges replace; sums and
//! histograms replace when cumulative and accumulate when delta.
//!
//! Memory is bounded by caps: services, series per service, a fixed budget on the
//! approximate bytes held ([`MAX_TOTAL_BYTES`]) and fixed limits on the size of one series
//! identity ([`MAX_ATTRIBUTES`], [`MAX_NAME_BYTES`], [`MAX_VALUE_BYTES`],
//! [`MAX_HISTOGRAM_BUCKETS`]). A request that would exceed a cap is refused as a whole
//! (nothing of it is applied), so a client's retry does not double-count deltas.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

use crate::wire;

/// Max attributes on one datapoint; datapoints with more are dropped (reason `oversize`).
pub(crate) const MAX_ATTRIBUTES: usize = 64;
/// Max bytes of a metric name or attribute key.
pub(crate) const MAX_NAME_BYTES: usize = 256;
/// Max bytes of an attribute value (after rendering to a string).
pub(crate) const MAX_VALUE_BYTES: usize = 1024;
/// Max explicit histogram buckets on one datapoint.
pub(crate) const MAX_HISTOGRAM_BUCKETS: usize = 512;
/// Budget for the approximate bytes held by all series (256 MiB); beyond it requests that
/// would add series are refused (reason `memory`).
pub(crate) const MAX_TOTAL_BYTES: usize = 256 * 1024 * 1024;

/// OTLP `AGGREGATION_TEMPORALITY_DELTA`.
const TEMPORALITY_DELTA: i32 = 1;

/// Identity of a service instance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Resource `service.name`.
    pub service: String,
    /// Resource `service.instance.id`, `""` when absent.
    pub instance: String,
}

/// Identity of a series within a service: metric name + sorted datapoint attributes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    /// OTel metric name, e.g. `tokio.eventloop.delay.p99`.
    pub name: String,
    /// Datapoint attributes, sorted by key, values rendered as strings.
    pub attributes: Vec<(String, String)>,
}

/// The OTel instrument kind of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesKind {
    /// Gauge (last value).
    Gauge,
    /// Monotonic sum (a counter).
    Counter,
    /// Non-monotonic sum (an up-down counter).
    UpDownCounter,
    /// Explicit-bucket histogram.
    Histogram,
}

/// The value of a series.
#[derive(Debug, Clone, PartialEq)]
pub enum SeriesValue {
    /// A number (gauge or sum).
    Number(f64),
    /// An explicit-bucket histogram.
    Histogram {
        /// Upper bounds of the buckets (exclusive of the implicit `+Inf`).
        bounds: Vec<f64>,
        /// Per-bucket (non-cumulative) counts, `bounds.len() + 1` entries.
        counts: Vec<u64>,
        /// Sum of observations (0 when the sender omitted it).
        sum: f64,
        /// Number of observations.
        count: u64,
    },
}

/// One stored series.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Instrument kind.
    pub kind: SeriesKind,
    /// OTel unit string (`s`, `By`, `1`, `{stall}`, ...).
    pub unit: String,
    /// Metric description (first one seen).
    pub description: String,
    /// Latest (or accumulated, for deltas) value.
    pub value: SeriesValue,
}

impl Series {
    /// Seconds per unit of this series' values (`s`, `ms`, `us`, `ns`, `min`; anything else
    /// is taken as seconds).
    pub(crate) fn seconds_per_unit(&self) -> f64 {
        match self.unit.as_str() {
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            "min" => 60.0,
            _ => 1.0,
        }
    }
}

/// The series of one service instance, kept sorted by key.
///
/// The receive path finds a datapoint's series with one comparison in the steady state:
/// exporters send the same series in the same order on every export, so the position each
/// datapoint of the last applied request matched is remembered, and the next request's
/// datapoint at the same place is compared with that series first (a binary search only
/// when it differs). The positions found while checking the caps are then used to apply the
/// request without searching again.
#[derive(Debug, Default)]
pub struct SeriesMap {
    entries: Vec<(SeriesKey, Series)>,
    /// `entries` index matched by each datapoint of the last request applied without new
    /// series, in request order.
    hints: Vec<u32>,
    /// Counts insertions: positions found before an insertion are stale after it.
    generation: u64,
}

impl SeriesMap {
    /// Number of series.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no series.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Series in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&SeriesKey, &Series)> {
        self.entries.iter().map(|(k, s)| (k, s))
    }

    /// Series values in key order.
    pub fn values(&self) -> impl Iterator<Item = &Series> {
        self.entries.iter().map(|(_, s)| s)
    }

    /// The series of metric `name`, in key order.
    pub fn named<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a SeriesKey, &'a Series)> + 'a {
        let start = self
            .entries
            .partition_point(|(k, _)| k.name.as_str() < name);
        self.entries[start..]
            .iter()
            .take_while(move |(k, _)| k.name == name)
            .map(|(k, s)| (k, s))
    }

    /// The index of `key` (`Ok`) or where it would be inserted (`Err`), trying the
    /// position `hint` first.
    fn find(&self, key: &dyn KeyView, hint: Option<u32>) -> Result<usize, usize> {
        if let Some(h) = hint.map(|h| h as usize)
            && let Some((k, _)) = self.entries.get(h)
            && (k as &dyn KeyView).cmp(key) == Ordering::Equal
        {
            return Ok(h);
        }
        self.entries
            .binary_search_by(|(k, _)| (k as &dyn KeyView).cmp(key))
    }
}

impl<'a> IntoIterator for &'a SeriesMap {
    type Item = (&'a SeriesKey, &'a Series);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (SeriesKey, Series)>,
        fn(&'a (SeriesKey, Series)) -> (&'a SeriesKey, &'a Series),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, s)| (k, s))
    }
}

/// What the store keeps per service instance: its series, and whatever else the caller
/// tracks about it (health, cadence), told of each export that arrives.
pub trait Entry {
    /// A new instance whose first export arrived at `now`.
    fn new(now: Instant) -> Self;
    /// Its series.
    fn series(&self) -> &SeriesMap;
    /// Its series, mutably (the store applies updates).
    fn series_mut(&mut self) -> &mut SeriesMap;
    /// When its last export arrived.
    fn last_seen(&self) -> Instant;
    /// An export arrived at `now` (before its updates are applied).
    fn arrived(&mut self, now: Instant, info: ResourceInfo);
}

/// What an export says about its sender beyond its series.
#[derive(Debug, Clone, Default)]
pub struct ResourceInfo {
    /// Resource `telemetry.sdk.language`.
    pub language: Option<String>,
    /// The longest time minus start time among the points.
    pub window: Option<Duration>,
}

fn resource_info(attrs: AttrSlice<'_>, window_ns: u64) -> ResourceInfo {
    let language = (0..attrs.len())
        .find(|&i| attrs.key(i) == "telemetry.sdk.language")
        .map(|i| attrs.render(i))
        .filter(|l| l.len() <= 64);
    ResourceInfo {
        language,
        window: (window_ns > 0).then(|| Duration::from_nanos(window_ns)),
    }
}

/// Why datapoints were dropped while decoding an otherwise accepted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    /// NaN or infinite value.
    NonFinite,
    /// Exponential histogram, summary or a point without a value.
    Unsupported,
    /// Series identity or bucket list over the fixed size limits.
    Oversize,
    /// Inconsistent histogram (bucket count != bounds + 1).
    Invalid,
}

impl DropReason {
    /// All reasons, for exposition.
    pub const ALL: [DropReason; 4] = [
        DropReason::NonFinite,
        DropReason::Unsupported,
        DropReason::Oversize,
        DropReason::Invalid,
    ];
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NonFinite => "non_finite",
            DropReason::Unsupported => "unsupported",
            DropReason::Oversize => "oversize",
            DropReason::Invalid => "invalid",
        }
    }
}

/// Why a whole request was refused by a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    /// The request would add a service instance beyond `receiver.max_services`.
    #[error("too many services (max_services = {0})")]
    TooManyServices(usize),
    /// The request would add series beyond `receiver.max_series_per_service`.
    #[error("too many series for one service (max_series_per_service = {0})")]
    TooManySeries(usize),
    /// The request would exceed the fixed memory budget.
    #[error("series memory budget exhausted ({0} bytes)")]
    Memory(usize),
}

/// The identity of a series as seen through the decoded request (no allocation) or as
/// stored. Ordered exactly like [`SeriesKey`] (name, then the sorted attribute pairs), so a
/// borrowed view can look up a `BTreeMap<SeriesKey, _>` without building an owned key.
pub(crate) trait KeyView {
    fn name(&self) -> &str;
    fn attr_len(&self) -> usize;
    /// Attribute `i` (in key order): key and the UTF-8 bytes of the value as rendered by
    /// [`render_value`]; a value not held as a string (an integer, a boolean) is rendered
    /// into `buf`. (Bytes compare in the same order as the strings.)
    fn attr<'s>(&'s self, i: usize, buf: &'s mut ValueBuf) -> (&'s str, &'s [u8]);
}

/// Room to render an attribute value that is not a string: an `i64` (at most 20 bytes) or a
/// boolean.
pub(crate) type ValueBuf = [u8; 24];

impl KeyView for SeriesKey {
    fn name(&self) -> &str {
        &self.name
    }
    fn attr_len(&self) -> usize {
        self.attributes.len()
    }
    fn attr<'s>(&'s self, i: usize, _: &'s mut ValueBuf) -> (&'s str, &'s [u8]) {
        let (k, v) = &self.attributes[i];
        (k, v.as_bytes())
    }
}

impl Ord for dyn KeyView + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        // Same order as the derived `Ord` of `SeriesKey`: name, then the attribute
        // pairs lexicographically, then the number of attributes.
        self.name().cmp(other.name()).then_with(|| {
            let (a, b) = (self.attr_len(), other.attr_len());
            let (mut x, mut y) = ([0u8; 24], [0u8; 24]);
            for i in 0..a.min(b) {
                match self.attr(i, &mut x).cmp(&other.attr(i, &mut y)) {
                    Ordering::Equal => {}
                    o => return o,
                }
            }
            a.cmp(&b)
        })
    }
}

impl PartialOrd for dyn KeyView + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for dyn KeyView + '_ {}

impl<'a> Borrow<dyn KeyView + 'a> for SeriesKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

/// Attributes borrowed from a request: prost's decoded list, or the borrowing decoder's
/// ([`crate::wire`], string, boolean and integer values only).
#[derive(Debug, Clone, Copy)]
enum AttrSlice<'a> {
    Proto(&'a [KeyValue]),
    Wire(&'a [wire::Attr<'a>]),
}

impl<'a> AttrSlice<'a> {
    fn len(self) -> usize {
        match self {
            AttrSlice::Proto(a) => a.len(),
            AttrSlice::Wire(a) => a.len(),
        }
    }

    /// The key of attribute `i` (`i < len`).
    fn key(self, i: usize) -> &'a str {
        match self {
            AttrSlice::Proto(a) => &a[i].key,
            AttrSlice::Wire(a) => a[i].key,
        }
    }

    /// The value of attribute `i` when it is a string, integer or boolean, rendered like
    /// [`render_value`] (integers into `buf`); `None` for other kinds, which are rendered
    /// into an owned key.
    fn scalar<'s>(self, i: usize, buf: &'s mut ValueBuf) -> Option<&'s [u8]>
    where
        'a: 's,
    {
        let v = match self {
            AttrSlice::Proto(a) => match a[i].value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => wire::Scalar::Str(s),
                Some(any_value::Value::BoolValue(b)) => wire::Scalar::Bool(*b),
                Some(any_value::Value::IntValue(i)) => wire::Scalar::Int(*i),
                _ => return None,
            },
            AttrSlice::Wire(a) => a[i].value,
        };
        Some(match v {
            wire::Scalar::Str(s) => s.as_bytes(),
            wire::Scalar::Bool(true) => b"true",
            wire::Scalar::Bool(false) => b"false",
            wire::Scalar::Int(i) => render_int(i, buf),
        })
    }

    /// The value of attribute `i` rendered as a label string.
    fn render(self, i: usize) -> String {
        match self {
            AttrSlice::Proto(a) => render_value(a[i].value.as_ref()),
            AttrSlice::Wire(_) => {
                let mut buf = [0u8; 24];
                // A string's bytes or ASCII: always valid UTF-8.
                String::from_utf8_lossy(self.scalar(i, &mut buf).unwrap_or(b"")).into_owned()
            }
        }
    }
}

/// A series identity borrowed from the request: string, integer or boolean attributes with distinct
/// keys, visited in key order through `order` (indices into `attrs`).
#[derive(Debug, Clone)]
struct BorrowedKey<'a> {
    name: &'a str,
    attrs: AttrSlice<'a>,
    order: [u8; MAX_ATTRIBUTES],
}

impl KeyView for BorrowedKey<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn attr_len(&self) -> usize {
        self.attrs.len()
    }
    fn attr<'s>(&'s self, i: usize, buf: &'s mut ValueBuf) -> (&'s str, &'s [u8]) {
        let j = usize::from(self.order[i]);
        (self.attrs.key(j), self.attrs.scalar(j, buf).unwrap_or(b""))
    }
}

/// The bytes of `i.to_string()`, without allocating.
fn render_int(i: i64, buf: &mut ValueBuf) -> &[u8] {
    let mut n = i.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        // `n % 10 < 10`.
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if i < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

impl<'a> BorrowedKey<'a> {
    /// The borrowed identity, when every attribute is a string within the size limits and
    /// the keys are distinct (the common case); `None` otherwise.
    fn new(name: &'a str, attrs: AttrSlice<'a>) -> Option<Self> {
        if attrs.len() > MAX_ATTRIBUTES {
            return None;
        }
        let mut order = [0u8; MAX_ATTRIBUTES];
        let mut buf = [0u8; 24];
        for i in 0..attrs.len() {
            let key = attrs.key(i);
            let v = attrs.scalar(i, &mut buf)?;
            if key.len() > MAX_NAME_BYTES || v.len() > MAX_VALUE_BYTES {
                return None;
            }
            // Insertion sort by key (already sorted input: one comparison per attribute).
            let mut j = i;
            while j > 0 && attrs.key(usize::from(order[j - 1])) > key {
                order[j] = order[j - 1];
                j -= 1;
            }
            if j > 0 && attrs.key(usize::from(order[j - 1])) == key {
                return None;
            }
            // `i < MAX_ATTRIBUTES <= 256`.
            order[j] = i as u8;
        }
        Some(BorrowedKey { name, attrs, order })
    }

    fn to_owned_key(&self) -> SeriesKey {
        SeriesKey {
            name: self.name.to_owned(),
            attributes: (0..self.attrs.len())
                .map(|i| {
                    let mut buf = [0u8; 24];
                    let (k, v) = self.attr(i, &mut buf);
                    // `v` is a string's bytes or ASCII digits: always valid UTF-8.
                    (k.to_owned(), String::from_utf8_lossy(v).into_owned())
                })
                .collect(),
        }
    }
}

/// The identity of an update: borrowed from the request, or owned when attributes needed
/// rendering (non-string values, duplicate keys).
#[derive(Debug, Clone)]
enum UpdateKey<'a> {
    Borrowed(BorrowedKey<'a>),
    Owned(SeriesKey),
}

impl UpdateKey<'_> {
    fn view(&self) -> &dyn KeyView {
        match self {
            UpdateKey::Borrowed(k) => k,
            UpdateKey::Owned(k) => k,
        }
    }

    fn into_owned(self) -> SeriesKey {
        match self {
            UpdateKey::Borrowed(k) => k.to_owned_key(),
            UpdateKey::Owned(k) => k,
        }
    }

    /// Approximate bytes of the identity, as counted by [`approx_bytes`].
    fn approx_bytes(&self) -> usize {
        let v = self.view();
        v.name().len()
            + (0..v.attr_len())
                .map(|i| {
                    let mut buf = [0u8; 24];
                    let (k, v) = v.attr(i, &mut buf);
                    k.len() + v.len() + 48
                })
                .sum::<usize>()
    }
}

/// 8-byte values borrowed from a request: prost's decoded list, or the packed
/// little-endian bytes of the body (a multiple of 8 bytes) from [`crate::wire`].
#[derive(Debug, Clone, Copy)]
enum Packed<'a, T> {
    Slice(&'a [T]),
    Wire(&'a [u8]),
}

/// A value packed as 8 little-endian bytes.
trait Le: Copy {
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
    fn len(self) -> usize {
        match self {
            Packed::Slice(s) => s.len(),
            Packed::Wire(b) => b.len() / 8,
        }
    }

    fn iter(self) -> PackedIter<'a, T> {
        match self {
            Packed::Slice(s) => PackedIter::Slice(s.iter()),
            Packed::Wire(b) => PackedIter::Wire(b.chunks_exact(8)),
        }
    }
}

/// The values of a [`Packed`].
enum PackedIter<'a, T> {
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
enum ValueRef<'a> {
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
    fn approx_bytes(&self) -> usize {
        match self {
            ValueRef::Number(_) => 0,
            ValueRef::Histogram { bounds, .. } => (bounds.len() * 2 + 1) * 8,
        }
    }

    fn to_owned_value(self) -> SeriesValue {
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
    fn replace(self, stored: &mut SeriesValue) {
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
fn fill_counts(out: &mut Vec<u64>, bounds: usize, counts: Option<Packed<'_, u64>>, count: u64) {
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
    key: UpdateKey<'a>,
    kind: SeriesKind,
    unit: &'a str,
    /// Full description; truncated when a series is created.
    description: &'a str,
    delta: bool,
    value: ValueRef<'a>,
}

/// A request decoded into per-service updates, with dropped datapoints counted.
#[derive(Debug, Default)]
pub struct Prepared<'a> {
    batches: Vec<(ServiceKey, Vec<Update<'a>>)>,
    /// One per batch, in order.
    infos: Vec<ResourceInfo>,
    /// Datapoints dropped during decoding, by reason.
    pub dropped: Vec<(DropReason, u64)>,
}

impl Prepared<'_> {
    /// Number of datapoints that will be applied.
    pub fn datapoints(&self) -> u64 {
        self.batches.iter().map(|(_, u)| u.len() as u64).sum()
    }

    fn drop(&mut self, reason: DropReason) {
        match self.dropped.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.dropped.push((reason, 1)),
        }
    }
}

/// Renders an OTLP attribute value as a label string.
fn render_value(v: Option<&AnyValue>) -> String {
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

fn attributes(attrs: AttrSlice<'_>) -> Option<Vec<(String, String)>> {
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

fn service_key_of(attrs: AttrSlice<'_>) -> ServiceKey {
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
fn truncate_description(d: &str) -> &str {
    match d.char_indices().nth(512) {
        Some((i, _)) => &d[..i],
        None => d,
    }
}

/// What an update takes from its metric.
#[derive(Debug, Clone, Copy)]
struct MetricRef<'a> {
    name: &'a str,
    unit: &'a str,
    description: &'a str,
}

/// A histogram datapoint as sent.
#[derive(Debug, Clone, Copy)]
struct HistogramRef<'a> {
    sum: Option<f64>,
    count: u64,
    bounds: Packed<'a, f64>,
    counts: Packed<'a, u64>,
}

/// Where prepared updates go: the resource's updates, and the request's drop counts.
type Sink<'s, 'a> = (&'s mut Vec<Update<'a>>, &'s mut Prepared<'a>);

fn sum_kind(monotonic: bool) -> SeriesKind {
    if monotonic {
        SeriesKind::Counter
    } else {
        SeriesKind::UpDownCounter
    }
}

fn push_update<'a>(
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

fn push_number<'a>(
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

fn push_histogram<'a>(
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

fn prepare_metric<'a>(
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

fn approx_bytes(key: &SeriesKey, series: &Series) -> usize {
    let attrs: usize = key
        .attributes
        .iter()
        .map(|(k, v)| k.len() + v.len() + 48)
        .sum();
    let value = match &series.value {
        SeriesValue::Number(_) => 0,
        SeriesValue::Histogram { bounds, counts, .. } => bounds.len() * 8 + counts.len() * 8,
    };
    128 + key.name.len() + attrs + series.unit.len() + series.description.len() + value
}

/// Caps applied by the store.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Max service instances.
    pub max_services: usize,
    /// Max series per service instance.
    pub max_series_per_service: usize,
    /// Budget for approximate bytes held.
    pub max_total_bytes: usize,
}

/// All service instances and their series.
#[derive(Debug)]
pub struct Store<E> {
    services: BTreeMap<ServiceKey, E>,
    limits: Limits,
    bytes: usize,
    /// Scratch for [`Store::apply`]: the series index of each datapoint (kept to reuse its
    /// allocation).
    positions: Vec<u32>,
}

impl<E: Entry> Store<E> {
    /// An empty store with these caps.
    pub fn new(limits: Limits) -> Self {
        Store {
            services: BTreeMap::new(),
            limits,
            bytes: 0,
            positions: Vec::new(),
        }
    }

    /// Service instances, ordered by key.
    pub fn services(&self) -> impl Iterator<Item = (&ServiceKey, &E)> {
        self.services.iter()
    }

    /// Mutable access to service instances (for health evaluation).
    pub fn services_mut(&mut self) -> impl Iterator<Item = (&ServiceKey, &mut E)> {
        self.services.iter_mut()
    }

    /// One service instance, mutably.
    pub fn service_mut(&mut self, key: &ServiceKey) -> Option<&mut E> {
        self.services.get_mut(key)
    }

    /// Number of service instances.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// True when no service has reported.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Approximate bytes held by series.
    pub fn approx_bytes(&self) -> usize {
        self.bytes
    }

    /// Forgets the service instances that sent nothing for `after` (departed: a restarted
    /// service comes back under a new `service.instance.id`), with their series and bytes.
    /// Returns how many were forgotten. Without this, departed instances would fill the
    /// services cap and then refuse every new one.
    pub fn evict_departed(&mut self, now: Instant, after: std::time::Duration) -> usize {
        let before = self.services.len();
        let mut freed = 0usize;
        self.services.retain(|_, s| {
            let keep = now.saturating_duration_since(s.last_seen()) < after;
            if !keep {
                freed += s
                    .series()
                    .iter()
                    .map(|(k, v)| approx_bytes(k, v))
                    .sum::<usize>();
            }
            keep
        });
        self.bytes = self.bytes.saturating_sub(freed);
        before - self.services.len()
    }

    /// Checks caps for the whole request, then applies it. On error nothing is applied.
    /// Returns the keys of the service instances touched.
    pub fn apply(
        &mut self,
        prepared: Prepared<'_>,
        now: Instant,
    ) -> Result<Vec<ServiceKey>, CapError> {
        // Pass 1: caps. Each datapoint's series is found once (through its borrowed
        // identity, at the position the same datapoint had last time when it matches) and
        // its index kept in `positions` for pass 2; owned keys are built only for series
        // that would be new.
        let mut positions = std::mem::take(&mut self.positions);
        positions.clear();
        let mut new_services: HashSet<&ServiceKey> = HashSet::new();
        let mut new_bytes = 0usize;
        // The generation of each batch's series map when its positions were found (a request
        // may carry one service in several batches, and an earlier batch's new series move
        // the positions found for a later one).
        let mut generations = Vec::with_capacity(prepared.batches.len());
        for (skey, updates) in &prepared.batches {
            let existing = self.services.get(skey);
            generations.push(existing.map(|s| s.series().generation));
            if existing.is_none()
                && new_services.insert(skey)
                && self.services.len() + new_services.len() > self.limits.max_services
            {
                self.positions = positions;
                return Err(CapError::TooManyServices(self.limits.max_services));
            }
            let current = existing.map_or(0, |s| s.series().len());
            let mut new_series: BTreeMap<SeriesKey, ()> = BTreeMap::new();
            for (i, u) in updates.iter().enumerate() {
                let found = existing.and_then(|s| {
                    let hint = s.series().hints.get(i).copied();
                    s.series().find(u.key.view(), hint).ok()
                });
                // Indices fit: series per service are capped far below `u32::MAX`.
                positions.push(found.map_or(NEW, |i| i as u32));
                if found.is_none() && !new_series.contains_key(u.key.view()) {
                    new_series.insert(u.key.clone().into_owned(), ());
                    if current + new_series.len() > self.limits.max_series_per_service {
                        self.positions = positions;
                        return Err(CapError::TooManySeries(self.limits.max_series_per_service));
                    }
                    new_bytes += 128 + u.key.approx_bytes() + u.value.approx_bytes();
                }
            }
        }
        if new_bytes > 0 && self.bytes + new_bytes > self.limits.max_total_bytes {
            self.positions = positions;
            return Err(CapError::Memory(self.limits.max_total_bytes));
        }
        // Pass 2: apply.
        let mut touched = Vec::with_capacity(prepared.batches.len());
        let mut at = 0usize;
        let infos = prepared
            .infos
            .into_iter()
            .chain(std::iter::repeat_with(Default::default));
        for (((skey, updates), generation), info) in
            prepared.batches.into_iter().zip(generations).zip(infos)
        {
            let state = match self.services.get_mut(&skey) {
                Some(state) => state,
                None => self
                    .services
                    .entry(skey.clone())
                    .or_insert_with(|| E::new(now)),
            };
            state.arrived(now, info);
            let found = positions.get(at..at + updates.len()).unwrap_or(&[]);
            at += updates.len();
            let map = state.series_mut();
            if generation == Some(map.generation)
                && found.len() == updates.len()
                && found.iter().all(|p| *p != NEW)
            {
                // Every series exists: apply at the positions found, remember them.
                for (u, p) in updates.into_iter().zip(found) {
                    // Always in range: found in this map at this generation (no removals).
                    if let Some((_, series)) = map.entries.get_mut(*p as usize) {
                        self.bytes = update_series(series, u, self.bytes);
                    }
                }
                // Bounded by the number of series (a request repeating a series many
                // times is not remembered).
                map.hints.clear();
                if found.len() <= map.entries.len() {
                    map.hints.extend_from_slice(found);
                }
            } else {
                // New series shift positions: search each datapoint (inserting the new
                // series in order) and forget the hints.
                map.hints.clear();
                map.generation = map.generation.wrapping_add(1);
                if found.iter().filter(|p| **p == NEW).count() > MAX_SORTED_INSERTS {
                    self.bytes = apply_many_new(map, updates, self.bytes);
                } else {
                    for u in updates {
                        match map.find(u.key.view(), None) {
                            Ok(i) => {
                                self.bytes = update_series(&mut map.entries[i].1, u, self.bytes)
                            }
                            Err(i) => {
                                let (key, series) = new_series(u);
                                self.bytes += approx_bytes(&key, &series);
                                map.entries.insert(i, (key, series));
                            }
                        }
                    }
                }
            }
            touched.push(skey);
        }
        self.positions = positions;
        Ok(touched)
    }
}

/// Marks a datapoint whose series does not exist yet in `Store::positions`.
const NEW: u32 = u32::MAX;

/// Above this many new series in one request, a service's series are re-sorted through a
/// tree instead of inserted one by one into the sorted vector (each insert moves the tail).
const MAX_SORTED_INSERTS: usize = 32;

/// Applies `updates` that bring many new series, through an ordered tree.
fn apply_many_new(map: &mut SeriesMap, updates: Vec<Update<'_>>, mut bytes: usize) -> usize {
    let mut tree: BTreeMap<SeriesKey, Series> = map.entries.drain(..).collect();
    for u in updates {
        match tree.get_mut(u.key.view()) {
            Some(series) => bytes = update_series(series, u, bytes),
            None => {
                let (key, series) = new_series(u);
                bytes += approx_bytes(&key, &series);
                tree.insert(key, series);
            }
        }
    }
    map.entries.extend(tree);
    bytes
}

/// The series an update creates.
fn new_series(u: Update<'_>) -> (SeriesKey, Series) {
    let series = Series {
        kind: u.kind,
        unit: u.unit.to_owned(),
        description: truncate_description(u.description).to_owned(),
        value: u.value.to_owned_value(),
    };
    (u.key.into_owned(), series)
}

/// Applies an update to its existing series; returns `bytes` adjusted for the size change.
fn update_series(existing: &mut Series, u: Update<'_>, bytes: usize) -> usize {
    let Update {
        kind,
        unit,
        delta,
        value,
        ..
    } = u;
    // The identity is unchanged: only unit and value can change size.
    let before = value_bytes(existing);
    if existing.kind != kind {
        existing.kind = kind;
        value.replace(&mut existing.value);
    } else if delta {
        accumulate(&mut existing.value, value);
    } else {
        value.replace(&mut existing.value);
    }
    if existing.unit != unit {
        unit.clone_into(&mut existing.unit);
    }
    let after = value_bytes(existing);
    (bytes + after).saturating_sub(before)
}

/// The part of [`approx_bytes`] that does not depend on the identity.
fn value_bytes(series: &Series) -> usize {
    let value = match &series.value {
        SeriesValue::Number(_) => 0,
        SeriesValue::Histogram { bounds, counts, .. } => bounds.len() * 8 + counts.len() * 8,
    };
    series.unit.len() + series.description.len() + value
}

/// Adds a delta onto the stored value. Histograms with different bounds are replaced.
fn accumulate(stored: &mut SeriesValue, delta: ValueRef<'_>) {
    match (stored, delta) {
        (SeriesValue::Number(a), ValueRef::Number(b)) => {
            let s = *a + b;
            *a = if s.is_finite() { s } else { b };
        }
        (
            SeriesValue::Histogram {
                bounds,
                counts,
                sum,
                count,
            },
            ValueRef::Histogram {
                bounds: b2,
                counts: c2,
                sum: s2,
                count: n2,
            },
        ) if bounds.len() == b2.len()
            && bounds.iter().copied().eq(b2.iter())
            && counts.len() == c2.map_or(b2.len() + 1, |c| c.len()) =>
        {
            match c2 {
                Some(c2) => {
                    for (c, d) in counts.iter_mut().zip(c2.iter()) {
                        *c = c.saturating_add(d);
                    }
                }
                // No buckets: everything in the +Inf bucket.
                None => {
                    if let Some(last) = counts.last_mut() {
                        *last = last.saturating_add(n2);
                    }
                }
            }
            let s = *sum + s2;
            *sum = if s.is_finite() { s } else { s2 };
            *count = count.saturating_add(n2);
        }
        (stored, delta) => delta.replace(stored),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

/// The borrowing decoder ([`crate::wire`]) against prost: what it accepts gives the same
/// store and drop counts as prost's decoding, and what it refuses is left to prost.
#[cfg(test)]
mod wire_tests {
    use super::tests::Plain;
    use super::*;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::metrics::v1::{
        Exemplar, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
        ScopeMetrics, Sum, Summary, SummaryDataPoint,
    };
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
}
