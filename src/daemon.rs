//! The daemon's life: bind, supervise, connect, reconcile, serve, stop.
//!
//! Order matters and is the point of this module:
//! start:  bind the HTTP port (fail fast; /health answers 503 meanwhile) ->
//!         start nats-server and wait until it is healthy -> connect ->
//!         reconcile streams -> READY.
//! stop:   STOPPING -> stop HTTP (drain) -> SIGTERM nats-server (SIGKILL
//!         after stop_timeout) -> exit 0, no orphan.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::app::{internal_credentials, App};
use crate::config::{Loaded, Source};
use crate::exit;
use crate::natsconf::{self, Credentials, RenderOptions};
use crate::supervisor::{self, probe, ChildStatus, Supervisor, SupervisorError};
use crate::systemd;

fn source_text(l: &Loaded) -> String {
    match &l.source {
        Source::File(p) => p.display().to_string(),
        Source::BuiltinDefaults => "built-in defaults".into(),
    }
}

/// Listens for SIGTERM/SIGINT (stop) and SIGHUP; the returned receiver
/// turns true on a stop signal.
fn stop_signals() -> std::io::Result<watch::Receiver<bool>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM received: stopping"); let _ = tx.send(true); }
                _ = int.recv() => { tracing::info!("SIGINT received: stopping"); let _ = tx.send(true); }
                _ = hup.recv() => tracing::warn!("SIGHUP received: live reload is not supported by this version; restart the service to apply config changes"),
            }
        }
    });
    Ok(rx)
}

pub async fn run(loaded: Loaded) -> i32 {
    let source = source_text(&loaded);
    match &loaded.source {
        Source::File(p) => {
            tracing::info!(config = %p.display(), version = env!("CARGO_PKG_VERSION"), "marketprism-broker starting")
        }
        Source::BuiltinDefaults => tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            "no config file given and none at {}: running on the built-in defaults",
            crate::config::DEFAULT_PATH
        ),
    }
    for w in &loaded.warnings {
        tracing::warn!("config: {w}");
    }
    let config = Arc::new(loaded.config);
    let mut stop = match stop_signals() {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return exit::SOFTWARE;
        }
    };

    // The HTTP port first: a taken port is found before nats-server starts.
    let listener = match TcpListener::bind((config.host.as_str(), config.port)).await {
        Ok(l) => l,
        Err(e) => {
            let msg = probe::check_port_free(&config.host, config.port, "HTTP API port `port`")
                .err()
                .unwrap_or_else(|| {
                    format!("cannot listen on {}:{}: {e}", config.host, config.port)
                });
            tracing::error!("{msg}");
            eprintln!("marketprism-broker: {msg}");
            return exit::UNAVAILABLE;
        }
    };

    let credentials = match internal_credentials(&config) {
        Ok(c) => c,
        Err(e) => {
            let msg = format!(
                "cannot create the daemon's credentials in {}: {e}",
                config.data_dir().display()
            );
            tracing::error!("{msg}");
            return exit::CANTCREAT;
        }
    };
    let (status_tx, status_rx) = watch::channel(ChildStatus::default());
    let app = Arc::new(App::new(
        config.clone(),
        status_rx.clone(),
        config.auto_start_nats,
        credentials.clone(),
    ));

    let (http_stop_tx, http_stop_rx) = watch::channel(false);
    let http = tokio::spawn(crate::http::serve(listener, app.clone(), http_stop_rx));
    tracing::info!(
        "HTTP API listening on http://{}",
        natsconf::host_port(&config.host, config.port)
    );

    let (child_stop_tx, child_stop_rx) = watch::channel(false);
    let mut supervisor = None;
    if config.auto_start_nats {
        let bin = match supervisor::resolve_server_bin(&config) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("marketprism-broker: {e}");
                let _ = http_stop_tx.send(true);
                let _ = http.await;
                return exit::UNAVAILABLE;
            }
        };
        let render = RenderOptions {
            internal: credentials,
            mask_secrets: false,
            source: source.clone(),
        };
        match Supervisor::new(config.clone(), render, bin, status_tx) {
            Ok(s) => supervisor = Some(tokio::spawn(s.run(child_stop_rx))),
            Err(e) => {
                tracing::error!("{e}");
                return exit::UNAVAILABLE;
            }
        }
    } else {
        drop(status_tx);
    }

    let outcome = start_and_serve(&app, &mut supervisor, &mut stop).await;

    // Stop: HTTP first, so no request meets a stopping nats-server.
    systemd::stopping();
    let _ = http_stop_tx.send(true);
    let _ = http.await;
    // Whatever our client still buffers goes out while the server lives.
    if let Some(n) = app.nats().filter(|_| app.is_connected()) {
        let _ = tokio::time::timeout(Duration::from_secs(2), n.client.flush()).await;
    }
    let _ = child_stop_tx.send(true);
    let mut code = outcome;
    if let Some(task) = supervisor {
        code = match task.await {
            Ok(Ok(())) => code,
            Ok(Err(e)) => failure_code(&e),
            Err(e) => {
                tracing::error!(error = %e, "supervisor task failed");
                exit::SOFTWARE
            }
        };
    }
    tracing::info!(code, "marketprism-broker stopped");
    code
}

