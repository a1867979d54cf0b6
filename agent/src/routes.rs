//! Per-route traffic over `health.error_window`: requests, error ratio and latency
//! percentiles, read from the request-duration histograms any OTel SDK sends.
//!
//! - The metric is `http.server.request.duration` (current HTTP semantic conventions; unit
//!   `s`), or `http.server.duration` (the older conventions, unit `ms`, still the default of
//!   several SDKs) when a service sends no series of the current one. Values are scaled to
//!   seconds from the series' unit.
//! - A series belongs to `(http.route, method)`; its status code or `error.type` says whether
//!   its requests are errors. A shed response (`error.type` = [`SHED_ERROR_TYPE`]) is a
//!   request but not an error.
//! - The store keeps every histogram cumulative (delta points are accumulated), so a window
//!   is the latest snapshot minus a baseline taken at least `error_window` ago. Baselines are
//!   kept every `error_window / 8`: the window covers between 1 and 1 1/8 of it. A count that
//!   fell (the process restarted under the same identity) makes the latest snapshot the
//!   window.
//! - A percentile is interpolated linearly within the bucket holding its rank, so it never
//!   exceeds that bucket's upper bound. A rank in the overflow bucket (above the last bound)
//!   reads as the last bound: the histogram says no more than "at least that".
//! - At most [`MAX_ROUTES`] `(route, method)` pairs per instance; the rest are summed under
//!   [`OVERFLOW_ROUTE`].

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::evidence::SHED_ERROR_TYPE;
use crate::store::{Series, SeriesKey, SeriesMap, SeriesValue};

/// The request-duration histogram of the current HTTP semantic conventions.
pub(crate) const REQUEST_DURATION_METRIC: &str = "http.server.request.duration";
/// The same of the older conventions (milliseconds).
const OLD_REQUEST_DURATION_METRIC: &str = "http.server.duration";
/// Most `(route, method)` pairs kept per instance.
pub(crate) const MAX_ROUTES: usize = 128;
/// The route under which pairs past [`MAX_ROUTES`] are summed.
pub(crate) const OVERFLOW_ROUTE: &str = "(overflow)";
/// Baselines kept per window (the window's granularity is `error_window / STEPS`).
const STEPS: u32 = 8;

/// How the requests of one series count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Class<'a> {
    /// `http.route`, `""` when not sent.
    pub(crate) route: &'a str,
    /// `http.request.method` (or `http.method`), `""` when not sent.
    pub(crate) method: &'a str,
    /// Server errors: status >= 500 or an `error.type` other than shedding.
    pub(crate) error: bool,
    /// Shed by the service's load shedding.
    pub(crate) shed: bool,
}

fn attr<'a>(key: &'a SeriesKey, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| {
        key.attributes
            .iter()
            .find(|(a, _)| a == n)
            .map(|(_, v)| v.as_str())
    })
}

/// The [`Class`] of a request-duration series.
pub(crate) fn classify(key: &SeriesKey) -> Class<'_> {
    let error_type = attr(key, &["error.type"]);
    let shed = error_type == Some(SHED_ERROR_TYPE);
    let status = attr(key, &["http.response.status_code", "http.status_code"])
        .and_then(|c| c.parse::<f64>().ok());
    Class {
        route: attr(key, &["http.route"]).unwrap_or(""),
        method: attr(key, &["http.request.method", "http.method"]).unwrap_or(""),
        error: !shed && (error_type.is_some() || status.is_some_and(|c| c >= 500.0)),
        shed,
    }
}

