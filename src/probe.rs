//! Talking to a nats-server from outside: the one client of its monitor
//! (/healthz, /varz, /jsz...), a raw NATS PING round trip, and who holds a
//! port or fills the disk. Used by the supervisor, the app and the HTTP
//! handlers alike; it depends on nothing of the daemon's.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long a monitor request for data (not a health probe, which has its
/// own timeout) may take.
pub const MONITOR_TIMEOUT: Duration = Duration::from_secs(2);

/// GET `path` (e.g. /varz, /jsz) from the monitor at `addr` as JSON; None
/// when it does not answer 200 with JSON within [`MONITOR_TIMEOUT`].
pub async fn monitor_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let (status, body) = http_get(addr, path, MONITOR_TIMEOUT).await.ok()?;
    (status == 200)
        .then(|| serde_json::from_slice(&body).ok())
        .flatten()
}

/// GET `path` from `addr` over HTTP/1.1, within `timeout`.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, Bytes), String> {
    let work = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).ok();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("http handshake with {addr}: {e}"))?;
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?
            .to_bytes();
        conn.abort();
        Ok((status, body))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "GET http://{addr}{path}: no answer within {timeout:?}"
        )),
    }
}

/// nats-server's own full health check (`/healthz?details=true`), read:
/// whether every JetStream asset this node serves is current here.
pub async fn local_health(
    monitor: SocketAddr,
    timeout: Duration,
) -> Result<crate::cluster::LocalHealth, String> {
    let (status, body) = http_get(monitor, "/healthz?details=true", timeout).await?;
    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Ok(crate::cluster::local_health(status, &v))
}

/// Why a /healthz probe failed: the caller treats a server that answers
/// "not healthy" differently from one that does not answer at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthzFailure {
    /// It answered, with a status other than 200.
    Answered { status: u16, body: String },
    /// No answer within the timeout, or no connection.
    NoAnswer(String),
}

impl std::fmt::Display for HealthzFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Answered { status, body } => write!(f, "/healthz answered {status}: {body}"),
            Self::NoAnswer(e) => f.write_str(e),
        }
    }
}

/// nats-server's /healthz: Ok when it answers 200.
///
/// `clustered`: ask with `js-enabled-only=true`. A clustered server's plain
/// /healthz answers 503 while JetStream has no meta leader (its peers are
/// down or still starting): a process that is fine but has no quorum. That
/// is the cluster's state, which /health reports from /jsz; restarting the
/// child for it would only make quorum harder to reach.
pub async fn healthz(
    monitor: SocketAddr,
    timeout: Duration,
    clustered: bool,
) -> Result<(), HealthzFailure> {
    let path = if clustered {
        "/healthz?js-enabled-only=true"
    } else {
        "/healthz"
    };
    let (status, body) = http_get(monitor, path, timeout)
        .await
        .map_err(HealthzFailure::NoAnswer)?;
    if status == 200 {
        Ok(())
    } else {
        let body = String::from_utf8_lossy(&body).trim().to_string();
        Err(HealthzFailure::Answered { status, body })
    }
}

