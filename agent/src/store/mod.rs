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

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

mod key;
mod prepare;

pub(crate) use key::KeyView;
use key::*;
use prepare::*;
pub(crate) use prepare::{Prepared, Update, prepare, prepare_wire, service_key};

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
mod tests;
#[cfg(test)]
mod wire_tests;