fn failure_code(e: &SupervisorError) -> i32 {
    tracing::error!("{e}");
    eprintln!("marketprism-broker: {e}");
    match e {
        SupervisorError::Unavailable(_) => exit::UNAVAILABLE,
        SupervisorError::CantCreate(_) => exit::CANTCREAT,
    }
}

type SupTask = tokio::task::JoinHandle<Result<(), SupervisorError>>;

/// Waits for the supervisor task to end, when there is one.
async fn sup_done(
    task: &mut Option<SupTask>,
) -> Result<Result<(), SupervisorError>, tokio::task::JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

/// Startup, then serving until a stop signal or a supervision failure.
/// Returns the exit code the outcome deserves (the supervisor's error, if
/// any, is turned into its code by the caller after it ended).
async fn start_and_serve(
    app: &Arc<App>,
    supervisor: &mut Option<SupTask>,
    stop: &mut watch::Receiver<bool>,
) -> i32 {
    let config = app.config.clone();
    let mut child = app.child.clone();

    // 1. nats-server healthy (supervised mode).
    if supervisor.is_some() {
        tokio::select! {
            ok = first_ready(&mut child) => { if !ok { return exit::SOFTWARE; } }
            r = sup_done(supervisor) => { return ended_early(r, supervisor); }
            _ = crate::flag_set(stop) => return exit::OK,
        }
    }

    // 2. Our client.
    if let Err(e) = app.connect().await {
        tracing::error!("{e}");
        return exit::CONFIG;
    }
    let wait = config.supervisor.start_timeout.get();
    tokio::select! {
        ok = app.wait_connected(wait) => if !ok {
            tracing::warn!(urls = ?app.nats_urls(), "not connected to NATS after {wait:?}; going on and reconnecting in the background");
        },
        r = sup_done(supervisor) => { return ended_early(r, supervisor); }
        _ = crate::flag_set(stop) => return exit::OK,
    }

    // 3. Streams.
    if app.is_connected() {
        if let Err(e) = app.sync_streams().await {
            tracing::error!(error = %e, "stream reconciliation failed; retrying in the background");
        }
    }
    let (maint_stop_tx, maint_stop_rx) = watch::channel(false);
    let maint = tokio::spawn(maintain(app.clone(), maint_stop_rx));

    // 4. Ready.
    let pid = app.child.borrow().pid;
    let streams = app.sync.lock().map(|s| s.report.streams.len()).unwrap_or(0);
    let line = match pid {
        Some(pid) => format!(
            "nats-server pid {pid} healthy, {streams} streams, HTTP on {}",
            natsconf::host_port(&config.host, config.port)
        ),
        None => format!(
            "connected to {}, {streams} streams, HTTP on {}",
            app.nats_urls().join(", "),
            natsconf::host_port(&config.host, config.port)
        ),
    };
    systemd::ready(&line);
    tracing::info!(
        startup_ms = app.started.elapsed().as_millis() as u64,
        "ready: {line}"
    );

    // 5. Serve.
    let code = tokio::select! {
        _ = crate::flag_set(stop) => exit::OK,
        r = sup_done(supervisor) => ended_early(r, supervisor),
    };
    let _ = maint_stop_tx.send(true);
    let _ = maint.await;
    code
}

