//! The fuzz harness bodies, shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`) and the
//! regression test that replays kept inputs in `cargo test`
//! (`tests/reliability_fuzz_regressions.rs`). Each function panics only when it finds a bug.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::Request;
use loopwatch_agent::config::{Config, parse_duration};
use loopwatch_agent::testing::AgentState;
use tower::Service;

/// The OTLP/HTTP body path: content type, `Content-Encoding`, gzip, protobuf/JSON decoding,
/// caps and ingestion, then health evaluation and the Prometheus exposition.
///
/// Input layout: byte 0 chooses the content type (bits 0-1: protobuf, JSON, `text/plain`,
/// none) and the encoding (bit 2: gzip-compress the rest here, so the decoder sees valid
/// gzip of fuzzed data; bit 3: send the rest raw with `Content-Encoding: gzip`); the rest
/// is the body. The body cap is small (64 KiB) so decompression limits are exercised.
pub fn otlp_http_body(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = match selector & 3 {
        0 => Some("application/x-protobuf"),
        1 => Some("application/json"),
        2 => Some("text/plain"),
        _ => None,
    };
    let mut payload = body.to_vec();
    let mut gzip = false;
    if selector & 4 != 0 {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if enc.write_all(body).is_ok()
            && let Ok(c) = enc.finish()
        {
            payload = c;
            gzip = true;
        }
    } else if selector & 8 != 0 {
        gzip = true;
    }
    let config = Config::builder()
        .max_body_bytes(64 * 1024)
        .max_services(8)
        .max_series_per_service(64)
        .build()
        .expect("valid fuzz config");
    let state = Arc::new(AgentState::new(config));
    let mut router = loopwatch_agent::testing::http_router(state.clone());
    let mut req = Request::post("/v1/metrics");
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if gzip {
        req = req.header("content-encoding", "gzip");
    }
    let req = req.body(Body::from(payload)).expect("request");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let status = rt.block_on(async { router.call(req).await.map(|r| r.status().as_u16()) });
    let status = match status {
        Ok(s) => s,
        Err(never) => match never {},
    };
    assert!(
        matches!(status, 200 | 400 | 413 | 415 | 429),
        "unexpected status {status}"
    );
    let views = state.evaluate(Instant::now());
    for v in &views {
        assert!(v.pressure.is_finite(), "non-finite pressure {v:?}");
        assert!(v.last_seen_age_seconds >= 0.0);
    }
    let text = loopwatch_agent::testing::render_metrics(&state, &views);
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(
            line.rsplit_once(' ').is_some(),
            "exposition line without a value: {line:?}"
        );
    }
}

/// Config parsing: TOML files, single keys (env/flag path) and durations. A config that
/// loads must print (`--print-config`) to TOML that loads back to the same config.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut c = Config::default();
    if c.apply_toml(text, Path::new("fuzz.toml")).is_ok() && c.validate().is_ok() {
        let printed = c.to_toml();
        let mut again = Config::default();
        again
            .apply_toml(&printed, Path::new("printed.toml"))
            .unwrap_or_else(|e| panic!("printed config does not load: {e}\n{printed}"));
        assert_eq!(again, c, "printed config loads differently:\n{printed}");
    }
    // The same text as one key=value (what env vars and --set go through).
    if let Some((k, v)) = text.split_once('=') {
        let mut c = Config::default();
        let _ = c.set(k.trim(), v, Some("fuzz"));
    }
    if let Ok(d) = parse_duration(text) {
        assert!(d.as_secs_f64().is_finite());
    }
}
