//! The daemon's life: bind, supervise, connect, reconcile, serve, stop.
//!
//! Order matters and is the point of this module:
//! start:  bind the HTTP port (fail fast; /health answers 503 meanwhile) ->
//!         start nats-server and wait until it is healthy -> connect ->
//!         reconcile streams -> READY.
//! reload: see `reload.rs`.
//! stop:   STOPPING -> stop HTTP (drain) -> SIGTERM nats-server (SIGKILL
//!         after stop_timeout) -> exit 0, no orphan. A clustered node:
//!         STOPPING -> lame duck (SIGUSR2; HTTP answers 503 "draining")
//!         -> nats-server exits by itself (else SIGINT, then SIGKILL)
//!         -> stop HTTP -> exit 0.
//!
//! The background tasks that run meanwhile are in `tasks.rs`; the meta
//! group self-heal in `heal.rs`.

mod heal;
mod reload;
mod tasks;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch, Notify};

use crate::app::{internal_credentials, App};
use crate::config::{Config, Loaded, Source};
use crate::exit;
use crate::natsconf::RenderOptions;
use crate::probe;
use crate::runfiles::{self, ReloadState};
use crate::server_version::ServerVersion;
use crate::supervisor::{self, ChildStatus, Command, Supervisor, SupervisorError};
use crate::systemd;

/// What the signals ask for: `stop` turns true on SIGTERM/SIGINT;
/// `reload` is notified on SIGHUP (a burst of them coalesces into one
/// pending reload, which then reads the newest file).
struct Signals {
    stop: watch::Receiver<bool>,
    reload: Arc<Notify>,
}

fn signals() -> std::io::Result<Signals> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, stop) = watch::channel(false);
    let reload = Arc::new(Notify::new());
    let on_hup = reload.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM received: stopping"); let _ = tx.send(true); }
                _ = int.recv() => { tracing::info!("SIGINT received: stopping"); let _ = tx.send(true); }
                _ = hup.recv() => { tracing::info!("SIGHUP received: reloading the configuration"); on_hup.notify_one(); }
            }
        }
    });
    Ok(Signals { stop, reload })
}

