//! The commands that run in their own short-lived process, beside a
//! running daemon or instead of it: `reload`, `wait-ready`, `check-config`,
//! `render-nats-config`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::{Config, Loaded};
use crate::exit;
use crate::natsconf::{self, Credentials, RenderOptions};
use crate::probe;
use crate::runfiles;
use crate::server_version::ServerVersion;
use crate::supervisor;

/// `reload`: SIGHUP the daemon, then wait for the reload-state file to
/// show a newer outcome. Exit 0 when applied, 1 when refused (the old
/// config keeps running), 69 when there is no daemon to reload.
pub fn reload_command(
    pid: Option<u32>,
    explicit: Option<&std::path::Path>,
    timeout: Duration,
) -> i32 {
    // Under systemd RUNTIME_DIRECTORY is set for ExecReload too; outside
    // it the config says where the state is, if it parses. If it does not,
    // the daemon will refuse it: say why right away (and still signal, so
    // the daemon's log and STATUS say it too).
    let loaded = crate::config::load(explicit);
    let dir = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| v.to_string_lossy().split(':').next().map(PathBuf::from))
        .or_else(|| loaded.as_ref().ok().map(|l| l.config.runtime_dir()));
    let pid = match pid.or_else(|| runfiles::read_pid(dir.as_ref()?)) {
        Some(p) => p,
        None => {
            eprintln!("marketprism-broker: no running daemon found (give --pid)");
            return exit::UNAVAILABLE;
        }
    };
    let dir = match (dir, &loaded) {
        (Some(d), _) => Some(d),
        (None, Err(e)) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGHUP,
            );
            eprintln!("reload failed: {e}; still running on the previous config");
            return 1;
        }
        (None, Ok(_)) => None,
    };
    let before = dir
        .as_deref()
        .and_then(runfiles::read_reload_state)
        .map(|s| s.count);
    let target = nix::unistd::Pid::from_raw(pid as i32);
    if let Err(e) = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGHUP) {
        eprintln!("marketprism-broker: cannot signal pid {pid}: {e}");
        return exit::UNAVAILABLE;
    }
    let (Some(dir), Some(before)) = (dir, before) else {
        eprintln!("marketprism-broker: SIGHUP sent to {pid}; its outcome cannot be followed here (see its log)");
        return exit::OK;
    };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(runfiles::ReloadState { count, ok, message }) =
            runfiles::read_reload_state(&dir)
        {
            if count > before {
                return if ok {
                    println!("reloaded: {message}");
                    exit::OK
                } else {
                    eprintln!("reload failed: {message}");
                    1
                };
            }
        }
        if nix::sys::signal::kill(target, None).is_err() {
            eprintln!("marketprism-broker: pid {pid} exited during the reload");
            return exit::UNAVAILABLE;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("marketprism-broker: no reload outcome from pid {pid} within {timeout:?}");
    1
}

/// How long `wait-ready` waits by default: a node returning to a cluster
/// may have gigabytes to catch up.
pub const WAIT_READY_TIMEOUT: Duration = Duration::from_secs(600);

/// How often `wait-ready` asks.
const WAIT_READY_EVERY: Duration = Duration::from_millis(500);

/// How long nothing may listen on the API's port before `wait-ready`
/// says no daemon runs (one started a moment ago may not listen yet).
const NO_DAEMON_AFTER: Duration = Duration::from_secs(3);

/// Longest a single /health request may take: it lists the streams (up
/// to 5 s) when JetStream is slow.
const WAIT_READY_REQUEST: Duration = Duration::from_secs(10);

