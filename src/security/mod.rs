//! The HTTP API's security material: bearer tokens (`api.tokens_file`)
//! and the TLS identity (`api.tls`), loaded once per config load (start,
//! SIGHUP) by config validation and handed as is to the server. It
//! depends on nothing of the daemon's: config validation uses it, the
//! HTTP layer enforces it.

pub mod expiry;
pub mod tls;
pub mod tokens;

use std::path::Path;

pub use tls::TlsFiles;
pub use tokens::{Access, Tokens};

/// A security file that cannot be used: the key that names it, under
/// `api.` (`tokens_file`, `tls.cert_file`, ...), and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("api.{key}: {message}")]
pub struct SecurityError {
    pub key: &'static str,
    pub message: String,
}

/// What the API enforces, loaded from the files the config names; the
/// daemon holds one and swaps it on reload.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// None: no `api.tokens_file`, every request is let through.
    pub tokens: Option<Tokens>,
    /// None: plain HTTP.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// When the certificates of every TLS file of the config (the API's,
    /// nats-server's) expire, as read with them at this load.
    pub certificates: Vec<CertificateFile>,
}

/// One TLS file of the config that holds certificates, and when the first
/// of them expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFile {
    /// The config key that names it (`api.tls.cert_file`,
    /// `nats.tls.ca_file`, ...).
    pub key: String,
    pub path: std::path::PathBuf,
    /// The earliest notAfter of its certificates, in Unix seconds.
    pub not_after: i64,
}

impl CertificateFile {
    /// Reads `path` (named by `key`): None, with a warning in the log,
    /// when it holds no certificate whose expiry can be read; the daemon
    /// or nats-server says what else is wrong with it.
    pub fn read(key: String, path: &Path) -> Option<CertificateFile> {
        let found = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|pem| expiry::earliest_not_after(&pem));
        match found {
            Ok(not_after) => Some(CertificateFile {
                key,
                path: path.to_path_buf(),
                not_after,
            }),
            Err(e) => {
                tracing::warn!(key, path = %path.display(), "cannot tell when the certificates of {key} ({}) expire: {e}", path.display());
                None
            }
        }
    }
}

impl Security {
    /// Reads the tokens file and the TLS files; the error names the key
    /// (under `api.`) of the file that is wrong.
    pub fn load(
        tokens_file: Option<&Path>,
        tls: Option<TlsFiles<'_>>,
    ) -> Result<Security, SecurityError> {
        let tokens = match tokens_file {
            Some(p) => Some(Tokens::load(p).map_err(|message| SecurityError {
                key: "tokens_file",
                message,
            })?),
            None => None,
        };
        let tls = match tls {
            Some(t) => Some(tls::server_config(t).map_err(|e| SecurityError {
                key: match e.key {
                    "key_file" => "tls.key_file",
                    "client_ca_file" => "tls.client_ca_file",
                    _ => "tls.cert_file",
                },
                message: e.message,
            })?),
            None => None,
        };
        Ok(Security {
            tokens,
            tls,
            certificates: Vec::new(),
        })
    }

    /// One line for the log: what is enforced, never a token. None when
    /// nothing is (no tokens file, no TLS).
    pub fn describe(&self) -> Option<String> {
        let tokens = self
            .tokens
            .as_ref()
            .map(|t| format!("{} API token(s)", t.len()));
        let tls = self.tls.as_ref().map(|_| "TLS certificate".to_string());
        let parts: Vec<String> = tokens.into_iter().chain(tls).collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_counts_tokens_and_names_no_secret() {
        assert_eq!(Security::default().describe(), None);
        let tokens = Tokens::parse("wwwwwwwwwwwwwwwwwwww\nrrrrrrrrrrrrrrrrrrrr read\n").unwrap();
        let s = Security {
            tokens: Some(tokens),
            ..Security::default()
        };
        assert_eq!(s.describe().as_deref(), Some("2 API token(s)"));
    }

    #[test]
    fn a_bad_file_is_named_by_its_key_under_api() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("missing");
        let e = Security::load(Some(&missing), None).unwrap_err();
        assert_eq!(e.key, "tokens_file");
        assert!(
            e.to_string().starts_with("api.tokens_file: cannot read "),
            "{e}"
        );
        let e = Security::load(
            None,
            Some(TlsFiles {
                cert_file: &missing,
                key_file: &missing,
                client_ca_file: None,
            }),
        )
        .unwrap_err();
        assert_eq!(e.key, "tls.cert_file");
    }
}
