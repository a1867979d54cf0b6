//! Fault: the upstream collector is down for a long time under steady load. The agent's
//! export queue stays bounded (`exporter.queue_size`), drops are counted, memory stays flat,
//! and when the collector comes back the agent delivers again.
//!
//! The upstream is a second `loopwatch-agent` (a real OTLP/gRPC receiver). The outage lasts
//! `LOOPWATCH_RELIABILITY_OUTAGE_SECS` seconds (default 60, CI-friendly; e.g. 600 for the
//! issue's "minutes").

use std::time::{Duration, Instant};

use loopwatch_e2e::{Agent, Service, free_port, http_post, wait_for};

#[test]
fn upstream_down_queue_bounded_drops_counted_recovers() {
    let outage = Duration::from_secs(
        std::env::var("LOOPWATCH_RELIABILITY_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let queue = 8;
    let upstream_port = free_port();
    let upstream_addr = format!("127.0.0.1:{upstream_port}");
    let mut agent = Agent::start(&[
        "--set",
        &format!("exporter.endpoint=http://{upstream_addr}"),
        "--set",
        "exporter.interval=500ms",
        "--set",
        "exporter.timeout=1s",
        "--set",
        &format!("exporter.queue_size={queue}"),
        "--set",
        "exporter.max_retry_time=5s",
    ]);
    let service = Service::start(&agent, "steady");
    service.wait_ready_at(&agent);
    let traces = format!("{}/v1/traces", agent.http);
    let span_body = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"steady"}}]},"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"op","kind":2,"startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#;

    let gauge = |a: &Agent, name: &str| a.counter(name, "");
    let baseline_rss = agent.rss_kib();
    let start = Instant::now();
    let mut max_depth = 0.0f64;
    let mut rss_first_half = 0u64;
    let mut rss_second_half = 0u64;
    while start.elapsed() < outage {
        // Steady load: the service exports every second; add 10 span batches per second.
        for _ in 0..5 {
            assert_eq!(
                http_post(&traces, "application/json", None, span_body.to_vec()).0,
                200,
                "receiving continues while upstream is down"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        max_depth = max_depth.max(gauge(&agent, "loopwatch_agent_export_queue_depth"));
        let rss = agent.rss_kib();
        if start.elapsed() < outage / 2 {
            rss_first_half = rss_first_half.max(rss);
        } else {
            rss_second_half = rss_second_half.max(rss);
        }
        assert!(agent.proc.is_running());
    }
    let dropped = agent.counter("loopwatch_agent_export_dropped_total", "");
    let errors = gauge(&agent, "loopwatch_agent_export_errors_total");
    eprintln!(
        "outage {outage:?}: max queue depth {max_depth}, dropped {dropped}, errors {errors}, \
         RSS baseline {baseline_rss} KiB, first half max {rss_first_half} KiB, second half max {rss_second_half} KiB"
    );
    assert!(
        max_depth <= queue as f64,
        "queue bounded: {max_depth} > {queue}"
    );
    assert!(
        dropped > 0.0,
        "drops are counted while the upstream is down"
    );
    assert!(errors > 0.0, "failed attempts are counted");
    assert!(rss_first_half <= baseline_rss + 64 * 1024, "memory bounded");
    assert!(
        rss_second_half <= rss_first_half + 16 * 1024,
        "memory flat: {rss_first_half} KiB -> {rss_second_half} KiB"
    );
    assert_eq!(
        agent.get(&format!("/readyz?service={}", service.name)).0,
        200
    );

    // The collector comes back: delivery resumes and the queue drains.
    let sent_before = gauge(&agent, "loopwatch_agent_export_sent_total");
    let upstream = Agent::start_args(
        &[
            "--grpc-listen",
            &upstream_addr,
            "--http-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    wait_for(
        "upstream to receive the service's metrics through the agent",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || upstream.service_status(&service.name),
    );
    wait_for(
        "agent to count sent items after recovery",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || (gauge(&agent, "loopwatch_agent_export_sent_total") > sent_before).then_some(()),
    );
    assert!(
        upstream.counter("loopwatch_agent_spans_received_total", "") > 0.0,
        "spans forwarded"
    );
}
