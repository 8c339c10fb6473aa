//! TLS for the HTTP API (`api.tls`): a rustls server config with the ring
//! provider (the one async-nats already links), TLS 1.2 and 1.3, ALPN
//! http/1.1 only (the server speaks HTTP/1.1), and optional client
//! certificates (`client_ca_file`: mutual TLS).
//!
//! The config is built once per load (start, SIGHUP) and handed to each
//! connection as an `Arc`: a reload swaps it, so new connections get the
//! new certificate while open ones keep theirs.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::ApiTlsConfig;

/// A problem with one of the files: the config key it concerns
/// (`cert_file`, `key_file`, `client_ca_file`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub key: &'static str,
    pub message: String,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError {
        key,
        message: format!("cannot read {}: {e}", path.display()),
    })
}

fn certs(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError {
            key,
            message: format!("{}: not a PEM certificate file: {e}", path.display()),
        })?;
    if certs.is_empty() {
        return Err(TlsError {
            key,
            message: format!("{}: holds no PEM certificate", path.display()),
        });
    }
    Ok(certs)
}

/// Builds the server config from the files `tls` names.
pub fn server_config(tls: &ApiTlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certs(
        "cert_file",
        &tls.cert_file,
        &read("cert_file", &tls.cert_file)?,
    )?;
    let key_pem = read("key_file", &tls.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError {
        key: "key_file",
        message: format!(
            "{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}",
            tls.key_file.display()
        ),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError {
            key: "cert_file",
            message: format!("cannot set up TLS: {e}"),
        })?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs("client_ca_file", ca, &read("client_ca_file", ca)?)? {
                roots.add(c).map_err(|e| TlsError {
                    key: "client_ca_file",
                    message: format!("{}: unusable CA certificate: {e}", ca.display()),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError {
                    key: "client_ca_file",
                    message: format!("{}: {e}", ca.display()),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError {
        key: "key_file",
        message: format!(
            "{} does not go with {}: {e}",
            tls.key_file.display(),
            tls.cert_file.display()
        ),
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
