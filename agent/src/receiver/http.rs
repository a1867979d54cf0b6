//! OTLP/HTTP receiver (axum): `POST /v1/metrics`, `/v1/traces`, `/v1/logs`.
//!
//! Accepts `application/x-protobuf` and `application/json` (OTLP/JSON: camelCase fields,
//! 64-bit integers as strings, hex trace/span ids), `Content-Encoding: gzip`, and bodies with
//! or without `Content-Length` (chunked). The body cap applies both to the bytes on the wire
//! and to the decompressed size. Responses use the request's encoding. A body not received
//! within [`crate::deadline::BODY_TIMEOUT`] is answered 408 and counted (slow-loris defence;
//! the header deadline is [`crate::deadline::DeadlineListener`]'s).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use crate::receiver::grpc::{count_log_records, count_spans};
use crate::state::{AgentState, RefuseReason};

/// Wire encoding of a request (and its response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json` (OTLP/JSON).
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// `google.rpc.Status`, the OTLP/HTTP error body.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// gRPC code INVALID_ARGUMENT.
const CODE_INVALID_ARGUMENT: i32 = 3;
/// gRPC code DEADLINE_EXCEEDED.
const CODE_DEADLINE_EXCEEDED: i32 = 4;
/// gRPC code RESOURCE_EXHAUSTED.
const CODE_RESOURCE_EXHAUSTED: i32 = 8;

fn error(status: StatusCode, encoding: Option<Encoding>, code: i32, message: String) -> Response {
    let (ct, body) = match encoding {
        Some(Encoding::Protobuf) => (
            "application/x-protobuf",
            RpcStatus { code, message }.encode_to_vec(),
        ),
        Some(Encoding::Json) => (
            "application/json",
            serde_json::json!({ "code": code, "message": message })
                .to_string()
                .into_bytes(),
        ),
        None => ("text/plain; charset=utf-8", message.into_bytes()),
    };
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(ct))],
        body,
    )
        .into_response()
}

fn success<T: Message + serde::Serialize>(encoding: Encoding, resp: &T) -> Response {
    let body = match encoding {
        Encoding::Protobuf => resp.encode_to_vec(),
        // OTLP/JSON omits unset fields: drop the `null`s serde would emit.
        Encoding::Json => match serde_json::to_value(resp) {
            Ok(serde_json::Value::Object(mut map)) => {
                map.retain(|_, v| !v.is_null());
                serde_json::Value::Object(map).to_string().into_bytes()
            }
            _ => b"{}".to_vec(),
        },
    };
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(encoding.content_type()),
        )],
        body,
    )
        .into_response()
}

/// Builds the OTLP/HTTP router.
pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/v1/metrics", post(metrics))
        .route("/v1/traces", post(traces))
        .route("/v1/logs", post(logs))
        .with_state(state)
}

/// Most body bytes reserved ahead of receiving them.
const PREALLOC_MAX: usize = 64 * 1024;

