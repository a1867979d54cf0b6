//! OTLP/HTTP (protobuf): a stall reaches a plain HTTP receiver while the watched runtime is
//! completely blocked. The receiver is a minimal HTTP/1.1 server on a std thread.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BlockState, PROBE, THRESHOLD};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message;

#[derive(Debug, Clone)]
struct Post {
    at: Instant,
    path: String,
    content_type: String,
    stall: Option<f64>,
}

fn stall_gauge(body: &[u8]) -> Option<f64> {
    let req = ExportMetricsServiceRequest::decode(body).ok()?;
    req.resource_metrics
        .iter()
        .flat_map(|rm| rm.scope_metrics.iter())
        .flat_map(|sm| sm.metrics.iter())
        .filter(|m| m.name == "tokio.eventloop.stall.duration")
        .find_map(|m| match &m.data {
            Some(metric::Data::Gauge(g)) => g.data_points.iter().find_map(|p| match p.value {
                Some(number_data_point::Value::AsDouble(v)) => Some(v),
                _ => None,
            }),
            _ => None,
        })
}

/// Serves one keep-alive connection: bounded by a read timeout and a request count.
fn serve_conn(stream: TcpStream, posts: &Mutex<Vec<Post>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    for _ in 0..100 {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let (mut len, mut content_type) = (0usize, String::new());
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "content-type" => content_type = v.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len.min(16 << 20)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        posts.lock().expect("lock").push(Post {
            at: Instant::now(),
            path,
            content_type,
            stall: stall_gauge(&body),
        });
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

#[test]
fn http_protobuf_stall_reaches_receiver_while_runtime_is_blocked() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let posts = Arc::new(Mutex::new(Vec::<Post>::new()));
    let server_posts = Arc::clone(&posts);
    std::thread::spawn(move || {
        // At most a few connections in this test.
        for stream in listener.incoming().take(8).flatten() {
            let p = Arc::clone(&server_posts);
            std::thread::spawn(move || serve_conn(stream, &p));
        }
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let guard = loopwatch::Loopwatch::builder()
        .endpoint(format!("http://{addr}/v1/metrics"))
        .protocol(loopwatch::Protocol::HttpProtobuf)
        .export_interval(Duration::from_secs(60))
        .probe_interval(PROBE)
        .stall_threshold(THRESHOLD)
        .start_with_handle(rt.handle().clone())
        .expect("start");
    let state = Arc::new(BlockState::default());
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        state.block(1, Duration::from_millis(800));
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let block_end = state.end().expect("block ended");
    guard.shutdown();

    let posts = posts.lock().expect("lock").clone();
    eprintln!("{posts:?}");
    let during = posts
        .iter()
        .find(|p| p.at < block_end && p.stall.unwrap_or(0.0) >= THRESHOLD.as_secs_f64())
        .expect("a POST with stall.duration >= threshold during the block");
    assert_eq!(during.path, "/v1/metrics");
    assert_eq!(during.content_type, "application/x-protobuf");
    assert!(
        posts.iter().any(|p| p.at >= block_end),
        "no export after the block"
    );
}
