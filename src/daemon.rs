//! The daemon's life: bind, supervise, connect, reconcile, serve, stop.
//!
//! Order matters and is the point of this module:
//! start:  bind the HTTP port (fail fast; /health answers 503 meanwhile) ->
//!         start nats-server and wait until it is healthy -> connect ->
//!         reconcile streams -> READY.
//! reload: RELOADING -> read and validate the file (a bad one changes
//!         nothing) -> reload::plan -> bind a new HTTP address first ->
//!         hot-reload or restart nats-server -> put the config in force ->
//!         reconnect / reconcile as the plan says -> READY.
//! stop:   STOPPING -> stop HTTP (drain) -> SIGTERM nats-server (SIGKILL
//!         after stop_timeout) -> exit 0, no orphan.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::app::{internal_credentials, App};
use crate::config::{Config, Loaded, Source};
use crate::exit;
use crate::natsconf::{self, Credentials, RenderOptions};
use crate::reload::{self, NatsAction};
use crate::server_version::ServerVersion;
use crate::supervisor::{
    self, probe, Applied, ChildStatus, Command, Phase, Supervisor, SupervisorError,
};
use crate::systemd;

fn source_text(l: &Loaded) -> String {
    match &l.source {
        Source::File(p) => p.display().to_string(),
        Source::BuiltinDefaults => "built-in defaults".into(),
    }
}

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

/// The daemon's pid, for `marketprism-broker reload` without --pid.
pub const PID_FILE: &str = "marketprism-broker.pid";
/// `<count>\t<ok|failed>\t<message>`: the outcome of the last reload,
/// which `marketprism-broker reload` waits for.
pub const RELOAD_STATE_FILE: &str = "reload-state";

fn write_reload_state(dir: &std::path::Path, count: u64, ok: bool, message: &str) {
    let line = format!(
        "{count}\t{}\t{}\n",
        if ok { "ok" } else { "failed" },
        message.replace('\n', " ")
    );
    if let Err(e) = supervisor::write_atomic(&dir.join(RELOAD_STATE_FILE), line.as_bytes(), 0o644) {
        tracing::warn!(error = %e, "cannot record the reload outcome: {e}");
    }
}

fn read_reload_state(dir: &std::path::Path) -> Option<(u64, bool, String)> {
    let text = std::fs::read_to_string(dir.join(RELOAD_STATE_FILE)).ok()?;
    let mut parts = text.trim_end().splitn(3, '\t');
    let count = parts.next()?.parse().ok()?;
    let ok = parts.next()? == "ok";
    Some((count, ok, parts.next().unwrap_or("").to_string()))
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
    let source = source_text(&loaded);
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
    let listener = match bind_http(&config.host, config.port).await {
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
    // Validation read these files a moment ago; read them for use now.
    match crate::http::auth::Security::load(&config) {
        Ok(s) => {
            if let Some(what) = s.describe() {
                tracing::info!("HTTP API: {what} loaded");
            }
            app.set_security(s);
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("marketprism-broker: invalid config: {e}");
            return exit::CONFIG;
        }
    }
    let runtime_dir = config.runtime_dir();
    if let Err(e) = std::fs::create_dir_all(&runtime_dir).and_then(|_| {
        supervisor::write_atomic(
            &runtime_dir.join(PID_FILE),
            format!("{}\n", std::process::id()).as_bytes(),
            0o644,
        )
    }) {
        tracing::warn!(dir = %runtime_dir.display(), error = %e, "cannot write the pid file in {}: {e}", runtime_dir.display());
    }
    write_reload_state(&runtime_dir, 0, true, "started");
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
    systemd::stopping();
    let _ = ctx.app.closing.send(true);
    if let Some(h) = ctx.http.take() {
        h.stop().await;
    }
    // Whatever our client still buffers goes out while the server lives.
    if let Some(n) = ctx.app.connected_nats() {
        let _ = tokio::time::timeout(Duration::from_secs(2), n.client.flush()).await;
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
    let _ = std::fs::remove_file(ctx.runtime_dir.join(PID_FILE));
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
            let e = unsupported(source, e);
            tracing::error!("invalid config: {e}");
            eprintln!("marketprism-broker: invalid config: {e}");
            false
        }
    }
}

