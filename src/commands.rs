//! The commands that run in their own short-lived process, beside a
//! running daemon or instead of it: `reload`, `check-config`,
//! `render-nats-config`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::Loaded;
use crate::exit;
use crate::natsconf::{self, Credentials, RenderOptions};
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