/// `wait-ready`: asks the running daemon's GET /health (open without a
/// token, on the configured `host`:`port`) until it answers 200: nats-server
/// healthy, streams reconciled, and in a cluster every stream and consumer
/// current on this node. Prints a line whenever what it waits for changes.
/// 0 when ready, 75 ([`exit::TEMPFAIL`]) on timeout, 69 when no daemon runs.
///
/// /health rather than the pid file or nats-server's own /healthz: it is
/// the daemon's one verdict (the same /health a load balancer reads), it
/// includes the daemon's side (connected, streams reconciled), and it
/// needs no secret.
pub fn wait_ready(loaded: &Loaded, timeout: Duration) -> i32 {
    let c = &loaded.config;
    if c.api.tls.is_some() {
        eprintln!(
            "marketprism-broker: wait-ready asks /health over plain HTTP, but {} serves the API over HTTPS (api.tls); ask https://{}:{}/health instead",
            loaded.source, c.host, c.port
        );
        return exit::UNAVAILABLE;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("marketprism-broker: cannot start the async runtime: {e}");
            return exit::SOFTWARE;
        }
    };
    let addr = probe::connect_addr(&c.host, c.port);
    let url = format!("http://{addr}/health");
    println!(
        "waiting until this node is current: asking {url} (timeout {})",
        humantime::format_duration(timeout)
    );
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last = String::new();
    let mut refused_since: Option<Instant> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let per_request = left.clamp(Duration::from_millis(200), WAIT_READY_REQUEST);
        let reason = match rt.block_on(probe::http_get(addr, "/health", per_request)) {
            Ok((status, body)) => match serde_json::from_slice(&body) {
                Ok(v) => match ready_from_health(status, &v) {
                    Ok(()) => {
                        println!(
                            "ready: healthy and current (after {:.1} s)",
                            started.elapsed().as_secs_f64()
                        );
                        return exit::OK;
                    }
                    Err(why) => why,
                },
                Err(_) => format!("{url} answered {status} with something that is not JSON"),
            },
            Err(e) => match not_listening(addr, c) {
                // A daemon started a moment ago may not listen yet.
                Some(why)
                    if refused_since.get_or_insert_with(Instant::now).elapsed()
                        >= NO_DAEMON_AFTER =>
                {
                    eprintln!("marketprism-broker: {why}: no daemon to wait for");
                    return exit::UNAVAILABLE;
                }
                Some(why) => why,
                None => {
                    refused_since = None;
                    format!("the daemon does not answer ({e})")
                }
            },
        };
        if reason != last {
            println!("waiting: {reason}");
            last = reason;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() && refused_since.is_some() {
            eprintln!("marketprism-broker: {last}: no daemon to wait for");
            return exit::UNAVAILABLE;
        }
        if left.is_zero() {
            eprintln!(
                "marketprism-broker: this node is not ready after {}: {last}",
                humantime::format_duration(timeout)
            );
            return exit::TEMPFAIL;
        }
        std::thread::sleep(left.min(WAIT_READY_EVERY));
    }
}

/// Why `addr` shows there is no daemon: nothing listens there and no live
/// daemon is in the pid file. None when something listens (a slow answer)
/// or the daemon is alive (still starting).
fn not_listening(addr: std::net::SocketAddr, c: &Config) -> Option<String> {
    let refused = matches!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    );
    if !refused {
        return None;
    }
    let alive = runfiles::read_pid(&c.runtime_dir()).is_some_and(|pid| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
    });
    (!alive).then(|| format!("nothing listens on {addr} (the API's host and port)"))
}

/// Whether a /health answer means ready; else what it waits for, in a
/// sentence: what is catching up (and how far behind) or what is wrong.
pub fn ready_from_health(status: u16, v: &serde_json::Value) -> Result<(), String> {
    if status == 200 {
        return Ok(());
    }
    let list = |key: &str, field: Option<&str>| -> Vec<String> {
        v[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| match field {
                Some(f) => x[f].as_str().map(String::from),
                None => x.as_str().map(String::from),
            })
            .collect()
    };
    let catching_up = list("catching_up", Some("description"));
    let problems = list("problems", None);
    let mut parts = Vec::new();
    if !catching_up.is_empty() {
        parts.push(format!("catching up: {}", catching_up.join("; ")));
    }
    if !problems.is_empty() {
        parts.push(format!("unhealthy: {}", problems.join("; ")));
    }
    if parts.is_empty() {
        parts.push(format!(
            "/health answered {status} ({})",
            v["status"].as_str().unwrap_or("no status")
        ));
    }
    Err(parts.join("; "))
}