/// Reads the body up to `limit` bytes; `Err(true)` when over the limit, `Err(false)` on a
/// transport error.
///
/// A body that arrives as one frame (hyper hands over a body already in its read buffer
/// that way) is kept as that frame, without a copy; one in several frames is gathered into
/// a buffer sized from Content-Length up to 64 KiB (a typical export in one allocation; a
/// client that declares a large body and sends nothing cannot make us reserve much).
async fn read_limited(mut body: Body, limit: usize, declared: usize) -> Result<Bytes, bool> {
    let mut first: Option<Bytes> = None;
    let mut buf = Vec::new();
    loop {
        match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            None => {
                return Ok(match first {
                    Some(b) if buf.is_empty() => b,
                    _ => Bytes::from(buf),
                });
            }
            Some(Err(_)) => return Err(false),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let held = first.as_ref().map_or(0, Bytes::len) + buf.len();
                    if held + data.len() > limit {
                        return Err(true);
                    }
                    if first.is_none() && buf.is_empty() {
                        first = Some(data);
                        continue;
                    }
                    if let Some(f) = first.take() {
                        buf.reserve(declared.min(limit).min(PREALLOC_MAX));
                        buf.extend_from_slice(&f);
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

/// Validates headers, reads and decompresses the body. On failure returns the response.
async fn read_request(
    state: &AgentState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Encoding, Bytes), Response> {
    let limit = state.config().receiver.max_body_bytes;
    let refuse = |reason: RefuseReason, status: StatusCode, enc: Option<Encoding>, code, msg| {
        state.telemetry.refuse(reason);
        error(status, enc, code, msg)
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim();
    let is = |m: &str| media.eq_ignore_ascii_case(m);
    let encoding = match () {
        _ if is("application/x-protobuf") || is("application/protobuf") => Encoding::Protobuf,
        _ if is("application/json") => Encoding::Json,
        _ => {
            return Err(refuse(
                RefuseReason::UnsupportedMediaType,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
                CODE_INVALID_ARGUMENT,
                format!(
                    "unsupported content type {ct:?}; use application/x-protobuf or application/json"
                ),
            ));
        }
    };
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => false,
        Some("gzip") | Some("x-gzip") => true,
        Some(other) => {
            return Err(refuse(
                RefuseReason::UnsupportedMediaType,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Some(encoding),
                CODE_INVALID_ARGUMENT,
                format!("unsupported content encoding {other:?}; use gzip or none"),
            ));
        }
    };
    let too_large = |what: &str| {
        refuse(
            RefuseReason::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            Some(encoding),
            CODE_RESOURCE_EXHAUSTED,
            format!("{what} exceeds receiver.max_body_bytes = {limit}"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large("body"));
    }
    let read = tokio::time::timeout(
        crate::deadline::BODY_TIMEOUT,
        read_limited(body, limit, declared.map_or(0, |n| n as usize)),
    );
    let Ok(read) = read.await else {
        return Err(refuse(
            RefuseReason::Timeout,
            StatusCode::REQUEST_TIMEOUT,
            Some(encoding),
            CODE_DEADLINE_EXCEEDED,
            format!(
                "request body not received within {:?}",
                crate::deadline::BODY_TIMEOUT
            ),
        ));
    };
    let raw = match read {
        Ok(raw) => raw,
        Err(true) => return Err(too_large("body")),
        Err(false) => {
            return Err(refuse(
                RefuseReason::Malformed,
                StatusCode::BAD_REQUEST,
                Some(encoding),
                CODE_INVALID_ARGUMENT,
                "error reading request body".into(),
            ));
        }
    };
    if !gzip {
        return within_budget(state, encoding, raw).map_err(|r| *r);
    }
    let mut out = Vec::new();
    let mut decoder = std::io::Read::take(flate2::read::GzDecoder::new(&raw[..]), limit as u64 + 1);
    if let Err(e) = std::io::Read::read_to_end(&mut decoder, &mut out) {
        return Err(refuse(
            RefuseReason::Malformed,
            StatusCode::BAD_REQUEST,
            Some(encoding),
            CODE_INVALID_ARGUMENT,
            format!("invalid gzip body: {e}"),
        ));
    }
    if out.len() > limit {
        return Err(too_large("decompressed body"));
    }
    within_budget(state, encoding, Bytes::from(out)).map_err(|r| *r)
}

/// Refuses (413) a body that would decode into more allocations than the budget of
/// [`crate::receiver::budget`] allows.
fn within_budget(
    state: &AgentState,
    encoding: Encoding,
    body: Bytes,
) -> Result<(Encoding, Bytes), Box<Response>> {
    let max = crate::receiver::budget::max_nodes(state.config().receiver.max_body_bytes);
    let nodes = crate::receiver::budget::estimate_nodes(&body, encoding == Encoding::Json, max);
    if nodes > max {
        state.telemetry.refuse(RefuseReason::TooLarge);
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some(encoding),
            CODE_RESOURCE_EXHAUSTED,
            format!(
                "body decodes into more than {max} elements (receiver.max_body_bytes / {})",
                crate::receiver::budget::BYTES_PER_NODE
            ),
        )));
    }
    Ok((encoding, body))
}

/// Decodes `bytes` as `T` in `encoding`; on failure counts and returns a 400 response.
fn decode<T: Message + Default + serde::de::DeserializeOwned>(
    state: &AgentState,
    encoding: Encoding,
    bytes: &[u8],
) -> Result<T, Box<Response>> {
    let result = match encoding {
        Encoding::Protobuf => T::decode(bytes).map_err(|e| e.to_string()),
        Encoding::Json => serde_json::from_slice::<T>(bytes).map_err(|e| e.to_string()),
    };
    result.map_err(|msg| {
        state.telemetry.refuse(RefuseReason::Malformed);
        Box::new(error(
            StatusCode::BAD_REQUEST,
            Some(encoding),
            CODE_INVALID_ARGUMENT,
            format!("malformed OTLP request: {msg}"),
        ))
    })
}

async fn metrics(State(state): State<Arc<AgentState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (encoding, bytes) = match read_request(&state, &parts.headers, body).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    // The common protobuf export is read without building prost's owned request.
    let fast = match encoding {
        Encoding::Protobuf => state.ingest_metrics_protobuf(&bytes),
        Encoding::Json => None,
    };
    let result = match fast {
        Some(r) => r,
        None => match decode::<ExportMetricsServiceRequest>(&state, encoding, &bytes) {
            Ok(req) => state.ingest_metrics(&req),
            Err(resp) => return *resp,
        },
    };
    match result {
        Ok(_) => success(encoding, &ExportMetricsServiceResponse::default()),
        Err(e) => error(
            StatusCode::TOO_MANY_REQUESTS,
            Some(encoding),
            CODE_RESOURCE_EXHAUSTED,
            e.to_string(),
        ),
    }
}

async fn traces(State(state): State<Arc<AgentState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (encoding, bytes) = match read_request(&state, &parts.headers, body).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    match decode::<ExportTraceServiceRequest>(&state, encoding, &bytes) {
        Ok(req) => {
            let n = count_spans(&req);
            state
                .telemetry
                .spans_received
                .fetch_add(n, Ordering::Relaxed);
            state.export.add_traces(req, n);
            success(encoding, &ExportTraceServiceResponse::default())
        }
        Err(resp) => *resp,
    }
}

async fn logs(State(state): State<Arc<AgentState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (encoding, bytes) = match read_request(&state, &parts.headers, body).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    match decode::<ExportLogsServiceRequest>(&state, encoding, &bytes) {
        Ok(req) => {
            let n = count_log_records(&req);
            state
                .telemetry
                .log_records_received
                .fetch_add(n, Ordering::Relaxed);
            state.stalls.ingest(&req);
            state.export.add_logs(req, n);
            success(encoding, &ExportLogsServiceResponse::default())
        }
        Err(resp) => *resp,
    }
}
