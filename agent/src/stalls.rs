//! The last stall reports (stacks) of each service instance, picked from the OTLP logs it
//! sends: records named `loopwatch.stall` or `tokio.worker.stuck` (loopwatch's stall stacks).
//!
//! Bounded: at most [`MAX_REPORTS`] per instance, each at most [`MAX_REPORT_BYTES`] of text
//! (frames beyond are cut and the report marked truncated), at most [`MAX_INSTANCES`]
//! instances (the one with the oldest report makes room). An instance's reports are freed when
//! the store forgets it. Bad or missing attributes leave fields empty; nothing here fails.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use serde_json::{Value, json};

use crate::store::{ServiceKey, service_key};

/// Reports kept per instance (the newest).
pub(crate) const MAX_REPORTS: usize = 8;
/// Text bytes kept per report (frames, thread name).
pub(crate) const MAX_REPORT_BYTES: usize = 16 * 1024;
/// Instances with reports.
pub(crate) const MAX_INSTANCES: usize = 1024;
/// Frames kept per report, whatever their size.
const MAX_FRAMES: usize = 128;

const EVENTS: [&str; 2] = ["loopwatch.stall", "tokio.worker.stuck"];

/// One frame: the function and, when known, `file:line`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) function: String,
    pub(crate) location: Option<String>,
}

/// One stall report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Report {
    pub(crate) event: &'static str,
    pub(crate) time_unix_nano: u64,
    pub(crate) duration_seconds: Option<f64>,
    /// How long the signal handler held the thread.
    pub(crate) interruption_seconds: Option<f64>,
    pub(crate) capture: Option<i64>,
    pub(crate) thread_id: Option<i64>,
    pub(crate) thread_name: Option<String>,
    pub(crate) worker: Option<i64>,
    pub(crate) frames: Vec<Frame>,
    pub(crate) truncated: bool,
}

