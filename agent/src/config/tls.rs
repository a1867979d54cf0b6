//! The exporter's TLS material: `exporter.tls_ca_file`, `exporter.tls_cert_file` and
//! `exporter.tls_key_file`, read and parsed as PEM. [`super::Config::load`] and
//! [`super::ConfigBuilder::build`] load it so a missing or invalid file is a startup error
//! naming its key; the exporter loads it again to build its clients.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{ConfigError, ExporterConfig};

/// A client certificate chain and its private key (mTLS).
#[derive(Debug)]
pub(crate) struct ClientIdentity {
    /// The chain, leaf first.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// The chain as PEM text (tonic takes PEM).
    pub(crate) chain_pem: Vec<u8>,
    /// The private key.
    pub(crate) key: PrivateKeyDer<'static>,
    /// The key as PEM text.
    pub(crate) key_pem: Vec<u8>,
}

/// The parsed TLS settings of `[exporter]`.
#[derive(Debug, Default)]
pub(crate) struct TlsMaterial {
    /// CA certificates from `exporter.tls_ca_file` (empty: the system roots) and that file's
    /// PEM text.
    pub(crate) ca: Option<(Vec<CertificateDer<'static>>, Vec<u8>)>,
    /// The client identity from `exporter.tls_cert_file` + `exporter.tls_key_file`.
    pub(crate) identity: Option<ClientIdentity>,
}

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.into(),
        message,
    }
}

/// Reads `path` (the value of `key`).
fn read(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// Every certificate in the PEM file of `key`; at least one.
fn certificates(
    key: &str,
    path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, Vec<u8>), ConfigError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, format!("{}: invalid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!("{}: no PEM certificate in the file", path.display()),
        ));
    }
    Ok((certs, pem))
}

impl TlsMaterial {
    /// Checks that the cert and key come together and that TLS settings go with an
    /// `https://` endpoint (no file is read).
    pub(crate) fn check(config: &ExporterConfig) -> Result<(), ConfigError> {
        match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(_), None) => Err(invalid(
                "exporter.tls_key_file",
                "must be set with exporter.tls_cert_file".into(),
            )),
            (None, Some(_)) => Err(invalid(
                "exporter.tls_cert_file",
                "must be set with exporter.tls_key_file".into(),
            )),
            _ => {
                let set = [
                    ("exporter.tls_ca_file", &config.tls_ca_file),
                    ("exporter.tls_cert_file", &config.tls_cert_file),
                ];
                match set.iter().find(|(_, v)| v.is_some()) {
                    Some((name, _)) if config.endpoint.starts_with("http://") => Err(invalid(
                        name,
                        "needs an https:// exporter.endpoint (it is http://)".into(),
                    )),
                    _ => Ok(()),
                }
            }
        }
    }

    /// [`TlsMaterial::check`], then reads and parses the files named by `config`.
    pub(crate) fn load(config: &ExporterConfig) -> Result<TlsMaterial, ConfigError> {
        Self::check(config)?;
        let (ca, cert, key) = (
            &config.tls_ca_file,
            &config.tls_cert_file,
            &config.tls_key_file,
        );
        let ca = match ca {
            Some(path) => Some(certificates("exporter.tls_ca_file", path)?),
            None => None,
        };
        let identity = match (cert, key) {
            (Some(cert), Some(key_path)) => {
                let (chain, chain_pem) = certificates("exporter.tls_cert_file", cert)?;
                let key_pem = read("exporter.tls_key_file", key_path)?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    invalid(
                        "exporter.tls_key_file",
                        format!("{}: no valid PEM private key: {e}", key_path.display()),
                    )
                })?;
                Some(ClientIdentity {
                    chain,
                    chain_pem,
                    key,
                    key_pem,
                })
            }
            _ => None,
        };
        Ok(TlsMaterial { ca, identity })
    }
}
