//! OTLP receivers over real sockets: gRPC (tonic client, plain and gzip), HTTP protobuf,
//! OTLP/JSON, gzip, chunked bodies, traces/logs, bad input, size and cardinality caps.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use loopwatch_agent::config::Config;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use prost::Message;
use tonic::codec::CompressionEncoding;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

fn metrics_text(agent: &TestAgent) -> String {
    let (status, body) = agent.get("/metrics");
    assert_eq!(status, 200);
    body
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[test]
fn grpc_export_plain_and_gzip_updates_status() {
    let agent = TestAgent::start(Config::builder());
    let endpoint = agent.grpc_endpoint();
    agent.rt.block_on(async {
        let mut plain = MetricsServiceClient::connect(endpoint.clone())
            .await
            .expect("connect");
        plain
            .export(tokio_export("grpc-svc", "i-1", 0.002, 0.0, 0.25))
            .await
            .expect("plain export accepted");
        let mut gz = MetricsServiceClient::connect(endpoint)
            .await
            .expect("connect")
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip);
        gz.export(tokio_export("grpc-svc", "i-2", 0.004, 0.0, 0.5))
            .await
            .expect("gzip export accepted");
    });
    let one = status_of(&agent, "grpc-svc", "i-1").expect("i-1 tracked");
    assert_eq!(one["state"], "ok");
    assert_eq!(one["runtime"], "tokio");
    assert_eq!(one["delay_p99_seconds"], 0.002);
    let two = status_of(&agent, "grpc-svc", "i-2").expect("i-2 tracked");
    assert_eq!(two["utilization"], 0.5);
    // pressure = max(0.004 / 0.1, 0.5 / 0.8)
    assert_eq!(two["pressure"], 0.625);
}

#[test]
fn http_protobuf_gzip_and_delta_counters() {
    let agent = TestAgent::start(Config::builder());
    let req = request(
        "http-svc",
        "",
        vec![
            counter("tokio.eventloop.stalls", "{stall}", 2, true),
            counter("app.requests", "{request}", 40, false),
        ],
    );
    for _ in 0..3 {
        assert_eq!(agent.post_metrics(&req), 200);
    }
    // gzip protobuf, response decodes as ExportMetricsServiceResponse.
    let resp = client()
        .post(agent.http("/v1/metrics"))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(gzip(&req.encode_to_vec()))
        .send()
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().expect("ct"),
        "application/x-protobuf"
    );
    let body = resp.bytes().expect("body");
    ExportMetricsServiceResponse::decode(&body[..]).expect("protobuf response");

    let text = metrics_text(&agent);
    let labels = r#"{service_name="http-svc",service_instance_id=""}"#;
    // Delta accumulates over 4 exports, cumulative is replaced.
    assert!(
        has_line(&text, &format!("tokio_eventloop_stalls_total{labels} 8")),
        "{text}"
    );
    assert!(
        has_line(&text, &format!("app_requests_total{labels} 40")),
        "{text}"
    );
    assert!(
        has_line(&text, "loopwatch_agent_datapoints_received_total 8"),
        "{text}"
    );
    let st = status_of(&agent, "http-svc", "").expect("tracked with empty instance");
    assert_eq!(st["runtime"], "unknown");
}

/// A hand-written OTLP/JSON export in the wire format real SDKs send: camelCase names,
/// 64-bit integers as strings, hex ids (upper and lower case), enum integers, unknown fields.
const JSON_SAMPLE: &str = r#"{
  "resourceMetrics": [{
    "resource": {"attributes": [
      {"key": "service.name", "value": {"stringValue": "node-app"}},
      {"key": "service.instance.id", "value": {"stringValue": "pod-1"}},
      {"key": "process.pid", "value": {"intValue": "4242"}}
    ]},
    "scopeMetrics": [{
      "scope": {"name": "@opentelemetry/instrumentation-runtime-node", "version": "0.12.0"},
      "metrics": [
        {"name": "nodejs.eventloop.delay.p99", "unit": "s", "description": "p99 event loop delay",
         "gauge": {"dataPoints": [{"asDouble": 0.3, "startTimeUnixNano": "1544712660300000000",
                                   "timeUnixNano": "1544712661300000000"}]}},
        {"name": "nodejs.eventloop.utilization", "unit": "1",
         "gauge": {"dataPoints": [{"asDouble": 0.5, "timeUnixNano": "1544712661300000000"}]}},
        {"name": "app.jobs", "unit": "{job}", "someFutureField": true,
         "sum": {"aggregationTemporality": 2, "isMonotonic": true,
                 "dataPoints": [{"asInt": "9007199254740993",
                                 "attributes": [{"key": "job.kind", "value": {"stringValue": "a\"b"}}],
                                 "timeUnixNano": "1544712661300000000",
                                 "exemplars": [{"asDouble": 1.0, "timeUnixNano": "1544712661300000000",
                                                "spanId": "EEE19B7EC3C1B174",
                                                "traceId": "5b8efff798038103d269b633813fc60c"}]}]}},
        {"name": "http.server.request.duration", "unit": "s",
         "histogram": {"aggregationTemporality": 2,
                       "dataPoints": [{"count": "3", "sum": 0.75, "bucketCounts": ["1", "1", "1"],
                                       "explicitBounds": [0.1, 0.5],
                                       "attributes": [{"key": "http.route", "value": {"stringValue": "/x"}}],
                                       "timeUnixNano": "1544712661300000000"}]}}
      ]
    }]
  }]
}"#;

