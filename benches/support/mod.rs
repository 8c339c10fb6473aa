//! What the benchmarks share: the daemon started from its release build
//! with its own nats-server on free ports, process figures from /proc, and
//! a minimal HTTP client.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub const BIN: &str = env!("CARGO_BIN_EXE_marketprism-broker");
/// Linux reports process CPU times in USER_HZ ticks, 100 a second on every
/// architecture (it is part of the kernel ABI, unlike CONFIG_HZ).
const USER_HZ: f64 = 100.0;

pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// Latency samples in microseconds.
#[derive(Default)]
pub struct Samples(pub Vec<u32>);

impl Samples {
    pub fn add(&mut self, d: Duration) {
        self.0.push(d.as_micros().min(u32::MAX as u128) as u32);
    }
    pub fn merge(&mut self, o: Samples) {
        self.0.extend(o.0);
    }
    pub fn pct(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() - 1) as f64 * p).round() as usize;
        self.0[i] as f64 / 1000.0
    }
}

// ------------------------------------------------------------- daemon ----

/// How to start the daemon.
pub struct Spec {
    pub nats_server: PathBuf,
    /// TOKIO_WORKER_THREADS for the daemon (its runtime's default otherwise).
    pub workers: Option<String>,
    /// More keys of the `nats:` section, indented by two spaces.
    pub nats_extra: String,
}

pub struct Daemon {
    child: Child,
    pub dir: tempfile::TempDir,
    pub http: u16,
    pub nats: u16,
    pub monitor: u16,
    notify: UnixDatagram,
    /// Held while the daemon is ours: the notify reader stops without it.
    alive: Arc<()>,
}

/// The daemon's config for the benchmark: the defaults (the seed's
/// streams) on free ports. `stable_after` is short so that each kill of the
/// recovery test is a first crash, restarted after the initial delay rather
/// than a growing backoff.
pub fn write_config(
    dir: &Path,
    ports: (u16, u16, u16),
    nats_server: &Path,
    nats_extra: &str,
) -> PathBuf {
    let (http, nats, monitor) = ports;
    let cfg = format!(
        "port: {http}\nnats:\n  nats_port: {nats}\n  http_port: {monitor}\n  data_dir: {data:?}\n  server_bin: {bin:?}\n  server_name: bench\n{nats_extra}supervisor:\n  stable_after: 2s\n",
        data = dir.join("state").display().to_string(),
        bin = nats_server.display().to_string(),
    );
    let path = dir.join("broker.yaml");
    std::fs::write(&path, cfg).unwrap();
    path
}

impl Daemon {
    /// Execs the daemon and returns it with the time exec took to READY=1.
    pub fn start(spec: &Spec) -> (Daemon, Duration) {
        let nats_server = &spec.nats_server;
        let dir = tempfile::tempdir().unwrap();
        let [http, nats, monitor] = free_ports::<3>();
        let config = write_config(
            dir.path(),
            (http, nats, monitor),
            nats_server,
            &spec.nats_extra,
        );
        let sock_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&sock_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let mut cmd = Command::new(BIN);
        if let Some(n) = &spec.workers {
            cmd.env("TOKIO_WORKER_THREADS", n);
        }
        let t0 = Instant::now();
        let child = cmd
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("RUST_LOG", "info,async_nats=warn")
            .env_remove("WATCHDOG_USEC")
            .env_remove("STATE_DIRECTORY")
            .env_remove("RUNTIME_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            dir,
            http,
            nats,
            monitor,
            notify,
            alive: Arc::new(()),
        };
        let ready = d.wait_notify("READY=1", Duration::from_secs(60));
        // Keep reading, as systemd does: an unread notify socket fills up.
        let sock = d.notify.try_clone().unwrap();
        let sock_alive = Arc::clone(&d.alive);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match sock.recv(&mut buf) {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
                if Arc::strong_count(&sock_alive) == 1 {
                    break;
                }
            }
        });
        (d, ready - t0)
    }

    pub fn wait_notify(&mut self, line: &str, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = self.notify.recv(&mut buf) {
                let at = Instant::now();
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == line)
                {
                    return at;
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("the daemon exited ({st}) before {line}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no {line} within {timeout:?}:\n{}",
                self.log()
            );
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("broker.yaml")
    }

    /// Rewrites the config with `nats_extra` under `nats:` and reloads it
    /// (SIGHUP); returns once the daemon reports the reload done.
    pub fn reload_with(&self, spec: &Spec, nats_extra: &str) {
        let state = self.dir.path().join("state/reload-state");
        let count = |s: &str| s.split('\t').next().and_then(|n| n.parse::<u64>().ok());
        let before = std::fs::read_to_string(&state)
            .ok()
            .and_then(|s| count(&s))
            .unwrap_or(0);
        write_config(
            self.dir.path(),
            (self.http, self.nats, self.monitor),
            &spec.nats_server,
            nats_extra,
        );
        self.signal(Signal::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&state).unwrap_or_default();
            if count(&text).is_some_and(|c| c > before) {
                assert!(text.contains("\tok\t"), "the reload failed: {text}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no reload within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid() as i32), sig);
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(self.dir.path().join("daemon.log"))
            .and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("state/nats-server.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn stop(mut self) {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of a process, in MB.
pub fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// User + system CPU seconds a process has used so far.
pub fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / USER_HZ
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// -------------------------------------------------------------- HTTP ----

pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

pub async fn connect(port: u16) -> std::io::Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

pub async fn get(port: u16, path: &str) -> Result<(u16, Bytes), Box<dyn std::error::Error>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "127.0.0.1")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}