/// The HTTP server task and the switch that stops it.
struct Http {
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Http {
    fn start(listener: TcpListener, app: Arc<App>) -> Http {
        let (stop, rx) = watch::channel(false);
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let scheme = if app.security().tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!("HTTP API listening on {scheme}://{addr}");
        Http {
            task: tokio::spawn(crate::http::serve(listener, app, rx)),
            stop,
        }
    }

    /// Stops accepting and lets in-flight requests finish (api.drain_timeout).
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Binds the HTTP API's address, naming the port's holder when taken.
async fn bind_http(host: &str, port: u16) -> Result<TcpListener, String> {
    TcpListener::bind((host, port)).await.map_err(|e| {
        probe::check_port_free(host, port, "HTTP API port `port`")
            .err()
            .unwrap_or_else(|| format!("cannot listen on {host}:{port}: {e}"))
    })
}

/// The HTTP API's listener: the one systemd kept in its fd store over a
/// restart (see [`systemd::store_fd`]) when it listens where the config
/// says, else a fresh one, which is then handed to the store. A socket
/// that lives on in the store is why a restart refuses no connection:
/// they wait in its backlog for the next daemon (503 until it is ready).
async fn http_listener(host: &str, port: u16) -> Result<TcpListener, String> {
    let mut stored = None;
    for (name, fd) in systemd::take_listen_fds() {
        if name == systemd::HTTP_FD_NAME && stored.is_none() {
            stored = Some(fd);
        } else {
            tracing::warn!(name = %name, "ignoring a file descriptor systemd passed under the name {name:?}");
        }
    }
    if let Some(fd) = stored {
        let std_listener = std::net::TcpListener::from(fd);
        let addr = std_listener.local_addr().ok();
        let wanted = tokio::net::lookup_host((host, port))
            .await
            .map(|a| a.collect::<Vec<_>>())
            .unwrap_or_default();
        match addr {
            Some(a) if wanted.contains(&a) && std_listener.set_nonblocking(true).is_ok() => {
                if let Ok(l) = TcpListener::from_std(std_listener) {
                    tracing::info!(addr = %a, "HTTP API: took over the listening socket {a} kept by systemd across the restart");
                    return Ok(l);
                }
            }
            _ => {
                let was = addr.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
                tracing::info!(was = %was, "HTTP API: the socket systemd kept listens on {was}, not {}; binding afresh", crate::natsconf::host_port(host, port));
                systemd::remove_stored_fd(systemd::HTTP_FD_NAME);
                // Before the new one is stored: the removal drops every
                // fd of that name.
                systemd::flush(Duration::from_secs(2));
            }
        }
    }
    let l = bind_http(host, port).await?;
    keep_in_fd_store(&l);
    Ok(l)
}

/// Hands a fresh HTTP listener to systemd's fd store (a no-op outside
/// systemd; a warning when the unit lacks FileDescriptorStoreMax=, which
/// systemd reports only in its own log).
fn keep_in_fd_store(l: &TcpListener) {
    use std::os::fd::AsFd;
    if let Err(e) = systemd::store_fd(l.as_fd(), systemd::HTTP_FD_NAME) {
        tracing::warn!(error = %e, "cannot hand the HTTP socket to systemd's fd store ({e}): a restart refuses connections meanwhile");
    }
}

/// What the running daemon is made of, for reloads and shutdown.
struct Ctx {
    app: Arc<App>,
    http: Option<Http>,
    supervisor: Option<SupTask>,
    commands: Option<mpsc::Sender<Command>>,
    /// The --config path, so a reload reads what start-up read.
    explicit: Option<PathBuf>,
    /// Where the pid and reload-state files live (fixed at start).
    runtime_dir: PathBuf,
    reloads: u64,
}

pub async fn run(loaded: Loaded, explicit: Option<PathBuf>) -> i32 {
    let source = loaded.source.to_string();
    match &loaded.source {
        Source::File(p) => {
            tracing::info!(config = %p.display(), version = env!("CARGO_PKG_VERSION"), "marketprism-broker {} starting with {}", env!("CARGO_PKG_VERSION"), p.display())
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
    let mut signals = match signals() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers: {e}");
            return exit::SOFTWARE;
        }
    };

    // The HTTP port first: a taken port is found before nats-server starts.
    let listener = match http_listener(&config.host, config.port).await {
        Ok(l) => l,
        Err(msg) => {
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
            eprintln!("marketprism-broker: {msg}");
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
    // Validation loaded them: what it checked is what the server uses.
    if let Some(what) = loaded.security.describe() {
        tracing::info!("HTTP API: {what} loaded");
    }
    app.set_security(loaded.security.clone());
    let runtime_dir = config.runtime_dir();
    if let Err(e) = runfiles::write_pid(&runtime_dir) {
        tracing::warn!(dir = %runtime_dir.display(), error = %e, "cannot write the pid file in {}: {e}", runtime_dir.display());
    }
    runfiles::write_reload_state(
        &runtime_dir,
        &ReloadState {
            count: 0,
            ok: true,
            message: "started".into(),
        },
    );
    let mut ctx = Ctx {
        http: Some(Http::start(listener, app.clone())),
        app,
        supervisor: None,
        commands: None,
        explicit,
        runtime_dir,
        reloads: 0,
    };

    let (child_stop_tx, child_stop_rx) = watch::channel(false);
    if config.auto_start_nats {
        let bin = match supervisor::resolve_server_bin(&config) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("marketprism-broker: {e}");
                if let Some(h) = ctx.http.take() {
                    h.stop().await;
                }
                return exit::UNAVAILABLE;
            }
        };
        let server_version = {
            let bin = bin.clone();
            tokio::task::spawn_blocking(move || ServerVersion::query(&bin))
                .await
                .unwrap_or(None)
        };
        match server_version {
            Some(v) => {
                tracing::info!(version = %v, bin = %bin.display(), "nats-server {v} ({})", bin.display())
            }
            None => {
                tracing::warn!(bin = %bin.display(), "cannot tell the version of {}", bin.display())
            }
        }
        if !say_durability(&config, &loaded.source, server_version) {
            if let Some(h) = ctx.http.take() {
                h.stop().await;
            }
            return exit::CONFIG;
        }
        let render = RenderOptions {
            internal: credentials,
            mask_secrets: false,
            source: source.clone(),
            server_version,
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(4);
        match Supervisor::new(config.clone(), render, bin, status_tx) {
            Ok(s) => {
                ctx.supervisor = Some(tokio::spawn(s.run(child_stop_rx, cmd_rx)));
                ctx.commands = Some(cmd_tx);
            }
            Err(e) => {
                tracing::error!("{e}");
                return exit::UNAVAILABLE;
            }
        }
    } else {
        drop(status_tx);
        say_durability(&config, &loaded.source, None);
    }

    let outcome = start_and_serve(&mut ctx, &mut signals).await;

    // Stop: HTTP first, so no request meets a stopping nats-server; event
    // streams end themselves (they would otherwise hold the drain open).
    // A clustered node drains instead (lame duck, see
    // supervisor::lame_duck_wait): HTTP stays open meanwhile, so clients
    // and load balancers get 503 + Retry-After "draining" (publishes,
    // /health) rather than a refused connection, and it stops after
    // nats-server.
    systemd::stopping();
    let _ = ctx.app.closing.send(true);
    let drains = ctx.supervisor.is_some()
        && supervisor::lame_duck_wait(&ctx.app.config()).is_some()
        && ctx.app.child.borrow().phase == supervisor::Phase::Running;
    if !drains {
        if let Some(h) = ctx.http.take() {
            h.stop().await;
        }
    }
    // Whatever our client still buffers goes out, and nats-server reads
    // it, while the server lives.
    if let Some(n) = ctx.app.connected_nats() {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            crate::app::server_read_all(&n.client),
        )
        .await;
    }
    let _ = child_stop_tx.send(true);
    let mut code = outcome;
    if let Some(task) = ctx.supervisor.take() {
        code = match task.await {
            Ok(Ok(())) => code,
            Ok(Err(e)) => failure_code(&e),
            Err(e) => {
                tracing::error!(error = %e, "supervisor task failed: {e}");
                exit::SOFTWARE
            }
        };
    }
    if let Some(h) = ctx.http.take() {
        h.stop().await;
    }
    runfiles::remove_pid(&ctx.runtime_dir);
    tracing::info!(code, "marketprism-broker stopped");
    code
}

/// Logs, once, what the config and the server version mean for durability
/// (see [`crate::server_version::durability_notes`]); false when the config
/// asks the server for what it lacks.
fn say_durability(config: &Config, source: &Source, v: Option<ServerVersion>) -> bool {
    match crate::server_version::durability_notes(config, v) {
        Ok(notes) => {
            for n in notes {
                tracing::warn!("durability: {n}");
            }
            true
        }
        Err(e) => {
            let e = e.at(source);
            tracing::error!("invalid config: {e}");
            eprintln!("marketprism-broker: invalid config: {e}");
            false
        }
    }
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
async fn start_and_serve(ctx: &mut Ctx, signals: &mut Signals) -> i32 {
    let app = ctx.app.clone();
    let config = app.config();
    let mut child = app.child.clone();

    // 1. nats-server healthy (supervised mode). Meanwhile keep systemd's
    //    start timeout ahead of us: a big JetStream store can take longer
    //    to recover than TimeoutStartSec, and start_timeout bounds it.
    if ctx.supervisor.is_some() {
        let every = (config.supervisor.start_timeout.get() / 4).min(Duration::from_secs(5));
        let mut extend = tokio::time::interval(every);
        let waiting_since = Instant::now();
        loop {
            tokio::select! {
                ok = first_ready(&mut child) => { if !ok { return exit::SOFTWARE; } break; }
                r = sup_done(&mut ctx.supervisor) => { return ended_early(r, &mut ctx.supervisor); }
                _ = crate::flag_set(&mut signals.stop) => return exit::OK,
                _ = extend.tick() => {
                    let waited = waiting_since.elapsed().as_secs();
                    systemd::extend_timeout(every * 3, &format!("waiting for nats-server to become healthy ({waited} s; JetStream may be recovering its store)"));
                }
            }
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
            tracing::warn!(urls = ?app.nats_urls(), "not connected to NATS at {} after {wait:?}; going on and reconnecting in the background", app.nats_urls().join(", "));
        },
        r = sup_done(&mut ctx.supervisor) => { return ended_early(r, &mut ctx.supervisor); }
        _ = crate::flag_set(&mut signals.stop) => return exit::OK,
    }

    // 2b. In a cluster, a JetStream meta leader: streams cannot be created
    //     without one, and /health is degraded until there is one. Peers
    //     started at the same moment elect one within a few seconds;
    //     start_timeout (from the daemon's start) bounds the wait.
    let mut leaderless = false;
    if app.clustered_jetstream() {
        let deadline = app.started + wait;
        let mut said: Option<Instant> = None;
        loop {
            let Some(problem) = app.meta_problem().await else {
                tracing::info!(
                    waited_ms = app.started.elapsed().as_millis() as u64,
                    "JetStream cluster has a meta leader"
                );
                break;
            };
            if Instant::now() >= deadline {
                tracing::warn!(problem = %problem, "still no JetStream meta leader after start_timeout ({wait:?}): {problem}; going on, streams are reconciled once there is one");
                leaderless = true;
                break;
            }
            if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                let line = format!("waiting for the JetStream cluster: {problem}");
                tracing::info!("{line}");
                systemd::extend_timeout(Duration::from_secs(15), &line);
                said = Some(Instant::now());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                r = sup_done(&mut ctx.supervisor) => { return ended_early(r, &mut ctx.supervisor); }
                _ = crate::flag_set(&mut signals.stop) => return exit::OK,
            }
        }
    }

    // 3. Streams. Without a meta leader every JetStream request would wait
    //    out its timeout, round after round, past start_timeout: leave it
    //    to the background task (it starts with a sync and retries every
    //    2 s in a cluster).
    if app.is_connected() && !leaderless {
        if let Err(e) = app.sync_streams().await {
            tracing::error!(error = %e, "stream reconciliation failed ({e}); retrying in the background");
        }
    }
    let (bg_stop_tx, bg_stop_rx) = watch::channel(false);
    let maint = tokio::spawn(tasks::maintain(app.clone(), bg_stop_rx.clone()));
    let status = tokio::spawn(tasks::report_status(app.clone(), bg_stop_rx.clone()));
    let rates = tokio::spawn(tasks::sample_rates(app.clone(), bg_stop_rx.clone()));
    let heal = tokio::spawn(heal::heal_meta(
        app.clone(),
        ctx.commands.clone(),
        bg_stop_rx.clone(),
    ));
    let watchdog =
        (ctx.supervisor.is_none()).then(|| tokio::spawn(tasks::feed_watchdog(bg_stop_rx)));

    // 4. Ready.
    let line = tasks::status_line(&app);
    systemd::ready(&line);
    tracing::info!(
        startup_ms = app.started.elapsed().as_millis() as u64,
        "ready: {line}"
    );

    // 5. Serve; reload on SIGHUP.
    let code = loop {
        tokio::select! {
            _ = crate::flag_set(&mut signals.stop) => break exit::OK,
            r = sup_done(&mut ctx.supervisor) => break ended_early(r, &mut ctx.supervisor),
            _ = signals.reload.notified() => reload::reload(ctx).await,
        }
    };
    let _ = bg_stop_tx.send(true);
    let _ = maint.await;
    let _ = status.await;
    let _ = rates.await;
    let _ = heal.await;
    if let Some(w) = watchdog {
        let _ = w.await;
    }
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
            tracing::error!(error = %e, "supervisor task failed: {e}");
            exit::SOFTWARE
        }
    }
}