#[test]
fn http_json_real_sample_and_json_response() {
    let agent = TestAgent::start(Config::builder());
    let resp = client()
        .post(agent.http("/v1/metrics"))
        .header("content-type", "application/json")
        .body(JSON_SAMPLE)
        .send()
        .expect("send");
    let status = resp.status().as_u16();
    let ct = resp.headers()["content-type"]
        .to_str()
        .expect("ct")
        .to_string();
    let body = resp.text().expect("body");
    assert_eq!(status, 200, "{body}");
    assert_eq!(ct, "application/json");
    assert_eq!(
        body, "{}",
        "empty ExportMetricsServiceResponse, nulls omitted"
    );

    let st = status_of(&agent, "node-app", "pod-1").expect("node-app tracked");
    assert_eq!(st["runtime"], "nodejs");
    assert_eq!(st["lag_seconds"], 0.3);
    assert_eq!(st["utilization"], 0.5);
    assert_eq!(st["state"], "unhealthy", "0.3 s >= lag_enter 0.25 s: {st}");

    let text = metrics_text(&agent);
    let l = r#"service_name="node-app",service_instance_id="pod-1""#;
    assert!(
        has_line(
            &text,
            &format!(r#"app_jobs_total{{{l},job_kind="a\"b"}} 9007199254740992"#)
        ),
        "{text}"
    );
    assert!(
        has_line(
            &text,
            &format!(
                r#"http_server_request_duration_seconds_bucket{{{l},http_route="/x",le="0.5"}} 2"#
            )
        ),
        "{text}"
    );
    assert!(
        has_line(
            &text,
            &format!(r#"http_server_request_duration_seconds_count{{{l},http_route="/x"}} 3"#)
        ),
        "{text}"
    );
    assert!(
        has_line(
            &text,
            &format!("nodejs_eventloop_utilization_ratio{{{l}}} 0.5")
        ),
        "{text}"
    );

    // gzip JSON works too.
    let resp = client()
        .post(agent.http("/v1/metrics"))
        .header("content-type", "application/json; charset=utf-8")
        .header("content-encoding", "gzip")
        .body(gzip(JSON_SAMPLE.as_bytes()))
        .send()
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
}

/// Sends a raw HTTP/1.1 request with a chunked body (no Content-Length) and returns the
/// status line.
fn raw_chunked_post(
    addr: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    chunks: &[&[u8]],
) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for c in chunks {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&out).expect("write");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    String::from_utf8_lossy(&resp)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn chunked_bodies_without_content_length() {
    let agent = TestAgent::start(Config::builder().max_body_bytes(64 * 1024));
    let body = tokio_export("chunky", "c-1", 0.001, 0.0, 0.1).encode_to_vec();
    let (a, b) = body.split_at(body.len() / 2);
    let line = raw_chunked_post(
        agent.agent().http_addr,
        "/v1/metrics",
        "application/x-protobuf",
        &[a, b],
    );
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    assert!(status_of(&agent, "chunky", "c-1").is_some());

    // A chunked body over the cap is refused with 413 even without Content-Length.
    let big = vec![b'x'; 16 * 1024];
    let chunks: Vec<&[u8]> = (0..8).map(|_| &big[..]).collect();
    let line = raw_chunked_post(
        agent.agent().http_addr,
        "/v1/metrics",
        "application/x-protobuf",
        &chunks,
    );
    assert!(line.starts_with("HTTP/1.1 413"), "{line}");
}

#[test]
fn traces_and_logs_are_accepted_and_counted() {
    let agent = TestAgent::start(Config::builder());
    let spans = r#"{"resourceSpans":[{"resource":{"attributes":[]},"scopeSpans":[{"spans":[
        {"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174","name":"GET /x",
         "kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000"}]}]}]}"#;
    let resp = client()
        .post(agent.http("/v1/traces"))
        .header("content-type", "application/json")
        .body(spans)
        .send()
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let logs = opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest::default();
    let resp = client()
        .post(agent.http("/v1/logs"))
        .header("content-type", "application/x-protobuf")
        .body(logs.encode_to_vec())
        .send()
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let text = metrics_text(&agent);
    assert!(
        has_line(&text, "loopwatch_agent_spans_received_total 1"),
        "{text}"
    );
}

