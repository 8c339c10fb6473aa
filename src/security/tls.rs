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

/// The files of the API's TLS identity, as `api.tls` names them.
#[derive(Debug, Clone, Copy)]
pub struct TlsFiles<'a> {
    /// Certificate chain, leaf first.
    pub cert_file: &'a Path,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: &'a Path,
    /// Require client certificates signed by these CAs (mutual TLS).
    pub client_ca_file: Option<&'a Path>,
}

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
pub fn server_config(tls: TlsFiles<'_>) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certs(
        "cert_file",
        tls.cert_file,
        &read("cert_file", tls.cert_file)?,
    )?;
    let key_pem = read("key_file", tls.key_file)?;
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
    let builder = match tls.client_ca_file {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};
    use std::path::PathBuf;

    /// A self-signed certificate and its key, written into `dir`.
    fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let c = dir.join(format!("{name}.pem"));
        let k = dir.join(format!("{name}-key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn files<'a>((cert_file, key_file): &'a (PathBuf, PathBuf)) -> TlsFiles<'a> {
        TlsFiles {
            cert_file,
            key_file,
            client_ca_file: None,
        }
    }

    #[test]
    fn a_good_pair_gives_http11_only_and_client_cas_turn_on_client_auth() {
        let dir = tempfile::tempdir().unwrap();
        let pair = self_signed(dir.path(), "a");
        let tls = files(&pair);
        let c = server_config(tls).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let mutual = TlsFiles {
            client_ca_file: Some(tls.cert_file),
            ..tls
        };
        assert!(server_config(mutual).is_ok());
    }

    #[test]
    fn each_bad_file_is_named_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let a_pair = self_signed(dir.path(), "a");
        let b_pair = self_signed(dir.path(), "b");
        let (a, b) = (files(&a_pair), files(&b_pair));
        let key_of = |t: TlsFiles| server_config(t).unwrap_err().key;
        let missing = dir.path().join("missing.pem");
        assert_eq!(
            key_of(TlsFiles {
                cert_file: &missing,
                ..a
            }),
            "cert_file"
        );
        assert_eq!(
            key_of(TlsFiles {
                key_file: &missing,
                ..a
            }),
            "key_file"
        );
        assert_eq!(
            key_of(TlsFiles {
                key_file: a.cert_file,
                ..a
            }),
            "key_file"
        );
        assert_eq!(
            key_of(TlsFiles {
                cert_file: a.key_file,
                ..a
            }),
            "cert_file"
        );
        assert_eq!(
            key_of(TlsFiles {
                client_ca_file: Some(&missing),
                ..a
            }),
            "client_ca_file"
        );
        // b's key with a's certificate.
        let e = server_config(TlsFiles {
            key_file: b.key_file,
            ..a
        })
        .unwrap_err();
        assert_eq!(e.key, "key_file", "{}", e.message);
    }
}