/// A key the nats-server cannot take, as a config error with its file and
/// line.
fn unsupported(
    source: &Source,
    e: crate::server_version::Unsupported,
) -> crate::config::ConfigError {
    crate::config::error_at(source, e.key, e.message)
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
    let maint = tokio::spawn(maintain(app.clone(), bg_stop_rx.clone()));
    let status = tokio::spawn(report_status(app.clone(), bg_stop_rx.clone()));
    let rates = tokio::spawn(sample_rates(app.clone(), bg_stop_rx.clone()));
    let watchdog = (ctx.supervisor.is_none()).then(|| tokio::spawn(feed_watchdog(bg_stop_rx)));

    // 4. Ready.
    let line = status_line(&app, None);
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
            _ = signals.reload.notified() => reload(ctx).await,
        }
    };
    let _ = bg_stop_tx.send(true);
    let _ = maint.await;
    let _ = status.await;
    let _ = rates.await;
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

/// SIGHUP: re-read the config, apply what changed, tell systemd.
/// RELOADING=1 first, READY=1 when done, whether the reload worked or not:
/// a failed reload leaves the old config running, which is a ready state.
async fn reload(ctx: &mut Ctx) {
    systemd::reloading();
    let started = Instant::now();
    let outcome = apply_reload(ctx).await;
    ctx.reloads += 1;
    let app = &ctx.app;
    app.stats.reloaded(outcome.is_ok());
    match &outcome {
        Ok(summary) => {
            app.set_note(None);
            tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "reload done: {summary}"
            );
            write_reload_state(&ctx.runtime_dir, ctx.reloads, true, summary);
        }
        Err(e) => {
            app.set_note(Some(format!("reload failed: {e}")));
            tracing::error!("reload failed: {e}");
            write_reload_state(&ctx.runtime_dir, ctx.reloads, false, e);
        }
    }
    systemd::ready(&status_line(app, None));
}

