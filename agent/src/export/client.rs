//! Upstream OTLP clients: gRPC (tonic) and HTTP protobuf (reqwest).

use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

use super::Payload;
use crate::config::{ExportProtocol, ExporterConfig};

/// A failed send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// Whether the OTLP spec allows a retry.
    pub retryable: bool,
    /// What happened.
    pub message: String,
}

/// The exporter could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `exporter.endpoint` is not a valid URI for gRPC.
    #[error("exporter.endpoint: invalid gRPC endpoint {endpoint:?}: {message}")]
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// Parser message.
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build HTTP client: {0}")]
    Http(String),
}

/// A connected (lazily) upstream client.
#[derive(Debug)]
pub enum Client {
    /// OTLP/gRPC.
    Grpc(Channel),
    /// OTLP/HTTP protobuf: client and base URL.
    Http(reqwest::Client, String),
}

fn grpc_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
            | Code::Unknown
    )
}

impl Client {
    /// Builds the client for `config` (no connection is made yet).
    pub fn new(config: &ExporterConfig) -> Result<Client, ClientError> {
        match config.protocol {
            ExportProtocol::Grpc => {
                let endpoint = Channel::from_shared(config.endpoint.clone()).map_err(|e| {
                    ClientError::Endpoint {
                        endpoint: config.endpoint.clone(),
                        message: e.to_string(),
                    }
                })?;
                Ok(Client::Grpc(
                    endpoint
                        .connect_timeout(config.timeout)
                        .timeout(config.timeout)
                        .connect_lazy(),
                ))
            }
            ExportProtocol::HttpProtobuf => {
                let client = reqwest::Client::builder()
                    .timeout(config.timeout)
                    .build()
                    .map_err(|e| ClientError::Http(e.to_string()))?;
                Ok(Client::Http(client, config.endpoint.clone()))
            }
        }
    }

    /// Sends one request, bounded by `timeout`.
    pub async fn send(&mut self, payload: &Payload, timeout: Duration) -> Result<(), SendError> {
        match tokio::time::timeout(timeout, self.send_inner(payload)).await {
            Ok(r) => r,
            Err(_) => Err(SendError {
                retryable: true,
                message: format!("timed out after {timeout:?}"),
            }),
        }
    }

    async fn send_inner(&mut self, payload: &Payload) -> Result<(), SendError> {
        match self {
            Client::Grpc(channel) => {
                let result = match payload {
                    Payload::Metrics(r) => MetricsServiceClient::new(channel.clone())
                        .export(r.clone())
                        .await
                        .map(|_| ()),
                    Payload::Traces(r) => TraceServiceClient::new(channel.clone())
                        .export(r.clone())
                        .await
                        .map(|_| ()),
                    Payload::Logs(r) => LogsServiceClient::new(channel.clone())
                        .export(r.clone())
                        .await
                        .map(|_| ()),
                };
                result.map_err(|s| SendError {
                    retryable: grpc_retryable(s.code()),
                    message: format!("gRPC {:?}: {}", s.code(), s.message()),
                })
            }
            Client::Http(client, base) => {
                let (path, body) = match payload {
                    Payload::Metrics(r) => ("/v1/metrics", r.encode_to_vec()),
                    Payload::Traces(r) => ("/v1/traces", r.encode_to_vec()),
                    Payload::Logs(r) => ("/v1/logs", r.encode_to_vec()),
                };
                let url = format!("{base}{path}");
                let resp = client
                    .post(&url)
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| SendError {
                        retryable: true,
                        message: format!("POST {url}: {e}"),
                    })?;
                let status = resp.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(SendError {
                        retryable: matches!(status.as_u16(), 429 | 502 | 503 | 504),
                        message: format!("POST {url}: HTTP {status}"),
                    })
                }
            }
        }
    }
}