/// The reports of every instance.
#[derive(Debug, Default)]
pub(crate) struct Stalls {
    by_instance: Mutex<HashMap<ServiceKey, VecDeque<Report>>>,
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)? {
        any_value::Value::IntValue(i) => Some(*i),
        any_value::Value::StringValue(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn double(attrs: &[KeyValue], key: &str) -> Option<f64> {
    match attr(attrs, key)? {
        any_value::Value::DoubleValue(d) if d.is_finite() => Some(*d),
        any_value::Value::IntValue(i) => Some(*i as f64),
        _ => None,
    }
}

/// Parses `code.stacktrace` (`  N: function` lines, each optionally followed by `at location`)
/// into at most `budget` bytes of frames; returns the frames and whether any were cut.
fn parse_frames(text: &str, mut budget: usize) -> (Vec<Frame>, bool) {
    let mut frames: Vec<Frame> = Vec::new();
    let mut cut = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(loc) = t.strip_prefix("at ") {
            if let Some(f) = frames.last_mut()
                && f.location.is_none()
                && loc.len() <= budget
            {
                budget -= loc.len();
                f.location = Some(loc.to_owned());
            }
            continue;
        }
        if t.contains("(truncated)") {
            cut = true;
            continue;
        }
        let function = match t.split_once(": ") {
            Some((n, f)) if n.chars().all(|c| c.is_ascii_digit()) => f,
            _ => t,
        };
        if function.is_empty() {
            continue;
        }
        if function.len() > budget || frames.len() == MAX_FRAMES {
            cut = true;
            break;
        }
        budget -= function.len();
        frames.push(Frame {
            function: function.to_owned(),
            location: None,
        });
    }
    (frames, cut)
}

impl Stalls {
    fn lock(&self) -> MutexGuard<'_, HashMap<ServiceKey, VecDeque<Report>>> {
        self.by_instance.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the stall reports among these logs.
    pub(crate) fn ingest(&self, req: &ExportLogsServiceRequest) {
        for rl in &req.resource_logs {
            let mut picked = Vec::new();
            for lr in rl.scope_logs.iter().flat_map(|s| &s.log_records) {
                let Some(event) = EVENTS.into_iter().find(|e| *e == lr.event_name) else {
                    continue;
                };
                let a = &lr.attributes;
                let mut thread_name = string(a, "thread.name");
                if let Some(n) = &mut thread_name {
                    n.truncate(n.floor_char_boundary(256));
                }
                let budget = MAX_REPORT_BYTES - thread_name.as_ref().map_or(0, String::len);
                let (frames, cut) =
                    parse_frames(&string(a, "code.stacktrace").unwrap_or_default(), budget);
                picked.push(Report {
                    event,
                    time_unix_nano: lr.time_unix_nano,
                    duration_seconds: double(a, "loopwatch.stall.duration"),
                    interruption_seconds: double(a, "loopwatch.stall.interruption"),
                    capture: int(a, "loopwatch.stall.capture"),
                    thread_id: int(a, "thread.id"),
                    thread_name,
                    worker: int(a, "tokio.worker.index"),
                    frames,
                    truncated: cut,
                });
            }
            if picked.is_empty() {
                continue;
            }
            let key = service_key(rl.resource.as_ref().map_or(&[][..], |r| &r.attributes));
            let mut all = self.lock();
            if !all.contains_key(&key) && all.len() >= MAX_INSTANCES {
                let oldest = all
                    .iter()
                    .min_by_key(|(_, r)| r.back().map_or(0, |x| x.time_unix_nano))
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    all.remove(&k);
                }
            }
            let ring = all.entry(key).or_default();
            for r in picked {
                if ring.len() == MAX_REPORTS {
                    ring.pop_front();
                }
                ring.push_back(r);
            }
        }
    }

    /// The reports of `key`, oldest first.
    pub(crate) fn last(&self, key: &ServiceKey) -> Vec<Report> {
        self.lock()
            .get(key)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets the reports of instances not in `live`.
    pub(crate) fn retain(&self, live: &HashSet<ServiceKey>) {
        self.lock().retain(|k, _| live.contains(k));
    }

    /// Adds `last_stalls` to each service object of a `/v1/status` body.
    pub(crate) fn annotate(&self, status: &mut Value) {
        let Some(services) = status.get_mut("services").and_then(Value::as_array_mut) else {
            return;
        };
        for s in services {
            let key = ServiceKey {
                service: s["service"].as_str().unwrap_or_default().to_owned(),
                instance: s["instance"].as_str().unwrap_or_default().to_owned(),
            };
            let reports: Vec<Value> = self.last(&key).iter().map(to_json).collect();
            if let Some(obj) = s.as_object_mut() {
                obj.insert("last_stalls".into(), Value::Array(reports));
            }
        }
    }
}

/// One report as in `/v1/status`.
pub(crate) fn to_json(r: &Report) -> Value {
    json!({
        "event": r.event,
        "time_unix_nano": r.time_unix_nano,
        "duration_seconds": r.duration_seconds.filter(|d| d.is_finite()),
        "interruption_seconds": r.interruption_seconds.filter(|d| d.is_finite()),
        "capture": r.capture,
        "thread_id": r.thread_id,
        "thread_name": r.thread_name,
        "worker": r.worker,
        "frames": r.frames.iter().map(|f| json!({
            "function": f.function,
            "location": f.location,
        })).collect::<Vec<_>>(),
        "truncated": r.truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    fn request(instance: &str, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", s("svc")),
                        kv("service.instance.id", s(instance)),
                    ],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn record(event: &str, stack: &str, t: u64) -> LogRecord {
        LogRecord {
            event_name: event.into(),
            time_unix_nano: t,
            attributes: vec![
                kv("code.stacktrace", s(stack)),
                kv("thread.id", any_value::Value::IntValue(42)),
                kv("thread.name", s("tokio-rt-worker")),
                kv("tokio.worker.index", any_value::Value::IntValue(1)),
                kv(
                    "loopwatch.stall.duration",
                    any_value::Value::DoubleValue(0.25),
                ),
            ],
            ..Default::default()
        }
    }

    fn key(instance: &str) -> ServiceKey {
        ServiceKey {
            service: "svc".into(),
            instance: instance.into(),
        }
    }

    #[test]
    fn stall_records_are_kept_with_their_frames_and_others_ignored() {
        let st = Stalls::default();
        let stack = "   0: app::spin\n             at src/main.rs:7\n   1: tokio::runtime::x\n";
        st.ingest(&request(
            "i-1",
            vec![
                record("loopwatch.stall", stack, 5),
                record("other", stack, 6),
            ],
        ));
        let got = st.last(&key("i-1"));
        assert_eq!(got.len(), 1);
        let r = &got[0];
        assert_eq!(
            (r.event, r.thread_id, r.worker),
            ("loopwatch.stall", Some(42), Some(1))
        );
        assert_eq!(r.duration_seconds, Some(0.25));
        assert_eq!(r.frames[0].function, "app::spin");
        assert_eq!(r.frames[0].location.as_deref(), Some("src/main.rs:7"));
        assert_eq!(r.frames[1].location, None);
        assert!(!r.truncated);
        let mut status = json!({"services": [{"service": "svc", "instance": "i-1"}]});
        st.annotate(&mut status);
        assert_eq!(
            status["services"][0]["last_stalls"][0]["frames"][0]["function"],
            "app::spin"
        );
    }

    #[test]
    fn reports_are_bounded_per_instance_in_count_and_bytes_and_freed() {
        let st = Stalls::default();
        let huge: String = (0..5000)
            .map(|i| format!("{i:4}: some::very::long::function::name_{i}\n"))
            .collect();
        for t in 0..20 {
            st.ingest(&request(
                "i-1",
                vec![record("tokio.worker.stuck", &huge, t)],
            ));
        }
        let got = st.last(&key("i-1"));
        assert_eq!(got.len(), MAX_REPORTS);
        assert_eq!(got[0].time_unix_nano, 12, "the newest are kept");
        for r in &got {
            let bytes: usize = r.frames.iter().map(|f| f.function.len()).sum();
            assert!(bytes <= MAX_REPORT_BYTES && r.truncated);
        }
        st.retain(&HashSet::new());
        assert!(st.last(&key("i-1")).is_empty());
    }

    #[test]
    fn bad_attributes_leave_fields_empty() {
        let st = Stalls::default();
        let mut r = record("loopwatch.stall", "", 1);
        r.attributes = vec![
            kv("thread.id", s("not a number")),
            kv("code.stacktrace", any_value::Value::IntValue(3)),
            kv(
                "loopwatch.stall.duration",
                any_value::Value::DoubleValue(f64::NAN),
            ),
        ];
        st.ingest(&request("i-2", vec![r]));
        let got = st.last(&key("i-2"));
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].thread_id, got[0].duration_seconds), (None, None));
        assert!(got[0].frames.is_empty());
    }

    #[test]
    fn instances_are_capped() {
        let st = Stalls::default();
        for i in 0..MAX_INSTANCES + 5 {
            st.ingest(&request(
                &format!("i-{i}"),
                vec![record("loopwatch.stall", "0: f\n", i as u64)],
            ));
        }
        assert_eq!(st.lock().len(), MAX_INSTANCES);
        assert!(st.last(&key("i-0")).is_empty(), "the oldest made room");
    }
}