async fn apply_reload(ctx: &mut Ctx) -> Result<String, String> {
    let explicit = ctx.explicit.clone();
    // The tokens file and the API certificate are re-read on every reload,
    // changed config or not (rotating them is what a SIGHUP is for); a bad
    // one keeps the old ones, and the old config with them.
    let (loaded, security) = tokio::task::spawn_blocking(move || {
        let loaded = crate::config::load_for_reload(explicit.as_deref(), Duration::from_millis(20))
            .map_err(|e| e.to_string())?;
        let security = crate::http::auth::Security::load(&loaded.config)?;
        Ok::<_, String>((loaded, security))
    })
    .await
    .map_err(|e| format!("cannot read the config: {e}"))?
    .map_err(|e| format!("{e}; still running on the previous config"))?;
    for w in &loaded.warnings {
        tracing::warn!("config: {w}");
    }
    let old = ctx.app.config();
    let new = Arc::new(loaded.config);
    let plan = reload::plan(&old, &new);
    if let Some(why) = plan.refused {
        return Err(format!("{why}; still running on the previous config"));
    }
    if new.auto_start_nats {
        let bin = supervisor::resolve_server_bin(&new).ok();
        let v = tokio::task::spawn_blocking(move || bin.and_then(|b| ServerVersion::query(&b)))
            .await
            .unwrap_or(None);
        crate::server_version::durability_notes(&new, v).map_err(|e| {
            format!(
                "{}; still running on the previous config",
                unsupported(&loaded.source, e)
            )
        })?;
    }
    let secured = security.describe();
    if plan.is_noop() && plan.nats == NatsAction::Nothing {
        ctx.app.set_security(security);
        return Ok(match secured {
            Some(what) => format!("the configuration is unchanged; re-read the HTTP API's {what}"),
            None => "the configuration is unchanged".into(),
        });
    }
    for c in &plan.changes {
        tracing::info!("reload: {c}");
    }
    // The new HTTP address first: if it cannot be had, nothing changes.
    // Only the same port on another host (127.0.0.1 -> 0.0.0.0) overlaps
    // the old socket: then the old one must go first, and comes back if
    // the new bind fails.
    let listener = if !plan.rebind_http {
        None
    } else if new.port == old.port {
        if let Some(h) = ctx.http.take() {
            h.stop().await;
        }
        match bind_http(&new.host, new.port).await {
            Ok(l) => Some(l),
            Err(e) => {
                if let Ok(l) = bind_http(&old.host, old.port).await {
                    ctx.http = Some(Http::start(l, ctx.app.clone()));
                }
                return Err(format!("{e}; still running on the previous config"));
            }
        }
    } else {
        Some(
            bind_http(&new.host, new.port)
                .await
                .map_err(|e| format!("{e}; still running on the previous config"))?,
        )
    };
    let mut summary = Vec::new();
    let mut failing = None;
    if let Some(commands) = &ctx.commands {
        let (tx, rx) = oneshot::channel();
        commands
            .send(Command::Apply {
                config: new.clone(),
                action: plan.nats,
                reply: tx,
            })
            .await
            .map_err(|_| "the supervisor is gone".to_string())?;
        let s = &new.supervisor;
        let wait = s.stop_timeout.get() + s.start_timeout.get() + Duration::from_secs(5);
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Applied::Done(what))) => summary.push(what),
            Ok(Ok(Applied::Refused(why))) => {
                return Err(format!("{why}; still running on the previous config"))
            }
            Ok(Ok(Applied::Failing(why))) => failing = Some(why),
            Ok(Err(_)) => return Err("the supervisor ended during the reload".into()),
            Err(_) => failing = Some(format!("nats-server did not come back within {wait:?}")),
        }
    }
    ctx.app.set_config(new.clone());
    ctx.app.durability.set_streams_dir(new.streams_dir());
    ctx.app.set_security(security);
    if let Some(what) = secured {
        summary.push(format!("re-read the HTTP API's {what}"));
    }
    if plan.reconnect_client {
        match ctx.app.repoint_client().await {
            Ok(()) => summary.push(format!(
                "client reconnecting to {}",
                ctx.app.nats_urls().join(", ")
            )),
            Err(e) => failing = failing.or(Some(e)),
        }
    }
    if let Some(listener) = listener {
        let old_http = ctx.http.replace(Http::start(listener, ctx.app.clone()));
        if let Some(h) = old_http {
            // In-flight requests on the old address finish in their own time.
            tokio::spawn(h.stop());
        }
        summary.push(format!(
            "HTTP API moved to {}",
            natsconf::host_port(&new.host, new.port)
        ));
    }
    if (plan.reconcile_streams || plan.reconnect_client)
        && ctx.app.wait_connected(Duration::from_secs(5)).await
    {
        match ctx.app.sync_streams().await {
            Ok(()) => summary.push("streams reconciled".into()),
            Err(e) => failing = failing.or(Some(format!("stream reconciliation failed: {e}"))),
        }
    }
    summary.push(format!("{} change(s)", plan.changes.len()));
    match failing {
        None => Ok(summary.join("; ")),
        Some(why) => Err(format!("the new configuration is in force, but: {why}")),
    }
}

