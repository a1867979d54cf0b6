//! Upstream OTLP clients: gRPC (tonic) and HTTP protobuf (hyper-util), each with rustls for
//! `https://` endpoints.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::Payload;
use crate::config::{ExportProtocol, ExporterConfig, TlsMaterial};

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
    /// The TLS files or settings are unusable (the message names the key).
    #[error("{0}")]
    Tls(String),
}

/// The HTTP exporter's connection pool (plain or TLS by the URL's scheme).
type HttpClient = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The most of an upstream HTTP response body that is read (to reuse the connection).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A connected (lazily) upstream client.
#[derive(Debug)]
pub(crate) enum Client {
    /// OTLP/gRPC: the channel, headers as metadata, gzip.
    Grpc(Channel, Vec<(String, String)>, bool),
    /// OTLP/HTTP protobuf: client, base URL, headers, gzip.
    Http(Box<HttpClient>, String, Vec<(String, String)>, bool),
}

/// `e` and its sources, `: `-separated (hyper's own message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
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
        let tls = if config.endpoint.starts_with("https://") {
            Some(TlsMaterial::load(config).map_err(|e| ClientError::Tls(e.to_string()))?)
        } else {
            None
        };
        match config.protocol {
            ExportProtocol::Grpc => {
                let endpoint_error = |e: &dyn std::fmt::Display| ClientError::Endpoint {
                    endpoint: config.endpoint.clone(),
                    message: e.to_string(),
                };
                let mut endpoint = Channel::from_shared(config.endpoint.clone())
                    .map_err(|e| endpoint_error(&e))?;
                if let Some(material) = tls {
                    endpoint = endpoint
                        .tls_config(super::tls::grpc(&material))
                        .map_err(|e| endpoint_error(&e))?;
                }
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
                let tls_config = super::tls::http(tls.as_ref()).map_err(ClientError::Tls)?;
                let mut tcp = HttpConnector::new();
                tcp.set_connect_timeout(Some(config.timeout));
                tcp.enforce_http(false);
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls_config)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(tcp);
                let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                    .build(connector);
                Ok(Client::Http(
                    Box::new(client),
                    config.endpoint.clone(),
                    config.headers.clone(),
                    config.gzip,
                ))
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
            Client::Http(client, base, headers, gzip) => {
                let (path, body) = match payload {
                    Payload::Metrics(r) => ("/v1/metrics", r.encode_to_vec()),
                    Payload::Traces(r) => ("/v1/traces", r.encode_to_vec()),
                    Payload::Logs(r) => ("/v1/logs", r.encode_to_vec()),
                };
                let url = format!("{base}{path}");
                post(client, &url, headers, body, *gzip).await
            }
        }
    }
}

/// POSTs one OTLP/HTTP protobuf body to `url`.
async fn post(
    client: &HttpClient,
    url: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
    gzip: bool,
) -> Result<(), SendError> {
    let mut req = http::Request::post(url).header("content-type", "application/x-protobuf");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let body = if gzip {
        req = req.header("content-encoding", "gzip");
        gzip_body(&body)
    } else {
        body
    };
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| SendError {
            retryable: false,
            message: format!("POST {url}: {e}"),
        })?;
    let resp = client.request(req).await.map_err(|e| SendError {
        retryable: true,
        message: format!("POST {url}: {}", error_chain(&e)),
    })?;
    let status = resp.status();
    // Reading the (small) answer lets the connection serve the next request.
    let _ = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await;
    if status.is_success() {
        Ok(())
    } else {
        Err(SendError {
            retryable: matches!(status.as_u16(), 429 | 502 | 503 | 504),
            message: format!("POST {url}: HTTP {status}"),
        })
    }
}
