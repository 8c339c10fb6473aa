//! Certificates made in the test: a private CA, a server certificate for
//! localhost / 127.0.0.1 (usable as a client certificate too, as a node's
//! own certificate is on routes and in mutual TLS), and client certificates.
//! Written as PEM files into a directory the test owns.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// PEM files of one test PKI.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    /// Server certificate and key (SANs localhost, 127.0.0.1; server and
    /// client auth).
    pub cert: PathBuf,
    pub key: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// notAfter of the certificates issued from now on; rcgen's default
    /// (far off) when None.
    until: Option<Until>,
}

/// When a certificate expires.
#[derive(Clone, Copy)]
enum Until {
    /// At the start of this day (year, month, day), UTC.
    Day(i32, u8, u8),
    /// This long after it is issued (negative: before, as an expired one).
    In(i64),
}

impl Pki {
    /// A new CA and server certificate in `dir` (created if missing).
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "marketprism test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, issuer.pem()).unwrap();
        let mut pki = Pki {
            dir: dir.to_path_buf(),
            ca,
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
            issuer,
            until: None,
        };
        pki.issue_server("server");
        pki
    }

    /// (Re)issues the server certificate and key under the fixed paths, with
    /// `cn` as its common name (a test can tell a rotated one apart by it).
    pub fn issue_server(&mut self, cn: &str) {
        let (cert, key) = self.issue(
            cn,
            &["localhost", "127.0.0.1"],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        std::fs::write(&self.cert, cert).unwrap();
        std::fs::write(&self.key, key).unwrap();
    }

    /// (Re)issues the server certificate as [`Pki::issue_server`] does,
    /// expiring at the start of the day (year, month, day), UTC.
    pub fn issue_server_until(&mut self, cn: &str, until: (i32, u8, u8)) {
        self.until = Some(Until::Day(until.0, until.1, until.2));
        self.issue_server(cn);
        self.until = None;
    }

    /// (Re)issues the server certificate as [`Pki::issue_server`] does,
    /// expiring `secs` seconds from now (in the past when negative).
    pub fn issue_server_expiring_in(&mut self, cn: &str, secs: i64) {
        self.until = Some(Until::In(secs));
        self.issue_server(cn);
        self.until = None;
    }

    /// A client certificate and key for `cn`: (cert path, key path).
    pub fn client(&self, cn: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(cn, &[], &[ExtendedKeyUsagePurpose::ClientAuth]);
        let c = self.dir.join(format!("{cn}.pem"));
        let k = self.dir.join(format!("{cn}-key.pem"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }

    fn issue(&self, cn: &str, sans: &[&str], eku: &[ExtendedKeyUsagePurpose]) -> (String, String) {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = eku.to_vec();
        match self.until {
            Some(Until::Day(y, m, d)) => p.not_after = rcgen::date_time_ymd(y, m, d),
            Some(Until::In(secs)) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                let at = std::time::Duration::from_secs((now + secs) as u64);
                p.not_after = rcgen::date_time_ymd(1970, 1, 1) + at;
            }
            None => {}
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}
