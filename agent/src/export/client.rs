//! Upstream OTLP clients: gRPC (tonic) and HTTP protobuf (reqwest).

use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

use super::Payload;
use crate::config::{ExportProtocol, ExporterConfig};

/// A failed send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct SendError {
    /// Whether the OTLP spec allows a retry.
    pub retryable: bool,
    /// What happened.
    pub message: String,
}

/// The exporter could not be created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
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
pub(crate) enum Client {
    /// OTLP/gRPC: the channel, headers as metadata, gzip.
    Grpc(Channel, Vec<(String, String)>, bool),
    /// OTLP/HTTP protobuf: client (headers built in), base URL, gzip.
    Http(reqwest::Client, String, bool),
}

/// A gRPC request carrying `exporter.headers` as metadata (names validated by the config).
fn with_headers<T>(message: T, headers: &[(String, String)]) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(k.as_bytes()),
            tonic::metadata::MetadataValue::try_from(v.as_str()),
        ) {
            req.metadata_mut().insert(k, v);
        }
    }
    req
}

/// Gzip-compresses an HTTP body (writing into a Vec cannot fail).
fn gzip_body(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = std::io::Write::write_all(&mut enc, body);
    enc.finish().unwrap_or_default()
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
    pub(crate) fn new(config: &ExporterConfig) -> Result<Client, ClientError> {
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
                    config.headers.clone(),
                    config.gzip,
                ))
            }
            ExportProtocol::HttpProtobuf => {
                let mut headers = reqwest::header::HeaderMap::new();
                for (k, v) in &config.headers {
                    // Validated by the config; an invalid pair cannot reach here.
                    if let (Ok(k), Ok(v)) = (
                        reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                        reqwest::header::HeaderValue::from_str(v),
                    ) {
                        headers.insert(k, v);
                    }
                }
                let client = reqwest::Client::builder()
                    .timeout(config.timeout)
                    .default_headers(headers)
                    .build()
                    .map_err(|e| ClientError::Http(e.to_string()))?;
                Ok(Client::Http(client, config.endpoint.clone(), config.gzip))
            }
        }
    }

    /// Sends one request, bounded by `timeout`.
    pub(crate) async fn send(
        &mut self,
        payload: &Payload,
        timeout: Duration,
    ) -> Result<(), SendError> {
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
            Client::Grpc(channel, headers, gzip) => {
                let ch = channel.clone();
                let result = match payload {
                    Payload::Metrics(r) => {
                        let mut c = MetricsServiceClient::new(ch);
                        if *gzip {
                            c = c.send_compressed(CompressionEncoding::Gzip);
                        }
                        c.export(with_headers(r.clone(), headers)).await.map(|_| ())
                    }
                    Payload::Traces(r) => {
                        let mut c = TraceServiceClient::new(ch);
                        if *gzip {
                            c = c.send_compressed(CompressionEncoding::Gzip);
                        }
                        c.export(with_headers(r.clone(), headers)).await.map(|_| ())
                    }
                    Payload::Logs(r) => {
                        let mut c = LogsServiceClient::new(ch);
                        if *gzip {
                            c = c.send_compressed(CompressionEncoding::Gzip);
                        }
                        c.export(with_headers(r.clone(), headers)).await.map(|_| ())
                    }
                };
                result.map_err(|s| SendError {
                    retryable: grpc_retryable(s.code()),
                    message: format!("gRPC {:?}: {}", s.code(), s.message()),
                })
            }
            Client::Http(client, base, gzip) => {
                let (path, body) = match payload {
                    Payload::Metrics(r) => ("/v1/metrics", r.encode_to_vec()),
                    Payload::Traces(r) => ("/v1/traces", r.encode_to_vec()),
                    Payload::Logs(r) => ("/v1/logs", r.encode_to_vec()),
                };
                let url = format!("{base}{path}");
                let mut post = client
                    .post(&url)
                    .header("content-type", "application/x-protobuf");
                let body = if *gzip {
                    post = post.header("content-encoding", "gzip");
                    gzip_body(&body)
                } else {
                    body
                };
                let resp = post.body(body).send().await.map_err(|e| SendError {
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
