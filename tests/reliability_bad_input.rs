//! Bad-input table against a running `loopwatch-agent` (default limits) with a real,
//! well-behaved `example-service` exporting to it. Each case gets the status the OTLP
//! specification prescribes (400 malformed, 413 too large, 415 unsupported media type,
//! 429 / RESOURCE_EXHAUSTED over a cap, 408 for a body that never arrives) and moves its
//! counter on `/metrics`. After each case: the agent is up, its RSS stays bounded, and the
//! well-behaved service's health is unchanged (see `reliability_common::after_case`).

#[path = "reliability_common.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use loopwatch_agent::testing::BYTES_PER_NODE;
use loopwatch_e2e::{Agent, Service, host_port, http_post, raw_http};

/// Default `receiver.max_body_bytes` (8 MiB).
const CAP: usize = 8 * 1024 * 1024;
/// The agent's header and body deadlines (`deadline::HEAD_TIMEOUT`, `BODY_TIMEOUT`) are 10 s;
/// a connection must be cut within this protocol bound.
const SLOW_BOUND: Duration = Duration::from_secs(25);

#[test]
fn bad_input_table() {
    let mut agent = Agent::start(&[]);
    let well = Service::start(&agent, "well-behaved");
    well.wait_ready_at(&agent);
    let metrics_url = format!("{}/v1/metrics", agent.http);
    let http_addr = host_port(&agent.http);
    let mut rss = agent.rss_kib();
    eprintln!("agent RSS at start: {rss} KiB");

    // 1. Truncated protobuf: a valid request cut short.
    let full = pb(&tokio_export("trunc", 0.001, 0.0, 0.1));
    let mut cut = full.len() - 1;
    while cut > 0 {
        let r: Result<
            opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
            _,
        > = prost::Message::decode(&full[..cut]);
        if r.is_err() {
            break;
        }
        cut -= 1;
    }
    let before = agent.refused("malformed");
    assert_eq!(
        http_post(&metrics_url, PB, None, full[..cut].to_vec()).0,
        400,
        "truncated"
    );
    assert_eq!(agent.refused("malformed"), before + 1.0);
    rss = after_case("truncated protobuf", &mut agent, &well, rss);

    // 2. Garbage protobuf (invalid wire types / absurd lengths) and garbage JSON.
    let before = agent.refused("malformed");
    let garbage: Vec<Vec<u8>> = vec![
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2],
        vec![0xff; 64],
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x07)
            .collect(),
    ];
    for g in &garbage {
        assert_eq!(
            http_post(&metrics_url, PB, None, g.clone()).0,
            400,
            "garbage protobuf"
        );
    }
    assert_eq!(
        http_post(
            &metrics_url,
            JSON,
            None,
            b"{\"resourceMetrics\": [".to_vec()
        )
        .0,
        400
    );
    assert_eq!(
        http_post(&metrics_url, PB, Some("gzip"), b"not gzip".to_vec()).0,
        400
    );
    assert_eq!(
        agent.refused("malformed"),
        before + garbage.len() as f64 + 2.0
    );
    rss = after_case("garbage", &mut agent, &well, rss);

    // 3. Wrong content type and encoding: 415.
    let before = agent.refused("unsupported_media_type");
    assert_eq!(
        http_post(&metrics_url, "text/plain", None, full.clone()).0,
        415
    );
    assert_eq!(
        http_post(&metrics_url, "application/grpc", None, full.clone()).0,
        415
    );
    assert_eq!(http_post(&metrics_url, PB, Some("br"), full.clone()).0, 415);
    let (code, _) = raw_http(
        &http_addr,
        &format!(
            "POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Length: {}",
            full.len()
        ),
        full.clone(),
        Duration::from_secs(10),
    );
    assert_eq!(code, 415, "no content type");
    assert_eq!(agent.refused("unsupported_media_type"), before + 4.0);
    rss = after_case("wrong content type", &mut agent, &well, rss);

    // 4. Body over the cap: declared (Content-Length) and chunked (no length): 413.
    let before = agent.refused("too_large");
    let big = vec![0u8; CAP + 1024 * 1024];
    let (code, text) = raw_http(
        &http_addr,
        &format!(
            "POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: {PB}\r\nContent-Length: {}",
            big.len()
        ),
        big.clone(),
        Duration::from_secs(30),
    );
    assert_eq!(code, 413, "declared oversize: {text}");
    let mut chunked = Vec::new();
    for c in big.chunks(256 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        chunked.extend_from_slice(c);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (code, text) = raw_http(
        &http_addr,
        &format!(
            "POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: {PB}\r\nTransfer-Encoding: chunked"
        ),
        chunked,
        Duration::from_secs(30),
    );
    assert_eq!(code, 413, "chunked oversize: {text}");
    assert_eq!(agent.refused("too_large"), before + 2.0);
    drop(big);
    rss = after_case("body over the cap", &mut agent, &well, rss);

    // 5. Gzip bomb: 128 MiB of zeros in ~128 KiB; the cap applies to the decompressed size.
    let bomb = gzip_zeros(128 * 1024 * 1024);
    assert!(
        bomb.len() < CAP / 8,
        "bomb is small on the wire: {}",
        bomb.len()
    );
    let before = agent.refused("too_large");
    assert_eq!(
        http_post(&metrics_url, PB, Some("gzip"), bomb.clone()).0,
        413,
        "HTTP gzip bomb"
    );
    assert_eq!(agent.refused("too_large"), before + 1.0);
    rss = after_case("gzip bomb (HTTP)", &mut agent, &well, rss);

    // 5b. Decode amplification: a body just under the cap made of empty nested messages
    //     (2 bytes on the wire, a struct of ~100 bytes each once decoded).
    let mut amp = Vec::with_capacity(CAP);
    while amp.len() + 2 <= CAP - 16 {
        amp.extend_from_slice(&[0x0a, 0x00]);
    }
    let before = agent.refused("too_large");
    assert_eq!(
        http_post(&metrics_url, PB, None, amp).0,
        413,
        "decode amplification over the budget"
    );
    let json_amp: Vec<u8> = std::iter::once(&b"{\"resourceMetrics\":["[..])
        .chain(std::iter::repeat_n(&b"{},"[..], (CAP - 64) / 3))
        .chain(std::iter::once(&b"{}]}"[..]))
        .flatten()
        .copied()
        .collect();
    assert_eq!(
        http_post(&metrics_url, JSON, None, json_amp).0,
        413,
        "JSON decode amplification"
    );
    assert_eq!(agent.refused("too_large"), before + 2.0);
    rss = after_case("decode amplification", &mut agent, &well, rss);
    // Just under the budget (receiver.max_body_bytes / BYTES_PER_NODE elements): accepted,
    // memory bounded.
    let under: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], CAP / BYTES_PER_NODE - 1024)
        .flatten()
        .collect();
    let code = http_post(&metrics_url, PB, None, under).0;
    assert!(
        matches!(code, 200 | 429),
        "amplification under the budget -> {code}"
    );
    rss = after_case(
        "decode amplification under the budget",
        &mut agent,
        &well,
        rss,
    );

    // 6. Invalid UTF-8 in an attribute value: protobuf strings must be UTF-8 -> 400; JSON
    //    with raw invalid bytes or a lone surrogate -> 400.
    let marker = "MARKERMARKER";
    let mut bad = pb(&request(
        "utf8",
        vec![gauge("g", "1", 1.0, &[("k", marker)])],
    ));
    let pos = bad
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .expect("marker in encoding");
    bad[pos..pos + 4].copy_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
    let before = agent.refused("malformed");
    assert_eq!(
        http_post(&metrics_url, PB, None, bad).0,
        400,
        "invalid UTF-8 protobuf"
    );
    let json_bad = br#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"a"#
        .iter()
        .copied()
        .chain([0xff, 0xfe])
        .chain(br#""}}]}}]}"#.iter().copied())
        .collect::<Vec<u8>>();
    assert_eq!(
        http_post(&metrics_url, JSON, None, json_bad).0,
        400,
        "invalid UTF-8 JSON"
    );
    let surrogate = br#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"\ud800"}}]}}]}"#;
    assert_eq!(
        http_post(&metrics_url, JSON, None, surrogate.to_vec()).0,
        400,
        "lone surrogate"
    );
    assert_eq!(agent.refused("malformed"), before + 3.0);
    assert!(
        agent.service_status("utf8").is_none(),
        "nothing of a refused request is kept"
    );
    rss = after_case("invalid UTF-8", &mut agent, &well, rss);

    // 7. NaN, Inf and negative values: the request is accepted (200), non-finite points are
    //    dropped and counted, negative lag/utilization never shows as negative lag/pressure.
    let dropped = |a: &Agent| {
        a.counter(
            "loopwatch_agent_datapoints_dropped_total",
            "reason=\"non_finite\"",
        )
    };
    let before = dropped(&agent);
    let rt = [("tokio.runtime.name", "main")];
    let weird = request(
        "weird-values",
        vec![
            gauge("tokio.eventloop.delay.p99", "s", f64::NAN, &rt),
            gauge("tokio.eventloop.stall.duration", "s", f64::INFINITY, &rt),
            gauge("tokio.eventloop.utilization", "1", f64::NEG_INFINITY, &rt),
            gauge("app.ok", "1", 1.0, &[]),
        ],
    );
    assert_eq!(http_post(&metrics_url, PB, None, pb(&weird)).0, 200);
    assert_eq!(dropped(&agent), before + 3.0);
    let negative = tokio_export("negative-values", -5.0, -1.0, -0.5);
    assert_eq!(http_post(&metrics_url, PB, None, pb(&negative)).0, 200);
    let s = agent.service_status("negative-values").expect("tracked");
    for field in [
        "lag_seconds",
        "pressure",
        "utilization",
        "delay_p99_seconds",
        "stall_seconds",
    ] {
        if let Some(v) = s[field].as_f64() {
            assert!(
                v >= 0.0 && v.is_finite(),
                "{field} is {v} for negative inputs: {s}"
            );
        }
    }
    let pressure: serde_json::Value =
        serde_json::from_str(&agent.get("/v1/pressure").1).expect("pressure JSON");
    for s in pressure["services"].as_array().expect("services") {
        let p = s["pressure"].as_f64().expect("pressure is a number");
        assert!(p.is_finite() && p >= 0.0, "{pressure}");
    }
    rss = after_case("NaN/Inf/negative", &mut agent, &well, rss);

    // 8. 100k unique series from one service: the series cap (10k) answers 429.
    let before = agent.refused("too_many_series");
    let mut codes = Vec::new();
    for batch in 0..10 {
        let metrics = (0..10_000)
            .map(|i| {
                gauge(
                    "cardinality.bomb",
                    "1",
                    1.0,
                    &[("id", &format!("{batch}-{i}"))],
                )
            })
            .collect();
        codes.push(http_post(&metrics_url, PB, None, pb(&request("cardinality", metrics))).0);
    }
    assert_eq!(codes[0], 200, "the first 10k series fit the cap: {codes:?}");
    assert!(codes[1..].iter().all(|c| *c == 429), "{codes:?}");
    assert_eq!(agent.refused("too_many_series"), before + 9.0);
    let big_series = tokio_export("cardinality", 0.0, 0.0, 0.0);
    let grpc = grpc_export(&agent.grpc, big_series, false);
    assert_eq!(
        grpc.map_err(|s| s.code()),
        Err(tonic::Code::ResourceExhausted),
        "gRPC over the series cap"
    );
    rss = after_case("100k series", &mut agent, &well, rss);

    // 9. 10k distinct services: the services cap (1000) answers 429.
    let before = agent.refused("too_many_services");
    let mut ok = 0;
    let mut refused = 0;
    for batch in 0..100 {
        let req = opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest {
            resource_metrics: (0..100)
                .map(|i| resource(&format!("svc-{batch}-{i}"), vec![gauge("g", "1", 1.0, &[])]))
                .collect(),
        };
        match http_post(&metrics_url, PB, None, pb(&req)).0 {
            200 => ok += 1,
            429 => refused += 1,
            other => panic!("services cap: unexpected {other}"),
        }
    }
    assert!(ok >= 9 && refused >= 80, "ok={ok} refused={refused}");
    assert_eq!(agent.refused("too_many_services"), before + refused as f64);
    let tracked = agent.counter("loopwatch_agent_services", "");
    assert!(tracked <= 1000.0, "services gauge {tracked}");
    rss = after_case("10k services", &mut agent, &well, rss);

    // 10. Slow-loris: a silent connection, a header trickle, and a body trickle, plus 100
    //     idle half-open requests; all are cut within the protocol bound while the
    //     well-behaved service keeps reporting.
    let timed_out = |a: &Agent| a.counter("loopwatch_agent_connections_timed_out_total", "");
    let before_conn = timed_out(&agent);
    let before_408 = agent.refused("timeout");
    let addr = http_addr.clone();
    let trickle_head = std::thread::spawn(move || {
        let mut s = TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(900))).ok();
        let start = Instant::now();
        let _ = s.write_all(b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\n");
        while start.elapsed() < SLOW_BOUND {
            if s.write_all(b"X").is_err() {
                return Some(start.elapsed());
            }
            let mut b = [0u8; 64];
            match s.read(&mut b) {
                Ok(0) => return Some(start.elapsed()),
                Err(e)
                    if e.kind() != std::io::ErrorKind::WouldBlock
                        && e.kind() != std::io::ErrorKind::TimedOut =>
                {
                    return Some(start.elapsed());
                }
                _ => {}
            }
        }
        None
    });
    let addr = http_addr.clone();
    let trickle_body = std::thread::spawn(move || {
        let mut s = TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(900))).ok();
        let start = Instant::now();
        let _ = s.write_all(
            format!("POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: {PB}\r\nContent-Length: 100000\r\n\r\n").as_bytes(),
        );
        let mut got = Vec::new();
        while start.elapsed() < SLOW_BOUND {
            let _ = s.write_all(&[0x0a]);
            let mut b = [0u8; 512];
            match s.read(&mut b) {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&b[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Err(_) => {}
            }
        }
        (start.elapsed(), String::from_utf8_lossy(&got).to_string())
    });
    let silent: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(&http_addr).ok())
        .collect();
    assert_eq!(silent.len(), 100);
    // While they hang, the agent still serves.
    assert_eq!(agent.get("/livez").0, 200);
    assert_eq!(
        http_post(
            &metrics_url,
            PB,
            None,
            pb(&tokio_export("during-loris", 0.001, 0.0, 0.1))
        )
        .0,
        200
    );
    let head_cut = trickle_head
        .join()
        .expect("thread")
        .expect("header trickle was cut");
    let (body_elapsed, body_resp) = trickle_body.join().expect("thread");
    assert!(
        body_resp.starts_with("HTTP/1.1 408"),
        "body trickle -> 408: {body_resp:?}"
    );
    assert!(body_elapsed < SLOW_BOUND, "{body_elapsed:?}");
    eprintln!(
        "header trickle cut after {head_cut:?}, body trickle answered after {body_elapsed:?}"
    );
    // The silent connections are closed by the header deadline.
    for mut s in silent {
        s.set_read_timeout(Some(SLOW_BOUND)).ok();
        let mut b = [0u8; 16];
        let r = s.read(&mut b);
        assert!(
            matches!(r, Ok(0)) || r.is_err(),
            "silent connection closed: {r:?}"
        );
    }
    assert_eq!(agent.refused("timeout"), before_408 + 1.0);
    assert!(
        timed_out(&agent) >= before_conn + 101.0,
        "{}",
        timed_out(&agent)
    );
    rss = after_case("slow-loris", &mut agent, &well, rss);

    // 11. gRPC: a message over the maximum size (OUT_OF_RANGE) and a gzip bomb
    //     (RESOURCE_EXHAUSTED while decompressing); both counted as too_large.
    let before = agent.refused("too_large");
    let huge = request(
        "grpc-huge",
        (0..9000)
            .map(|i| {
                gauge(
                    "g",
                    "1",
                    1.0,
                    &[("blob", &format!("{i}{}", "z".repeat(1000)))],
                )
            })
            .collect(),
    );
    let code = grpc_export(&agent.grpc, huge, false).map_err(|s| s.code());
    assert!(
        matches!(
            code,
            Err(tonic::Code::OutOfRange | tonic::Code::ResourceExhausted)
        ),
        "{code:?}"
    );
    let compressible = request(
        "grpc-bomb",
        (0..12_000)
            .map(|i| {
                gauge(
                    "g",
                    "1",
                    1.0,
                    &[("blob", &format!("{}{}", i % 40, "z".repeat(1000)))],
                )
            })
            .collect(),
    );
    let code = grpc_export(&agent.grpc, compressible, true).map_err(|s| s.code());
    assert_eq!(
        code,
        Err(tonic::Code::ResourceExhausted),
        "gRPC gzip over the cap"
    );
    assert_eq!(agent.refused("too_large"), before + 2.0);
    assert!(
        agent.service_status("grpc-huge").is_none() && agent.service_status("grpc-bomb").is_none()
    );
    let _ = after_case("gRPC over max size", &mut agent, &well, rss);
}
