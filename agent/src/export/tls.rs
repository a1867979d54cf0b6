//! TLS for `https://` upstream endpoints: rustls on the ring provider for both transports,
//! trusting the system roots or `exporter.tls_ca_file`, with the optional mTLS identity.

use std::sync::Arc;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::TlsMaterial;

/// The tonic TLS settings for `material`.
pub(crate) fn grpc(material: &TlsMaterial) -> ClientTlsConfig {
    let mut tls = ClientTlsConfig::new();
    tls = match &material.ca {
        Some((_, pem)) => tls.ca_certificate(Certificate::from_pem(pem)),
        None => tls.with_native_roots(),
    };
    if let Some(id) = &material.identity {
        tls = tls.identity(Identity::from_pem(&id.chain_pem, &id.key_pem));
    }
    tls
}

/// The rustls client configuration for the HTTP exporter; the error says what failed.
/// `None` (an `http://` endpoint) trusts nothing: TLS is never used then.
pub(crate) fn http(material: Option<&TlsMaterial>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let Some(material) = material else {
        return Ok(config_builder()?
            .with_root_certificates(roots)
            .with_no_client_auth());
    };
    match &material.ca {
        Some((certs, _)) => {
            let (_, rejected) = roots.add_parsable_certificates(certs.iter().cloned());
            if rejected > 0 {
                return Err(format!(
                    "exporter.tls_ca_file: {rejected} certificate(s) are not valid CA certificates"
                ));
            }
        }
        None => {
            // Unreadable entries in the system store are skipped, as every TLS client does.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let builder = config_builder()?.with_root_certificates(roots);
    match &material.identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| format!("exporter.tls_cert_file / exporter.tls_key_file: {e}")),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// A rustls config builder on the ring provider.
fn config_builder()
-> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, String> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))
}