/// Resolves when the first child became healthy (false: status sender gone).
async fn first_ready(child: &mut watch::Receiver<ChildStatus>) -> bool {
    child.wait_for(|s| s.generation >= 1).await.is_ok()
}

/// The supervisor ended without being asked: take its result so the caller
/// does not await it twice.
fn ended_early(
    r: Result<Result<(), SupervisorError>, tokio::task::JoinError>,
    supervisor: &mut Option<SupTask>,
) -> i32 {
    *supervisor = None;
    match r {
        Ok(Ok(())) => exit::OK,
        Ok(Err(e)) => failure_code(&e),
        Err(e) => {
            tracing::error!(error = %e, "supervisor task failed");
            exit::SOFTWARE
        }
    }
}

/// Keeps streams and the publish matcher current: after every new healthy
/// child (memory streams died with the old one), after every reconnect, and
/// periodically to repair drift.
async fn maintain(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut child = app.child.clone();
    let mut seen_generation = child.borrow().generation;
    let mut resync = tokio::time::interval(app.config.supervisor.stream_resync_interval.get());
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    loop {
        tokio::select! {
            changed = child.changed(), if app.supervised => {
                if changed.is_err() { break; }
                let generation = child.borrow().generation;
                if generation == seen_generation { continue; }
                seen_generation = generation;
                // New child: the client retries every 100 ms (see
                // App::connect), so it is back within moments.
                if !app.wait_connected(Duration::from_secs(5)).await {
                    tracing::warn!("not reconnected to the new nats-server within 5 s");
                    continue;
                }
            }
            _ = app.reconnected.notified() => {}
            _ = resync.tick() => {}
            _ = crate::flag_set(&mut stop) => break,
        }
        if !app.is_connected() {
            continue;
        }
        if let Err(e) = app.sync_streams().await {
            tracing::warn!(error = %e, "stream reconciliation failed; will retry");
        }
    }
}

/// `check-config`: validation, then nats-server's own check of the
/// rendered file when the binary is at hand.
pub fn check_config(loaded: &Loaded) -> i32 {
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let c = &loaded.config;
    if c.auto_start_nats {
        match supervisor::resolve_server_bin(c) {
            Err(e) => eprintln!(
                "warning: {e}; nats-server's own check of the generated config was skipped"
            ),
            Ok(bin) => {
                if let Err(e) = nats_server_test(&bin, loaded) {
                    eprintln!(
                        "{}: the generated nats-server config is refused by {}: {e}",
                        source_text(loaded),
                        bin.display()
                    );
                    return exit::CONFIG;
                }
            }
        }
    }
    println!("{}: OK", source_text(loaded));
    exit::OK
}

/// Runs `nats-server -t` on the rendered config (written 0600 to a private
/// temporary file, removed after).
fn nats_server_test(bin: &std::path::Path, loaded: &Loaded) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = render(loaded, false);
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
    let internal = loaded.config.auto_start_nats.then(|| Credentials {
        user: natsconf::INTERNAL_USER.into(),
        password: "********".into(),
    });
    natsconf::render(
        &loaded.config,
        &RenderOptions {
            internal,
            mask_secrets: mask,
            source: source_text(loaded),
        },
    )
}