#[test]
fn bad_input_is_refused_and_agent_stays_up() {
    let agent = TestAgent::start(Config::builder().max_body_bytes(64 * 1024));
    let post = |ct: &str, enc: Option<&str>, body: Vec<u8>| {
        let mut r = client()
            .post(agent.http("/v1/metrics"))
            .header("content-type", ct)
            .body(body);
        if let Some(e) = enc {
            r = r.header("content-encoding", e);
        }
        r.send().expect("send").status().as_u16()
    };
    let pb = "application/x-protobuf";
    // Garbage protobuf: field 1, length-delimited, absurd length.
    assert_eq!(
        post(pb, None, vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2]),
        400
    );
    assert_eq!(post("application/json", None, b"{not json".to_vec()), 400);
    assert_eq!(post(pb, Some("gzip"), b"not gzip at all".to_vec()), 400);
    assert_eq!(post("text/plain", None, b"hello".to_vec()), 415);
    assert_eq!(post(pb, Some("br"), vec![]), 415);
    // Oversize on the wire.
    assert_eq!(post(pb, None, vec![0u8; 100 * 1024]), 413);
    // Small on the wire, oversize once decompressed.
    let bomb = gzip(&vec![0u8; 1024 * 1024]);
    assert!(bomb.len() < 64 * 1024);
    assert_eq!(post(pb, Some("gzip"), bomb), 413);
    // NaN/Inf values are skipped and counted, the request is accepted.
    let req = request(
        "nan-svc",
        "",
        vec![
            gauge("g.nan", "1", f64::NAN, &[]),
            gauge("g.inf", "1", f64::INFINITY, &[]),
            gauge("g.ok", "1", 1.5, &[]),
        ],
    );
    assert_eq!(agent.post_metrics(&req), 200);

    assert_eq!(agent.get("/livez"), (200, r#"{"status":"ok"}"#.to_string()));
    let text = metrics_text(&agent);
    for line in [
        r#"loopwatch_agent_requests_refused_total{reason="malformed"} 3"#,
        r#"loopwatch_agent_requests_refused_total{reason="unsupported_media_type"} 2"#,
        r#"loopwatch_agent_requests_refused_total{reason="too_large"} 2"#,
        r#"loopwatch_agent_datapoints_dropped_total{reason="non_finite"} 2"#,
        r#"g_ok_ratio{service_name="nan-svc",service_instance_id=""} 1.5"#,
    ] {
        assert!(has_line(&text, line), "missing {line}\n{text}");
    }
    assert!(!text.contains("g_nan"), "{text}");
}

#[test]
fn caps_refuse_with_429_and_resource_exhausted() {
    let agent = TestAgent::start(
        Config::builder()
            .max_services(2)
            .max_series_per_service(3)
            .max_body_bytes(64 * 1024),
    );
    assert_eq!(
        agent.post_metrics(&tokio_export("a", "", 0.0, 0.0, 0.0)),
        200
    );
    assert_eq!(
        agent.post_metrics(&tokio_export("b", "", 0.0, 0.0, 0.0)),
        200
    );
    assert_eq!(
        agent.post_metrics(&tokio_export("c", "", 0.0, 0.0, 0.0)),
        429
    );
    // A 4th series for "a" is over max_series_per_service = 3.
    let more = request("a", "", vec![gauge("x.extra", "1", 1.0, &[])]);
    assert_eq!(agent.post_metrics(&more), 429);
    // Existing series keep updating.
    assert_eq!(
        agent.post_metrics(&tokio_export("a", "", 0.01, 0.0, 0.0)),
        200
    );

    let endpoint = agent.grpc_endpoint();
    let (cap_code, size_code) = agent.rt.block_on(async {
        let mut c = MetricsServiceClient::connect(endpoint)
            .await
            .expect("connect");
        let cap = c
            .export(tokio_export("d", "", 0.0, 0.0, 0.0))
            .await
            .expect_err("over max_services");
        let big = request(
            "a",
            "",
            vec![gauge("x", "1", 1.0, &[("blob", &"z".repeat(1000))]); 100],
        );
        let size = c.export(big).await.expect_err("over max_body_bytes");
        (cap.code(), size.code())
    });
    assert_eq!(cap_code, tonic::Code::ResourceExhausted);
    assert!(
        matches!(
            size_code,
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{size_code:?}"
    );
    let text = metrics_text(&agent);
    assert!(
        has_line(
            &text,
            r#"loopwatch_agent_requests_refused_total{reason="too_many_services"} 2"#
        ),
        "{text}"
    );
    assert!(
        has_line(
            &text,
            r#"loopwatch_agent_requests_refused_total{reason="too_many_series"} 1"#
        ),
        "{text}"
    );
    assert!(has_line(&text, "loopwatch_agent_services 2"), "{text}");
}
