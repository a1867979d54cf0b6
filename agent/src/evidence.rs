//! What each runtime's signals can tell, beyond the metric table of [`crate::health`]:
//! whether its exporter runs on the event loop it reports on (then an overdue export is a
//! stall in progress), stuck workers, and shed responses.

use std::time::Duration;

use crate::health::Runtime;
use crate::store::{SeriesMap, SeriesValue};

/// Per-worker stuck duration (gauge, s) from the `loopwatch` crate.
pub(crate) const STUCK_METRIC: &str = "tokio.worker.stuck.duration";
/// `error.type` of a response that the service's own load shedding produced (loopwatch's
/// `ShedLayer`): counted as shed, not as an error. Namespaced so that another SDK's 503
/// (`error.type` = `"503"`) never collides with it.
pub(crate) const SHED_ERROR_TYPE: &str = "loopwatch.shed";

/// Where a runtime's metrics exporter runs, by `telemetry.sdk.language` for SDKs without a
/// runtime of their own in [`Runtime`].
///
/// | language | exporter on the loop | why |
/// |---|---|---|
/// | `nodejs` | yes | the SDK's `PeriodicExportingMetricReader` is a timer on the one event loop |
/// | `webjs` | yes | the same reader, in a browser's loop |
/// | `python` | no | the periodic reader is a thread |
/// | `go` | no | the reader is a goroutine; Go preempts |
/// | `java`, `dotnet` | no | a scheduler thread |
/// | `rust` | no | the OTel SDK's reader is an OS thread; loopwatch's pipeline runs off the watched runtime and reports stalls itself |
const EXPORTER_ON_LOOP: &[(&str, bool)] = &[
    ("nodejs", true),
    ("webjs", true),
    ("python", false),
    ("go", false),
    ("java", false),
    ("dotnet", false),
    ("rust", false),
];

/// Whether this instance's exports stop while its event loop is blocked, so that an overdue
/// export is evidence of a stall in progress. tokio (the `loopwatch` crate) exports off the
/// watched runtime and reports stalls as `tokio.eventloop.stall.duration` instead.
pub(crate) fn exporter_on_loop(runtime: Runtime, sdk_language: Option<&str>) -> bool {
    match runtime {
        Runtime::Nodejs => true,
        Runtime::Tokio | Runtime::Go => false,
        Runtime::Http | Runtime::Unknown => sdk_language.is_some_and(|l| {
            EXPORTER_ON_LOOP
                .iter()
                .any(|(lang, on_loop)| *on_loop && l.eq_ignore_ascii_case(lang))
        }),
    }
}

/// A worker reported stuck for at least `health.stuck_enter`.
#[derive(Debug, Clone, PartialEq)]
pub struct StuckWorker {
    /// `tokio.worker.index`, when sent.
    pub worker: Option<i64>,
    /// How long it has been stuck, seconds.
    pub seconds: f64,
    /// Spawn location of the task holding it (`file:line:column`), when sent.
    pub location: Option<String>,
}

/// Stuck workers and how many workers report at all (the runtime's capacity).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StuckSummary {
    /// Workers stuck for at least `stuck_enter`.
    pub stuck: usize,
    /// Workers reporting a stuck duration (stuck or not).
    pub workers: usize,
    /// The longest stuck duration among them, seconds.
    pub longest: f64,
    /// How long after the last export a worker stuck but not yet for `stuck_enter` reaches
    /// it (when the health timer must look again).
    pub next_enter_after: Option<Duration>,
}

/// The workers of `series` stuck for at least `enter`, ordered by worker, and the summary.
/// A reported duration is how long the worker had been stuck when the export was collected;
/// a worker still stuck has been stuck `age` (time since that export) longer, so it counts
/// from the moment it passes `enter`, not from the next export.
pub(crate) fn stuck_workers(
    series: &SeriesMap,
    enter: Duration,
    age: Duration,
) -> (Vec<StuckWorker>, StuckSummary) {
    let mut out = Vec::new();
    let mut summary = StuckSummary::default();
    for (key, s) in series.named(STUCK_METRIC) {
        let SeriesValue::Number(v) = s.value else {
            continue;
        };
        summary.workers += 1;
        if !v.is_finite() || v <= 0.0 {
            continue;
        }
        let reported = Duration::try_from_secs_f64(v).unwrap_or(Duration::MAX);
        if reported < enter {
            let after = enter - reported;
            summary.next_enter_after =
                Some(summary.next_enter_after.map_or(after, |a| a.min(after)));
        }
        let v = v + age.as_secs_f64();
        if v < enter.as_secs_f64() {
            continue;
        }
        let attr = |k: &str| {
            key.attributes
                .iter()
                .find(|(a, _)| a == k)
                .map(|(_, v)| v.as_str())
        };
        let location = attr("code.file.path").map(|file| {
            let mut l = file.to_owned();
            for part in ["code.line.number", "code.column.number"] {
                if let Some(n) = attr(part) {
                    l.push(':');
                    l.push_str(n);
                }
            }
            l
        });
        summary.stuck += 1;
        summary.longest = summary.longest.max(v);
        out.push(StuckWorker {
            worker: attr("tokio.worker.index").and_then(|w| w.parse().ok()),
            seconds: v,
            location,
        });
    }
    (out, summary)
}

impl StuckWorker {
    /// The reason text, e.g. `worker 2 stuck for 1.204 s (task spawned at src/main.rs:40:5)`.
    pub fn reason(&self) -> String {
        let who = self
            .worker
            .map_or_else(|| "a worker".to_owned(), |w| format!("worker {w}"));
        match &self.location {
            Some(l) => format!(
                "{who} stuck for {:.3} s (task spawned at {l})",
                self.seconds
            ),
            None => format!("{who} stuck for {:.3} s", self.seconds),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_exporters_by_runtime_and_language() {
        assert!(exporter_on_loop(Runtime::Nodejs, None));
        assert!(exporter_on_loop(Runtime::Http, Some("nodejs")));
        assert!(!exporter_on_loop(Runtime::Http, Some("python")));
        assert!(!exporter_on_loop(Runtime::Unknown, None));
        // loopwatch's exporter runs off the watched runtime, whatever the language says.
        assert!(!exporter_on_loop(Runtime::Tokio, Some("nodejs")));
    }

    #[test]
    fn reason_names_worker_and_location() {
        let w = StuckWorker {
            worker: Some(2),
            seconds: 1.2041,
            location: Some("src/main.rs:40:5".into()),
        };
        assert_eq!(
            w.reason(),
            "worker 2 stuck for 1.204 s (task spawned at src/main.rs:40:5)"
        );
    }
}
