//! TLS for `https://` OTLP endpoints, on both transports: rustls on the ring provider, trusting
//! the system roots or the CA file of `OTEL_EXPORTER_OTLP_CERTIFICATE`, with the optional client
//! identity of `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` / `_CLIENT_KEY` (mTLS). Files are read and
//! parsed at start, so a missing or invalid one is a [`StartError`] naming its variable.

use std::sync::Arc;

#[cfg(feature = "grpc")]
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;
use crate::error::StartError;

/// The TLS settings of both transports, built once from the files.
#[derive(Debug)]
pub(crate) struct TlsMaterial {
    #[cfg(feature = "grpc")]
    grpc: ClientTlsConfig,
    #[cfg(feature = "http-proto")]
    http: rustls::ClientConfig,
}

/// A client certificate chain (leaf first) and its key.
#[derive(Debug)]
struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    #[cfg(feature = "grpc")]
    chain_pem: Vec<u8>,
    key: PrivateKeyDer<'static>,
    #[cfg(feature = "grpc")]
    key_pem: Vec<u8>,
}

fn invalid(var: &'static str, path: &str, reason: String) -> StartError {
    StartError::InvalidEnv {
        var,
        value: path.to_owned(),
        reason,
    }
}

fn read(var: &'static str, path: &str) -> Result<Vec<u8>, StartError> {
    std::fs::read(path).map_err(|e| invalid(var, path, format!("cannot be read: {e}")))
}

/// Every certificate in the PEM file; at least one.
fn certificates(
    var: &'static str,
    path: &str,
) -> Result<(Vec<CertificateDer<'static>>, Vec<u8>), StartError> {
    let pem = read(var, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(var, path, format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(var, path, "holds no PEM certificate".into()));
    }
    Ok((certs, pem))
}

impl TlsMaterial {
    /// Reads and parses the files named in `files`.
    pub(crate) fn load(files: &TlsFiles) -> Result<TlsMaterial, StartError> {
        let ca = match &files.ca {
            Some((var, path)) => Some(certificates(var, path)?),
            None => None,
        };
        let identity = match (&files.cert, &files.key) {
            (Some((cert_var, cert)), Some((key_var, key_path))) => {
                let (chain, chain_pem) = certificates(cert_var, cert)?;
                let key_pem = read(key_var, key_path)?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    invalid(
                        key_var,
                        key_path,
                        format!("holds no valid PEM private key: {e}"),
                    )
                })?;
                #[cfg(not(feature = "grpc"))]
                let _ = (chain_pem, key_pem);
                Some(ClientIdentity {
                    chain,
                    #[cfg(feature = "grpc")]
                    chain_pem,
                    key,
                    #[cfg(feature = "grpc")]
                    key_pem,
                })
            }
            _ => None,
        };
        // Built on either transport: it checks that the CA is a CA and that the key fits.
        let http = http_config(
            files,
            ca.as_ref().map(|(certs, _)| certs),
            identity.as_ref(),
        )?;
        #[cfg(not(feature = "http-proto"))]
        let _ = http;
        Ok(TlsMaterial {
            #[cfg(feature = "grpc")]
            grpc: grpc_config(ca.as_ref().map(|(_, pem)| pem), identity.as_ref()),
            #[cfg(feature = "http-proto")]
            http,
        })
    }

    /// The tonic (gRPC) TLS settings.
    #[cfg(feature = "grpc")]
    pub(crate) fn grpc(&self) -> ClientTlsConfig {
        self.grpc.clone()
    }

    /// The rustls client configuration of the HTTP transport.
    #[cfg(feature = "http-proto")]
    pub(crate) fn http(&self) -> rustls::ClientConfig {
        self.http.clone()
    }
}

/// The tonic TLS settings: the CA file (else the system roots) and the client identity, if any.
#[cfg(feature = "grpc")]
fn grpc_config(ca_pem: Option<&Vec<u8>>, identity: Option<&ClientIdentity>) -> ClientTlsConfig {
    let mut tls = ClientTlsConfig::new();
    tls = match ca_pem {
        Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
        None => tls.with_native_roots(),
    };
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.chain_pem, &id.key_pem));
    }
    tls
}

/// The rustls client configuration: the CA file's certificates (else the system roots) and the
/// client identity, if any.
fn http_config(
    files: &TlsFiles,
    ca: Option<&Vec<CertificateDer<'static>>>,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, StartError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(certs) => {
            let (_, rejected) = roots.add_parsable_certificates(certs.iter().cloned());
            if let (true, Some((var, path))) = (rejected > 0, &files.ca) {
                return Err(invalid(
                    var,
                    path,
                    format!("holds {rejected} certificate(s) that are not valid CA certificates"),
                ));
            }
        }
        None => {
            // Unreadable entries of the system store are skipped, as every TLS client does.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let builder = config_builder()?.with_root_certificates(roots);
    match (identity, &files.cert) {
        (Some(id), Some((var, path))) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| invalid(var, path, format!("is not a usable client identity: {e}"))),
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// A rustls config builder on the ring provider, with no process-wide provider needed.
pub(crate) fn config_builder()
-> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, StartError> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Exporter(format!("TLS protocol versions: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(ca: Option<&str>, cert: Option<&str>, key: Option<&str>) -> TlsFiles {
        TlsFiles {
            ca: ca.map(|p| ("OTEL_EXPORTER_OTLP_CERTIFICATE", p.to_owned())),
            cert: cert.map(|p| ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", p.to_owned())),
            key: key.map(|p| ("OTEL_EXPORTER_OTLP_CLIENT_KEY", p.to_owned())),
        }
    }

    #[test]
    fn unusable_files_name_their_variable() {
        let dir = std::env::temp_dir().join(format!("loopwatch-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write junk");
        let junk = junk.display().to_string();
        let missing = dir.join("missing.pem").display().to_string();
        let cases = [
            (
                files(Some(&missing), None, None),
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ),
            (
                files(Some(&junk), None, None),
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ),
            (
                files(None, Some(&junk), Some(&junk)),
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            ),
        ];
        for (f, var) in cases {
            let err = TlsMaterial::load(&f)
                .expect_err("unusable file")
                .to_string();
            assert!(err.starts_with(var), "{f:?}: {err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_files_trust_the_system_roots() {
        TlsMaterial::load(&TlsFiles::default()).expect("nothing to read");
    }
}
