//! API tokens (`api.tokens_file`, `api.tokens_for_reads`) and TLS for the
//! API (`api.tls`), against the real daemon over real HTTP(S).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::certs::Pki;
use common::{eventually, Daemon, ExitedWith, BIN};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const WRITE: &str = "w-0123456789abcdef-write-token";
const READ: &str = "r-0123456789abcdef-read-token";
const WRITE2: &str = "w2-fedcba9876543210-next-token";

fn tokens_file() -> String {
    format!("# operators\n{WRITE}\n\n{READ} read\n")
}

async fn messages(d: &Daemon, stream: &str, token: Option<&str>) -> u64 {
    let (code, s) = d
        .get_with(&format!("/api/v1/streams/{stream}"), token)
        .await;
    assert_eq!(code, 200, "{s}");
    s["messages"].as_u64().unwrap()
}

fn assert_refused(code: u16, body: &Value, want: u16, error: &str) {
    assert_eq!(code, want, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"]["code"], error, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mutations_need_a_write_token_reads_stay_open_and_no_token_leaks() {
    let d = Daemon::builder()
        // Relative: a credential name (LoadCredential=).
        .file("tokens", &tokens_file())
        .top("api:\n  tokens_file: tokens\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;

    // No token: 401 with a challenge, and nothing reaches the stream.
    let (code, headers, body) = d
        .publish_raw_with(
            json!({"subject": "market.auth.none", "message": {"x": 1}})
                .to_string()
                .into_bytes(),
            None,
        )
        .await;
    assert_refused(code, &body, 401, "unauthorized");
    assert_eq!(
        headers["www-authenticate"],
        "Bearer realm=\"marketprism-broker\""
    );
    let (code, body) = d
        .publish_with(
            "market.auth.none",
            json!({"x": 1}),
            Some("not-a-token-at-all-nope"),
        )
        .await;
    assert_refused(code, &body, 401, "unauthorized");
    assert_eq!(messages(&d, "MARKET_DATA", None).await, 0);

    // A read token reads but may not publish.
    let (code, body) = d
        .publish_with("market.auth.read", json!({"x": 2}), Some(READ))
        .await;
    assert_refused(code, &body, 403, "forbidden");
    assert_eq!(messages(&d, "MARKET_DATA", None).await, 0);
    let (code, _) = d.get_with("/api/v1/status", Some(READ)).await;
    assert_eq!(code, 200);
    // Batch and consumer endpoints are mutations too.
    let (code, _, body) = d
        .request(
            Some(READ),
            "POST",
            "/api/v1/publish/batch",
            &[("content-type", "application/json")],
            b"[]".to_vec(),
        )
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_refused(code, &body, 403, "forbidden");
    let (code, _, _) = d
        .request(
            None,
            "DELETE",
            "/api/v1/streams/MARKET_DATA/consumers/x",
            &[],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(code, 401);

    // A write token publishes.
    let (code, body) = d
        .publish_with("market.auth.write", json!({"x": 3}), Some(WRITE))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(messages(&d, "MARKET_DATA", None).await, 1);

    // Reads are open without tokens_for_reads.
    assert_eq!(d.get("/api/v1/status").await.0, 200);
    assert_eq!(d.get("/health").await.0, 200);

    // Refusals are counted; no token shows anywhere.
    let (_, _, metrics) = d
        .request(None, "GET", "/metrics", &[], vec![])
        .await
        .unwrap();
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    for (reason, n) in [("missing", 2), ("unknown", 1), ("read_only", 2)] {
        let line = format!("marketprism_broker_http_auth_refused_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }
    let (_, status) = d.get("/api/v1/status").await;
    let status = status.to_string();
    let log = d.log();
    for t in [WRITE, READ, "not-a-token-at-all-nope"] {
        assert!(!metrics.contains(t), "a token in /metrics");
        assert!(!status.contains(t), "a token in /api/v1/status");
        assert!(!log.contains(t), "a token in the log:\n{log}");
    }
    assert!(log.contains("HTTP API: 2 API token(s) loaded"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_tokens_for_reads_every_get_but_health_needs_a_token() {
    let d = Daemon::builder()
        .file("tokens", &tokens_file())
        .top("api:\n  tokens_file: tokens\n  tokens_for_reads: true\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    assert_eq!(d.get("/health").await.0, 200);
    for path in [
        "/api/v1/status",
        "/api/v1/streams",
        "/metrics",
        "/api/v1/subscribe?subject=market.x",
    ] {
        let (code, headers, _) = d.request(None, "GET", path, &[], vec![]).await.unwrap();
        assert_eq!(code, 401, "GET {path} without a token");
        assert!(headers.contains_key("www-authenticate"));
    }
    for t in [READ, WRITE] {
        let (code, _) = d.get_with("/api/v1/status", Some(t)).await;
        assert_eq!(code, 200);
        let (code, _, _) = d
            .request(Some(t), "GET", "/metrics", &[], vec![])
            .await
            .unwrap();
        assert_eq!(code, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_rereads_the_tokens_and_a_broken_file_keeps_the_old_ones() {
    // An absolute path: systemd's credential copies only change on restart.
    let secrets = tempfile::tempdir().unwrap();
    let path = secrets.path().join("api-tokens");
    std::fs::write(&path, tokens_file()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = Daemon::builder()
        .top(&format!(
            "api:\n  tokens_file: {:?}\n",
            path.display().to_string()
        ))
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let child = d.child_pid().unwrap();
    let reloads = |n: usize| {
        let d = &d;
        async move {
            eventually(Duration::from_secs(10), "the reload", || async {
                (d.log().matches("reload done").count() + d.log().matches("reload failed").count()
                    >= n)
                    .then_some(())
            })
            .await
        }
    };

    std::fs::write(&path, format!("{WRITE2}\n")).unwrap();
    d.signal(Signal::SIGHUP);
    reloads(1).await;
    assert_eq!(
        d.publish_with("market.rot", json!(1), Some(WRITE)).await.0,
        401,
        "the old token still works"
    );
    assert_eq!(
        d.publish_with("market.rot", json!(2), Some(WRITE2)).await.0,
        200
    );
    assert_eq!(d.child_pid(), Some(child), "nats-server was restarted");

    // A token too short: refused, the old (new) token stays.
    std::fs::write(&path, "short\n").unwrap();
    d.signal(Signal::SIGHUP);
    reloads(2).await;
    let log = d.log();
    assert!(
        log.contains("reload failed")
            && log.contains("api.tokens_file")
            && log.contains("api-tokens:1"),
        "{log}"
    );
    assert!(
        log.contains("still running on the previous config"),
        "{log}"
    );
    assert_eq!(
        d.publish_with("market.rot", json!(3), Some(WRITE2)).await.0,
        200
    );
    assert_eq!(d.publish_with("market.rot", json!(4), None).await.0, 401);
    assert_eq!(d.child_pid(), Some(child));
    assert!(!log.contains(WRITE2) && !log.contains(WRITE));
}

/// Runs check-config on `yaml`, which must exit with `code`; returns
/// what it printed to stderr.
fn check_config(dir: &Path, yaml: &str, code: i32) -> String {
    let conf = dir.join("broker.yaml");
    std::fs::write(&conf, yaml).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&conf)
        // Relative names in the test's config are credentials in `dir`.
        .env("CREDENTIALS_DIRECTORY", dir)
        .output()
        .unwrap();
    out.expect_code(code);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_config_names_the_bad_line_and_warns_about_a_readable_file() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let base = "auto_start_nats: false\napi:\n  tokens_file: tokens\n";

    std::fs::write(&tokens, format!("{WRITE}\n{READ} admin\n")).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = check_config(dir.path(), base, 78);
    assert!(err.contains("api.tokens_file"), "{err}");
    assert!(err.contains(&format!("{}:2:", tokens.display())), "{err}");
    assert!(!err.contains(READ), "the token is quoted: {err}");

    std::fs::write(&tokens, format!("{WRITE}\n")).unwrap();
    let err = check_config(dir.path(), base, 0);
    assert!(!err.contains("readable"), "{err}");
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = check_config(dir.path(), base, 0);
    assert!(
        err.contains("warning: api.tokens_file") && err.contains("readable by others"),
        "{err}"
    );
    // Readable by the checking process' own group (as root:marketprism-broker
    // 0640 is for the service user running check-config): fine.
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = check_config(dir.path(), base, 0);
    assert!(!err.contains("readable"), "{err}");
    // Readable by some other group: a warning naming it (chown needs root).
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(&tokens, None, Some(65534)).unwrap();
        let err = check_config(dir.path(), base, 0);
        assert!(err.contains("readable by group"), "{err}");
    } else {
        eprintln!("SKIPPED the other-group case: chown needs root");
    }

    let err = check_config(
        dir.path(),
        "auto_start_nats: false\napi:\n  tokens_file: missing\n",
        78,
    );
    assert!(
        err.contains("api.tokens_file") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn check_config_names_a_missing_or_unparsable_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let yaml = |cert: &Path, key: &Path| {
        format!(
            "auto_start_nats: false\napi:\n  tls:\n    cert_file: {:?}\n    key_file: {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    };
    check_config(dir.path(), &yaml(&pki.cert, &pki.key), 0);
    let err = check_config(
        dir.path(),
        &yaml(&dir.path().join("nope.pem"), &pki.key),
        78,
    );
    assert!(
        err.contains("api.tls.cert_file") && err.contains("nope.pem"),
        "{err}"
    );
    // A certificate where the key should be.
    let err = check_config(dir.path(), &yaml(&pki.cert, &pki.cert), 78);
    assert!(err.contains("api.tls.key_file"), "{err}");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not pem at all\n").unwrap();
    let err = check_config(dir.path(), &yaml(&junk, &pki.key), 78);
    assert!(
        err.contains("api.tls.cert_file") && err.contains("junk.pem"),
        "{err}"
    );
}

/// check-config (and the journal, at start-up and reload) warns about a
/// certificate of the config within 21 days of its expiry, or past it: an
/// operator sees it before the clients do, without Prometheus.
#[test]
fn check_config_warns_about_a_certificate_near_or_past_its_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = Pki::new(&dir.path().join("pki"));
    let yaml = format!(
        "auto_start_nats: false\napi:\n  tls:\n    cert_file: {:?}\n    key_file: {:?}\n",
        pki.cert.display().to_string(),
        pki.key.display().to_string()
    );
    let err = check_config(dir.path(), &yaml, 0);
    assert!(!err.contains("expire"), "rcgen's default is far off: {err}");
    let day = 86_400;
    pki.issue_server_expiring_in("soon", 5 * day + 3600);
    let err = check_config(dir.path(), &yaml, 0);
    assert!(
        err.contains(&format!(
            "warning: api.tls.cert_file: {} holds a certificate that expires in 5 days",
            pki.cert.display()
        )),
        "{err}"
    );
    pki.issue_server_expiring_in("late", -2 * day - 3600);
    let err = check_config(dir.path(), &yaml, 0);
    assert!(
        err.contains("holds a certificate that expired 2 days ago: TLS clients refuse it"),
        "{err}"
    );
    pki.issue_server_expiring_in("renewed", 90 * day);
    let err = check_config(dir.path(), &yaml, 0);
    assert!(!err.contains("expire"), "{err}");
}

fn tls_top(pki: &Pki) -> String {
    format!(
        "api:\n  tokens_file: tokens\n  tls:\n    cert_file: {:?}\n    key_file: {:?}\n",
        pki.cert.display().to_string(),
        pki.key.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn https_serves_with_tokens_and_plain_http_to_it_is_refused() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path());
    let d = Daemon::builder()
        .file("tokens", &tokens_file())
        .top(&tls_top(&pki))
        .https(&pki.ca)
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let (code, body) = d
        .publish_with("market.tls", json!({"p": 1}), Some(WRITE))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(d.publish_with("market.tls", json!(1), None).await.0, 401);

    // Plain HTTP to the TLS port: no answer, the connection is closed.
    let plain = common::request(d.http, "GET", "/health", &[], vec![]).await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
    assert!(!d.has_exited());
    assert_eq!(d.get("/health").await.0, 200);
    assert!(d.log().contains("listening on https://"), "{}", d.log());
}

fn der_of(pem: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(pem)
        .unwrap()
        .to_vec()
}

async fn peer_cert(d: &Daemon) -> Vec<u8> {
    let s = common::tls_connect(d.http, d.tls.as_ref().unwrap())
        .await
        .unwrap();
    let (_, conn) = s.get_ref();
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    conn.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_rotates_the_certificate_for_new_connections() {
    let pki_dir = tempfile::tempdir().unwrap();
    let mut pki = Pki::new(pki_dir.path());
    let d = Daemon::builder()
        .file("tokens", &tokens_file())
        .top(&tls_top(&pki))
        .https(&pki.ca)
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let child = d.child_pid().unwrap();
    let first = der_of(&pki.cert);
    assert_eq!(peer_cert(&d).await, first);
    // A connection opened before the rotation keeps working after it.
    let before = common::tls_connect(d.http, d.tls.as_ref().unwrap())
        .await
        .unwrap();

    pki.issue_server("rotated");
    let rotated = der_of(&pki.cert);
    assert_ne!(rotated, first);
    d.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(10), "the reload", || async {
        d.log().contains("reload done").then_some(())
    })
    .await;
    assert_eq!(
        peer_cert(&d).await,
        rotated,
        "a new connection sees the old certificate"
    );
    assert_eq!(d.child_pid(), Some(child));
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(before))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/health")
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);

    // A broken certificate on reload: the rotated one stays.
    std::fs::write(&pki.cert, "garbage\n").unwrap();
    d.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(10), "the failed reload", || async {
        d.log().contains("reload failed").then_some(())
    })
    .await;
    assert!(d.log().contains("api.tls.cert_file"), "{}", d.log());
    assert_eq!(peer_cert(&d).await, rotated);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_tls_client_neither_blocks_others_nor_stays_past_the_header_timeout() {
    use tokio::io::AsyncReadExt;
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path());
    let d = Daemon::builder()
        .file("tokens", &tokens_file())
        .top(&format!("{}  header_read_timeout: 3s\n", tls_top(&pki)))
        .https(&pki.ca)
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    // Connected, never says hello.
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", d.http))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(d.get("/health").await.0, 200);
    // Had the accept loop waited for the handshake, this took 3 s.
    let health = started.elapsed();
    assert!(
        health < Duration::from_millis(2500),
        "/health took {health:?}"
    );
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(8), silent.read(&mut buf))
        .await
        .expect("the silent connection is still open after 8 s");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2800),
        "closed after {took:?}, before the timeout"
    );
}

#[test]
fn a_relative_tokens_file_is_found_in_the_credentials_directory() {
    let dir = tempfile::tempdir().unwrap();
    let creds = tempfile::tempdir().unwrap();
    let conf = dir.path().join("broker.yaml");
    std::fs::write(
        &conf,
        "auto_start_nats: false\napi:\n  tokens_file: api-tokens\n",
    )
    .unwrap();
    let run = || {
        std::process::Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&conf)
            .env("CREDENTIALS_DIRECTORY", creds.path())
            .output()
            .unwrap()
    };
    // Only next to the config: not looked at while systemd names the
    // credentials directory.
    std::fs::write(dir.path().join("api-tokens"), format!("{WRITE}\n")).unwrap();
    let o = run();
    o.expect_code(78);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&creds.path().join("api-tokens").display().to_string()),
        "{err}"
    );
    let t = creds.path().join("api-tokens");
    std::fs::write(&t, format!("{WRITE}\n")).unwrap();
    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o400)).unwrap();
    run().expect_code(0);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_client_ca_file_only_clients_with_a_certificate_get_in() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path());
    let (cert, key) = pki.client("alice");
    let top = format!(
        "api:\n  tls:\n    cert_file: {:?}\n    key_file: {:?}\n    client_ca_file: {:?}\n",
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
        pki.ca.display().to_string()
    );
    // The harness' own client has no certificate: wait for health with one.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&pki.ca).unwrap())
        .unwrap();
    let mut with_cert = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_file(&cert).unwrap()],
        PrivateKeyDer::from_pem_file(&key).unwrap(),
    )
    .unwrap();
    with_cert.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut d = Daemon::builder().top(&top).start();
    d.tls = Some(std::sync::Arc::new(with_cert));
    d.wait_healthy(Duration::from_secs(20)).await;

    let without = common::tls_client(&pki.ca);
    let r = common::request_over(d.http, Some(&without), "GET", "/health", &[], vec![]).await;
    assert!(r.is_err(), "a client without a certificate got {r:?}");
    assert!(!d.has_exited());
    assert_eq!(d.get("/health").await.0, 200);
}