/// JetStream's liveness, through the monitor's /jsz: nats-server 2.9
/// answers /healthz "ok" while a store write error (a full disk) has
/// wedged JetStream for good; /jsz then hangs. Only a restart brings it
/// back, so a hang here counts as a failed probe.
pub async fn jsz(monitor: SocketAddr, timeout: Duration) -> Result<(), String> {
    match http_get(monitor, "/jsz", timeout).await {
        Ok((200, _)) => Ok(()),
        Ok((status, body)) => Err(format!(
            "/jsz answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )),
        Err(e) => Err(format!("JetStream does not answer: {e}")),
    }
}

/// Free space below which the JetStream store's filesystem counts as full.
pub const STORE_FULL_BELOW: u64 = 1 << 20;

/// "no space left on device ..." when the filesystem holding `dir` has
/// less than [`STORE_FULL_BELOW`] free for nats-server: the cause
/// nats-server 2.9 does not say when a full disk wedges JetStream.
pub fn store_space_problem(dir: &std::path::Path) -> Option<String> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let free = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
    (free < STORE_FULL_BELOW).then(|| {
        format!(
            "no space left on device: the JetStream store's filesystem ({}) has {} KB free",
            dir.display(),
            free / 1024
        )
    })
}

/// A NATS protocol round trip (INFO, CONNECT, PING -> PONG) on the client
/// port: proves the server accepts clients, which /healthz alone does not.
pub async fn nats_ping(
    addr: SocketAddr,
    credentials: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<(), String> {
    let work = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let mut line = String::new();
        rd.read_line(&mut line).await.map_err(|e| e.to_string())?;
        if !line.starts_with("INFO ") {
            return Err(format!("expected INFO from {addr}, got {:?}", line.trim()));
        }
        // A server that requires TLS answers a plain CONNECT by closing;
        // its INFO already shows it accepts clients, and the daemon's own
        // TLS connection proves the rest.
        if serde_json::from_str::<serde_json::Value>(&line[5..])
            .ok()
            .and_then(|v| v.get("tls_required").and_then(|t| t.as_bool()))
            == Some(true)
        {
            return Ok(());
        }
        let connect = match credentials {
            Some((u, p)) => {
                serde_json::json!({"verbose": false, "pedantic": false, "user": u, "pass": p, "name": "marketprism-broker-probe"})
            }
            None => {
                serde_json::json!({"verbose": false, "pedantic": false, "name": "marketprism-broker-probe"})
            }
        };
        wr.write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        loop {
            line.clear();
            if rd.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
                return Err(format!("{addr} closed the connection before PONG"));
            }
            match line.trim_end() {
                "PONG" => return Ok(()),
                l if l.starts_with("-ERR") => {
                    return Err(format!("{addr} refused the client: {l}"))
                }
                _ => continue,
            }
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("NATS PING to {addr}: no PONG within {timeout:?}")),
    }
}

/// The address to connect to for a bind host: wildcard binds are reached
/// over loopback.
pub fn connect_addr(host: &str, port: u16) -> SocketAddr {
    let ip = match host {
        "0.0.0.0" | "localhost" | "" => "127.0.0.1".parse().expect("literal"),
        "::" => "::1".parse().expect("literal"),
        h => h
            .parse()
            .unwrap_or_else(|_| "127.0.0.1".parse().expect("literal")),
    };
    SocketAddr::new(ip, port)
}

/// Fails with a clear message when `host:port` cannot be bound, naming the
/// process that holds it when /proc tells.
pub fn check_port_free(host: &str, port: u16, what: &str) -> Result<(), String> {
    let addrs: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => return Err(format!("cannot resolve {host}: {e}")),
    };
    for addr in addrs {
        if let Err(e) = TcpListener::bind(addr) {
            let holder = match port_holder(port) {
                Some((pid, name)) => format!(" by pid {pid} ({name})"),
                None => String::new(),
            };
            return Err(match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    format!("port {port} ({what}) on {host} is already in use{holder}")
                }
                _ => format!("cannot bind port {port} ({what}) on {host}: {e}"),
            });
        }
    }
    Ok(())
}

/// The pid and command name of the process listening on TCP `port`, from
/// /proc/net/tcp{,6} and /proc/*/fd. None when it cannot be seen (another
/// user's process without privileges, another network namespace).
pub fn port_holder(port: u16) -> Option<(u32, String)> {
    let mut inodes = Vec::new();
    // /proc/self/net: still visible under systemd's ProcSubset=pid.
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue; // 0A = LISTEN
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    let name =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    return Some((pid, name.trim().to_string()));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_named_with_its_holder() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let e = check_port_free("127.0.0.1", port, "nats client port").unwrap_err();
        assert!(
            e.contains(&format!(
                "port {port} (nats client port) on 127.0.0.1 is already in use"
            )),
            "{e}"
        );
        assert!(e.contains(&format!("by pid {}", std::process::id())), "{e}");
        drop(l);
        check_port_free("127.0.0.1", port, "x").unwrap();
    }

    #[test]
    fn wildcard_hosts_are_reached_over_loopback() {
        assert_eq!(connect_addr("0.0.0.0", 1).to_string(), "127.0.0.1:1");
        assert_eq!(connect_addr("::", 1).to_string(), "[::1]:1");
        assert_eq!(connect_addr("10.1.2.3", 1).to_string(), "10.1.2.3:1");
    }
}