/// `check-config`: validation, then nats-server's own check of the
/// rendered file when the binary is at hand.
pub fn check_config(loaded: &Loaded) -> i32 {
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let c = &loaded.config;
    if !c.auto_start_nats {
        if let Ok(notes) = crate::server_version::durability_notes(c, None) {
            notes.iter().for_each(|n| eprintln!("warning: {n}"));
        }
    } else {
        match supervisor::resolve_server_bin(c) {
            Err(e) => eprintln!(
                "warning: {e}; nats-server's own check of the generated config was skipped"
            ),
            Ok(bin) => {
                let v = ServerVersion::query(&bin);
                match crate::server_version::durability_notes(c, v) {
                    Ok(notes) => notes.iter().for_each(|n| eprintln!("warning: {n}")),
                    Err(e) => {
                        eprintln!(
                            "marketprism-broker: invalid config: {}",
                            e.at(&loaded.source)
                        );
                        return exit::CONFIG;
                    }
                }
                if let Err(e) = nats_server_test(&bin, v, loaded) {
                    eprintln!(
                        "{}: the generated nats-server config is refused by {}: {e}",
                        loaded.source,
                        bin.display()
                    );
                    return exit::CONFIG;
                }
            }
        }
    }
    println!("{}: OK", loaded.source);
    exit::OK
}

/// Runs `nats-server -t` on the rendered config (written 0600 to a private
/// temporary file, removed after).
fn nats_server_test(
    bin: &std::path::Path,
    v: Option<ServerVersion>,
    loaded: &Loaded,
) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = render_for(loaded, false, v);
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "marketprism-broker-check-{}.conf",
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(text.as_bytes())
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let out = std::process::Command::new(bin)
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output();
    let _ = std::fs::remove_file(&path);
    let out = out.map_err(|e| format!("cannot run it: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&out.stderr)
            .replace(&path.display().to_string(), "<generated config>");
        Err(text.trim().to_string())
    }
}

/// The nats-server config for `loaded`; `mask` hides passwords.
pub fn render(loaded: &Loaded, mask: bool) -> String {
    // What the daemon would run, so this shows what it would render.
    let v = supervisor::resolve_server_bin(&loaded.config)
        .ok()
        .filter(|_| loaded.config.auto_start_nats)
        .and_then(|b| ServerVersion::query(&b));
    render_for(loaded, mask, v)
}

/// [`render`] for a nats-server of version `v`.
fn render_for(loaded: &Loaded, mask: bool, v: Option<ServerVersion>) -> String {
    let internal = loaded.config.auto_start_nats.then(|| Credentials {
        user: natsconf::INTERNAL_USER.into(),
        password: "********".into(),
    });
    natsconf::render(
        &loaded.config,
        &RenderOptions {
            internal,
            mask_secrets: mask,
            source: loaded.source.to_string(),
            server_version: v,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_a_200_from_health_is_ready_and_the_reason_says_what_lags() {
        assert_eq!(
            ready_from_health(200, &json!({"status": "healthy"})),
            Ok(())
        );
        let why = ready_from_health(
            503,
            &json!({"status": "catching_up", "problems": [],
                    "catching_up": [{"stream": "MD", "lag": 1200, "description": "stream MD: 1200 entries behind"}]}),
        )
        .unwrap_err();
        assert_eq!(why, "catching up: stream MD: 1200 entries behind");
        let why = ready_from_health(
            503,
            &json!({"status": "unhealthy", "problems": ["stream MD has no leader"], "catching_up": []}),
        )
        .unwrap_err();
        assert_eq!(why, "unhealthy: stream MD has no leader");
        // An answer without lists still says something.
        assert_eq!(
            ready_from_health(503, &json!({})).unwrap_err(),
            "/health answered 503 (no status)"
        );
    }
}
