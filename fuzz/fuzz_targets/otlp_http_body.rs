#![no_main]
//! Fuzz target: the agent's OTLP/HTTP body path (protobuf, JSON, gzip, caps, ingest,
//! exposition).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    loopwatch_fuzz::harness::otlp_http_body(data);
});