/// One line a person understands, for systemd's STATUS=.
fn status_line(app: &App, connections: Option<u64>) -> String {
    let child = app.child.borrow().clone();
    let streams = app.sync.lock().map(|s| s.report.streams.len()).unwrap_or(0);
    let conns = connections
        .map(|c| format!(", {c} connection{}", if c == 1 { "" } else { "s" }))
        .unwrap_or_default();
    let base = if app.supervised {
        match (child.phase, child.pid) {
            (Phase::Running, Some(pid)) => {
                format!("nats-server pid {pid} healthy, {streams} streams{conns}")
            }
            (Phase::Restarting, _) => match (child.restart_in, &child.last_failure) {
                (Some(d), Some(why)) => {
                    format!("restarting nats-server in {} ms ({why})", d.as_millis())
                }
                _ => "restarting nats-server".into(),
            },
            (Phase::Failed, _) => format!(
                "gave up on nats-server: {}",
                child.last_failure.unwrap_or_default()
            ),
            (phase, _) => format!("nats-server {}", phase.as_str()),
        }
    } else if app.is_connected() {
        format!(
            "connected to {}, {streams} streams{conns}",
            app.nats_urls().join(", ")
        )
    } else {
        format!("waiting for NATS at {}", app.nats_urls().join(", "))
    };
    match app.note() {
        Some(note) => format!("{base}; {note}"),
        None => base,
    }
}

/// Keeps systemd's STATUS= current: on every child change, and every few
/// seconds for the connection count.
async fn report_status(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut child = app.child.clone();
    let mut every = tokio::time::interval(Duration::from_secs(5));
    let mut last = String::new();
    let mut connections = None;
    let mut cluster_note: Option<String> = None;
    loop {
        tokio::select! {
            changed = child.changed(), if app.supervised => if changed.is_err() { break },
            _ = every.tick() => {
                connections = app.varz().await.and_then(|v| v["connections"].as_u64());
                // A cluster that lost its quorum is worth a word in STATUS=.
                cluster_note = app.meta_problem().await;
            }
            _ = crate::flag_set(&mut stop) => break,
        }
        let mut line = status_line(&app, connections);
        if let Some(p) = cluster_note.as_deref() {
            line = format!("{line}; {p}");
        }
        if line != last {
            systemd::status(&line);
            last = line;
        }
    }
}

/// Samples the message totals every second for the status' 1-minute
/// rates (the publish path only bumps counters).
async fn sample_rates(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => app.stats.sample_rates(Instant::now()),
            _ = crate::flag_set(&mut stop) => break,
        }
    }
}

/// External mode's watchdog feeder (supervised mode feeds it from the
/// supervisor loop): runs on the runtime, so a wedged runtime stops it.
async fn feed_watchdog(mut stop: watch::Receiver<bool>) {
    let mut i = systemd::watchdog_period().map(tokio::time::interval);
    loop {
        tokio::select! {
            _ = supervisor::tick(&mut i) => systemd::watchdog(),
            _ = crate::flag_set(&mut stop) => break,
        }
    }
}

/// Keeps streams and the publish matcher current: after every new healthy
/// child (memory streams died with the old one), after every reconnect, and
/// periodically to repair drift.
async fn maintain(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut child = app.child.clone();
    let mut seen_generation = child.borrow().generation;
    let mut resync = tokio::time::interval(app.config().supervisor.stream_resync_interval.get());
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    // After a failed or incomplete sync (a cluster without a meta leader,
    // a peer still starting): try again soon, not a whole interval later.
    // A cluster node that started without a meta leader has not synced yet.
    let mut retry_at: Option<tokio::time::Instant> =
        (app.clustered_jetstream() && !app.streams_synced()).then(tokio::time::Instant::now);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {}
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
        retry_at = None;
        let ok = match app.sync_streams().await {
            Ok(()) => app
                .sync
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .report
                .missing
                .is_empty(),
            Err(e) => {
                tracing::warn!(error = %e, "stream reconciliation failed ({e}); will retry");
                false
            }
        };
        if !ok && app.clustered_jetstream() {
            retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(2));
        }
    }
}

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
    let pid = match pid.or_else(|| {
        let dir = dir.as_ref()?;
        std::fs::read_to_string(dir.join(PID_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }) {
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
    let before = dir.as_deref().and_then(read_reload_state).map(|s| s.0);
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
        if let Some((count, ok, message)) = read_reload_state(&dir) {
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
                            unsupported(&loaded.source, e)
                        );
                        return exit::CONFIG;
                    }
                }
                if let Err(e) = nats_server_test(&bin, v, loaded) {
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
            source: source_text(loaded),
            server_version: v,
        },
    )
}