/// The request-duration histograms of a service with their class: the current metric's when
/// it sends any, else the older one's.
pub(crate) fn request_series(
    series: &SeriesMap,
) -> impl Iterator<Item = (Class<'_>, &Series)> + '_ {
    let name = if series.named(REQUEST_DURATION_METRIC).next().is_some() {
        REQUEST_DURATION_METRIC
    } else {
        OLD_REQUEST_DURATION_METRIC
    };
    series
        .named(name)
        .filter(|(_, s)| matches!(s.value, SeriesValue::Histogram { .. }))
        .map(|(k, s)| (classify(k), s))
}

/// Cumulative requests of one `(route, method)`: counts and, where the bounds agree, buckets.
#[derive(Debug, Clone, Default, PartialEq)]
struct Hist {
    requests: u64,
    errors: u64,
    /// Bucket upper bounds, seconds.
    bounds: Vec<f64>,
    /// Per-bucket counts (`bounds.len() + 1`, the last one the overflow).
    counts: Vec<u64>,
}

impl Hist {
    fn add(&mut self, c: Class<'_>, s: &Series) {
        let SeriesValue::Histogram {
            count,
            bounds,
            counts,
            ..
        } = &s.value
        else {
            return;
        };
        self.requests = self.requests.saturating_add(*count);
        if c.error {
            self.errors = self.errors.saturating_add(*count);
        }
        let scale = s.seconds_per_unit();
        let same = self.bounds.len() == bounds.len()
            && self.bounds.iter().zip(bounds).all(|(a, b)| *a == b * scale);
        if self.counts.is_empty() {
            self.bounds = bounds.iter().map(|b| b * scale).collect();
            self.counts = counts.clone();
        } else if same && self.counts.len() == counts.len() {
            for (a, b) in self.counts.iter_mut().zip(counts) {
                *a = a.saturating_add(*b);
            }
        }
    }

    /// `self - base`, or `self` when a count fell (a reset).
    fn since(&self, base: Option<&Hist>) -> Hist {
        let Some(base) = base else {
            return self.clone();
        };
        let buckets_match = base.bounds == self.bounds && base.counts.len() == self.counts.len();
        let reset = self.requests < base.requests
            || self.errors < base.errors
            || (buckets_match && self.counts.iter().zip(&base.counts).any(|(a, b)| a < b));
        if reset {
            return self.clone();
        }
        Hist {
            requests: self.requests - base.requests,
            errors: self.errors - base.errors,
            bounds: self.bounds.clone(),
            counts: if buckets_match {
                self.counts
                    .iter()
                    .zip(&base.counts)
                    .map(|(a, b)| a - b)
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

/// Cumulative [`Hist`] per `(route, method)`.
type Snapshot = BTreeMap<(String, String), Hist>;

fn snapshot(series: &SeriesMap) -> Snapshot {
    let mut out = Snapshot::new();
    for (c, s) in request_series(series) {
        let key = (c.route, c.method);
        let known = out.contains_key(&(key.0.to_owned(), key.1.to_owned()));
        let key = if known || out.len() < MAX_ROUTES {
            (key.0.to_owned(), key.1.to_owned())
        } else {
            (OVERFLOW_ROUTE.to_owned(), String::new())
        };
        out.entry(key).or_default().add(c, s);
    }
    out
}

/// The interpolated `q` quantile (0..=1) of bucket `counts` with upper `bounds`.
pub(crate) fn quantile(bounds: &[f64], counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 || bounds.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(f64::MIN_POSITIVE);
    let mut below = 0u64;
    for (i, c) in counts.iter().enumerate() {
        let upto = below.saturating_add(*c);
        if *c > 0 && upto as f64 >= rank {
            let Some(upper) = bounds.get(i).copied() else {
                return bounds.last().copied();
            };
            let lower = match i {
                0 => upper.min(0.0),
                _ => bounds[i - 1],
            };
            let frac = (rank - below as f64) / *c as f64;
            return Some(lower + (upper - lower) * frac.clamp(0.0, 1.0));
        }
        below = upto;
    }
    bounds.last().copied()
}

/// One route's traffic over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteStats {
    /// `http.route` (`""` when the SDK sends none).
    pub route: String,
    /// The request method, when sent.
    pub method: Option<String>,
    /// Requests in the window.
    pub requests: u64,
    /// Requests per second over the time the window covers.
    pub requests_per_second: f64,
    /// Errors over requests.
    pub error_ratio: f64,
    /// Latency percentiles, seconds (`None` without buckets).
    pub p50_seconds: Option<f64>,
    /// See `p50_seconds`.
    pub p95_seconds: Option<f64>,
    /// See `p50_seconds`.
    pub p99_seconds: Option<f64>,
}

/// Baselines of an instance's request histograms over the sliding window (the latest values
/// are the series themselves, read when the window is).
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteWindow {
    baselines: VecDeque<(Instant, Snapshot)>,
}

impl RouteWindow {
    /// Records the series after an export at `now`: a new baseline once the newest is
    /// `window / STEPS` old (most exports cost nothing). `since_start` is the export's data
    /// window (time minus start time): a process that started within the window has all its
    /// counts in it.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        series: &SeriesMap,
        window: Duration,
        since_start: Option<Duration>,
    ) {
        match self.baselines.back() {
            None => {
                let current = snapshot(series);
                if current.is_empty() {
                    return;
                }
                let base = since_start
                    .filter(|d| *d <= window)
                    .and_then(|d| now.checked_sub(d))
                    .map_or((now, current), |at| (at, Snapshot::new()));
                self.baselines.push_back(base);
            }
            Some((at, _)) if now.saturating_duration_since(*at) >= window / STEPS => {
                self.baselines.push_back((now, snapshot(series)));
            }
            Some(_) => {}
        }
        self.prune(now, window);
    }

    /// Drops baselines past the window, keeping exactly one at or before its start.
    fn prune(&mut self, now: Instant, window: Duration) {
        let cutoff = now.checked_sub(window);
        while self.baselines.len() > STEPS as usize + 2
            || (self.baselines.len() > 1
                && cutoff.is_some_and(|c| self.baselines.get(1).is_some_and(|(t, _)| *t <= c)))
        {
            self.baselines.pop_front();
        }
    }

    /// Per route over the window ending at the latest export (`series` as of `last_seen`),
    /// worst first: highest error ratio, then highest p99, then by route. Routes without
    /// requests in the window are left out.
    pub(crate) fn stats(&self, series: &SeriesMap, last_seen: Instant) -> Vec<RouteStats> {
        let Some((base_at, base)) = self.baselines.front() else {
            return Vec::new();
        };
        let span = last_seen
            .saturating_duration_since(*base_at)
            .as_secs_f64()
            .max(1.0);
        let mut out: Vec<RouteStats> = snapshot(series)
            .into_iter()
            .map(|(key, h)| {
                let w = h.since(base.get(&key));
                (key, w)
            })
            .filter(|(_, w)| w.requests > 0)
            .map(|((route, method), w)| RouteStats {
                route,
                method: (!method.is_empty()).then_some(method),
                requests: w.requests,
                requests_per_second: w.requests as f64 / span,
                error_ratio: w.errors as f64 / w.requests as f64,
                p50_seconds: quantile(&w.bounds, &w.counts, 0.50),
                p95_seconds: quantile(&w.bounds, &w.counts, 0.95),
                p99_seconds: quantile(&w.bounds, &w.counts, 0.99),
            })
            .collect();
        out.sort_by(|a, b| {
            b.error_ratio
                .total_cmp(&a.error_ratio)
                .then(
                    b.p99_seconds
                        .unwrap_or(0.0)
                        .total_cmp(&a.p99_seconds.unwrap_or(0.0)),
                )
                .then_with(|| a.route.cmp(&b.route))
                .then_with(|| a.method.cmp(&b.method))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_within_the_bucket_and_never_above_its_bound() {
        let bounds = [0.1, 0.2, 0.5];
        // 10 in (0, 0.1], 80 in (0.1, 0.2], 10 in (0.2, 0.5].
        let counts = [10, 80, 10, 0];
        assert!((quantile(&bounds, &counts, 0.5).unwrap() - 0.15).abs() < 1e-9);
        let p95 = quantile(&bounds, &counts, 0.95).unwrap();
        assert!(p95 > 0.2 && p95 <= 0.5, "{p95}");
        assert!((quantile(&bounds, &counts, 0.99).unwrap() - 0.47).abs() < 1e-9);
        assert_eq!(quantile(&bounds, &counts, 1.0), Some(0.5));
        // All in the overflow bucket: at least the last bound.
        assert_eq!(quantile(&bounds, &[0, 0, 0, 5], 0.5), Some(0.5));
        // First bucket from 0.
        assert!((quantile(&bounds, &[4, 0, 0, 0], 0.5).unwrap() - 0.05).abs() < 1e-9);
        assert_eq!(quantile(&bounds, &[0, 0, 0, 0], 0.5), None);
        assert_eq!(quantile(&[], &[3], 0.5), None);
    }

    fn hist(requests: u64, counts: &[u64]) -> Hist {
        Hist {
            requests,
            errors: 0,
            bounds: vec![0.1, 0.2],
            counts: counts.to_vec(),
        }
    }

    #[test]
    fn window_subtracts_the_baseline_and_a_reset_restarts_it() {
        let now = hist(30, &[10, 15, 5]);
        assert_eq!(
            now.since(Some(&hist(10, &[5, 5, 0]))),
            hist(20, &[5, 10, 5])
        );
        assert_eq!(now.since(Some(&hist(40, &[20, 15, 5]))), now);
        assert_eq!(now.since(None), now);
    }
}
