//! The decode-amplification budget of [`crate::receiver::budget`] on the gRPC receiver.
//!
//! tonic hands a message straight to prost, so a small message of empty nested messages
//! would decode into far more memory than its bytes (see the budget module). [`GrpcBudget`]
//! gathers the request body (at most `receiver.max_body_bytes` plus framing, within
//! [`crate::deadline::BODY_TIMEOUT`]), inflates gzip messages into a bounded buffer for the
//! count, and refuses a message over the budget with `RESOURCE_EXHAUSTED`, counted as
//! `requests_refused_total{reason="too_large"}`, exactly like the HTTP receiver's 413. A body
//! over the cap is answered `OUT_OF_RANGE` and one not received in time `CANCELLED`
//! ("Timeout expired"), which [`crate::receiver::grpc::CountRefusals`] counts.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{Request, Response};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use tonic::Status;
use tonic::body::Body;

use crate::receiver::budget::{BYTES_PER_NODE, estimate_nodes, max_nodes};
use crate::state::{AgentState, RefuseReason};

/// gRPC message framing: a compressed flag and a 4-byte length.
const FRAME_HEADER: usize = 5;

/// Tower layer applying the decode budget to every gRPC request.
#[derive(Debug, Clone)]
pub(crate) struct GrpcBudget {
    state: Arc<AgentState>,
}

impl GrpcBudget {
    /// A layer checking against `state`'s `receiver.max_body_bytes` and counting there.
    pub(crate) fn new(state: Arc<AgentState>) -> Self {
        GrpcBudget { state }
    }
}

impl<S> tower::Layer<S> for GrpcBudget {
    type Service = GrpcBudgetService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcBudgetService {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service built by [`GrpcBudget`].
#[derive(Debug, Clone)]
pub(crate) struct GrpcBudgetService<S> {
    inner: S,
    state: Arc<AgentState>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> tower::Service<Request<Body>> for GrpcBudgetService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this request (the usual tower pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let gzip = parts
                .headers
                .get("grpc-encoding")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
            let bytes = match gather(&state, body).await {
                Ok(b) => b,
                Err(status) => return Ok(status.into_http()),
            };
            if let Err(max) = within_budget(&bytes, gzip, state.config().receiver.max_body_bytes) {
                state.telemetry.refuse(RefuseReason::TooLarge);
                let message = format!(
                    "message decodes into more than {max} elements (receiver.max_body_bytes / {BYTES_PER_NODE})"
                );
                return Ok(Status::resource_exhausted(message).into_http());
            }
            inner
                .call(Request::from_parts(parts, Body::new(Full::new(bytes))))
                .await
        })
    }
}

/// Reads the whole request body within the cap and the body timeout.
async fn gather(state: &AgentState, body: Body) -> Result<Bytes, Status> {
    let limit = state.config().receiver.max_body_bytes;
    let collect = Limited::new(body, limit.saturating_add(FRAME_HEADER)).collect();
    match tokio::time::timeout(crate::deadline::BODY_TIMEOUT, collect).await {
        Err(_) => Err(Status::cancelled("Timeout expired")),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(Status::out_of_range(
            format!("message exceeds receiver.max_body_bytes = {limit}"),
        )),
        Ok(Err(e)) => Err(Status::cancelled(format!("error reading request: {e}"))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// Checks every framed message of `body` against the budget; `Err` carries the budget.
/// Framing errors and gzip messages that inflate past the cap pass: tonic refuses them
/// itself (and [`crate::receiver::grpc::CountRefusals`] counts them).
fn within_budget(body: &[u8], gzip: bool, limit: usize) -> Result<(), u64> {
    let max = max_nodes(limit);
    let mut rest = body;
    while rest.len() >= FRAME_HEADER {
        let compressed = rest[0] == 1;
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(msg) = rest.get(FRAME_HEADER..FRAME_HEADER.saturating_add(len)) else {
            return Ok(());
        };
        let nodes = if compressed && gzip {
            let mut out = Vec::new();
            let mut dec = std::io::Read::take(flate2::read::GzDecoder::new(msg), limit as u64 + 1);
            if std::io::Read::read_to_end(&mut dec, &mut out).is_err() || out.len() > limit {
                return Ok(());
            }
            estimate_nodes(&out, false, max)
        } else {
            estimate_nodes(msg, false, max)
        };
        if nodes > max {
            return Err(max);
        }
        rest = &rest[FRAME_HEADER + len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(compressed: bool, msg: &[u8]) -> Vec<u8> {
        let mut f = vec![u8::from(compressed)];
        f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        f.extend_from_slice(msg);
        f
    }

    #[test]
    fn empty_messages_over_the_budget_are_refused_plain_and_gzip() {
        let limit = 64 * 1024;
        let max = max_nodes(limit) as usize;
        let dense: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], max + 1)
            .flatten()
            .collect();
        assert_eq!(
            within_budget(&frame(false, &dense), false, limit),
            Err(max as u64)
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &dense).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() < dense.len() / 10);
        assert_eq!(
            within_budget(&frame(true, &gz), true, limit),
            Err(max as u64)
        );
        let small: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], max / 2)
            .flatten()
            .collect();
        assert_eq!(within_budget(&frame(false, &small), false, limit), Ok(()));
        assert_eq!(
            within_budget(&[0, 0, 0, 0xff, 0xff, 1], false, limit),
            Ok(())
        );
    }
}