/// The notAfter of each TLS file's certificates, as `/metrics` serves it.
async fn expiries(d: &Daemon) -> Vec<(String, f64)> {
    let (code, _, body) = d
        .request(None, "GET", "/metrics", &[], vec![])
        .await
        .unwrap();
    assert_eq!(code, 200);
    let name = "marketprism_broker_certificate_expiry_timestamp_seconds{";
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut got: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(name))
        .map(|l| {
            let (labels, v) = l.rsplit_once("} ").unwrap();
            (labels.to_string(), v.parse().unwrap())
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    got
}

/// `/metrics` says when the certificates of every TLS file of the config
/// expire (the API's, nats-server's certificate and CA), for the alert
/// rules; a renewed file counts from the reload that puts it in use.
#[tokio::test(flavor = "multi_thread")]
async fn the_expiry_of_every_certificate_in_use_is_served_and_follows_a_reload() {
    let pki_dir = tempfile::tempdir().unwrap();
    let mut api = Pki::new(&pki_dir.path().join("api"));
    api.issue_server_until("dated", (2031, 3, 4));
    let nats = Pki::new(&pki_dir.path().join("nats"));
    let d = Daemon::builder()
        .file("tokens", &tokens_file())
        .top(&tls_top(&api))
        .nats(&format!(
            "  tls:\n    cert_file: {:?}\n    key_file: {:?}\n    ca_file: {:?}\n",
            nats.cert, nats.key, nats.ca
        ))
        .https(&api.ca)
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let label = |key: &str, path: &Path| format!("key=\"{key}\",path=\"{}\"", path.display());
    // 2031-03-04T00:00:00Z; rcgen's default notAfter is 4096-01-01.
    let (dated, far) = (1_930_348_800.0, 67_090_118_400.0);
    let mut want = vec![
        (label("api.tls.cert_file", &api.cert), dated),
        (label("nats.tls.ca_file", &nats.ca), far),
        (label("nats.tls.cert_file", &nats.cert), far),
    ];
    assert_eq!(expiries(&d).await, want);

    // Renewed on disk: still the certificate in use until the reload.
    api.issue_server_until("renewed", (2032, 5, 6));
    assert_eq!(expiries(&d).await, want, "served: the file in use");
    d.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(10), "the reload", || async {
        d.log().contains("reload done").then_some(())
    })
    .await;
    want[0].1 = 1_967_414_400.0; // 2032-05-06
    assert_eq!(expiries(&d).await, want);
}
