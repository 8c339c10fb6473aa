//! Supervision of the nats-server child: the I/O shell around the pure
//! state machine in `state.rs`.
//!
//! Per spawn: render the config and write it atomically (0600) into the
//! state dir, check the ports, spawn (see `spawn.rs`), re-log its output,
//! probe until ready (/healthz + a NATS round trip), then probe
//! periodically; exits, hangs and start timeouts become events, and the
//! machine's actions (restart after backoff, kill, give up) are carried out
//! here.

pub mod backoff;
mod prober;
pub mod relay;
pub mod spawn;
pub mod state;
pub mod status;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncRead;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::config::Config;
use crate::natsconf::{self, RenderOptions};
use crate::probe;
use crate::reload::NatsAction;
use prober::{InFlight, Prober};
use relay::relay;
pub use relay::{parse_child_line, ChildLevel, Tail};
use spawn::{SpawnSpec, Spawner};
use state::{Action, Event, Machine, Policy, State};
pub use status::{ChildStatus, Exit, Phase, Ports};

/// Why supervision ended with an error (mapped to exit codes by the caller).
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// nats-server cannot be run: binary missing, port taken, crash loop.
    #[error("{0}")]
    Unavailable(String),
    /// The state directory cannot be created or written.
    #[error("{0}")]
    CantCreate(String),
}

/// How a config change went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// In force; says what happened to nats-server.
    Done(String),
    /// Nothing was changed (a port the new config needs is taken, ...).
    Refused(String),
    /// The new config is in force, but nats-server fails with it (the
    /// supervisor keeps retrying).
    Failing(String),
}

/// What the daemon asks of a running supervisor.
pub enum Command {
    /// Take a new config (a reload). `action` says what nats-server needs;
    /// `reply` gets a sentence saying what was done, or why it failed.
    Apply {
        config: Arc<Config>,
        action: NatsAction,
        reply: oneshot::Sender<Applied>,
    },
    /// Restart a running child with the same config (the daemon's
    /// self-heal of a meta group that misses a peer; the caller logs
    /// why). Through lame duck in a cluster, like a reload's restart;
    /// ignored when the child is not running (it is being started or
    /// restarted already).
    Restart,
}

fn policy(c: &Config) -> Policy {
    let s = &c.supervisor;
    Policy {
        start_timeout: s.start_timeout.get(),
        stop_timeout: s.stop_timeout.get(),
        health_failures: s.health_failures,
        backoff_initial: s.backoff_initial.get(),
        backoff_max: s.backoff_max.get(),
        stable_after: s.stable_after.get(),
        max_failures: s.max_failures,
        failure_window: s.failure_window.get(),
        lame_duck: lame_duck_wait(c),
    }
}

/// How long a child in lame-duck mode may take to exit by itself; None
/// when the node is not clustered.
///
/// Why only a cluster: lame-duck mode (nats-server's lameDuckMode(),
/// 2.9.10 to 2.14) closes the client port, hands raft leaderships over
/// (then waits 1 s), tells clients `ldm` so they reconnect elsewhere,
/// waits `lame_duck_grace_period`, then closes its clients spread over
/// the rest of `lame_duck_duration` (at most 1 s apart) and exits 0. A
/// single node has nowhere to send clients nor leaders to hand over: the
/// drain would only delay the stop, so it gets a plain SIGTERM (its
/// store is flushed on shutdown either way).
///
/// Why duration + stop_timeout: nats-server exits within about
/// `lame_duck_duration` (the grace period is part of it), plus the 1 s
/// leader hand-over and, from 2.10, JetStream's shutdown, which is what
/// `supervisor.stop_timeout` budgets for a SIGTERM too.
pub fn lame_duck_wait(c: &Config) -> Option<Duration> {
    c.cluster_enabled()
        .then(|| c.nats.lame_duck_duration.get() + c.supervisor.stop_timeout.get())
}

/// STATUS= and the log while the child drains.
pub const DRAINING: &str = "draining: nats-server in lame-duck mode, clients moving to other nodes";

/// The (host, port, what) nats-server listens on under `c`.
fn listen_ports(c: &Config) -> Vec<(String, u16, &'static str)> {
    let mut ports = vec![
        (c.nats.host.clone(), c.nats.nats_port, "nats.nats_port"),
        (c.nats.host.clone(), c.nats.http_port, "nats.http_port"),
    ];
    if let Some((host, port)) = c.cluster_listen() {
        ports.push((host, port, "cluster port"));
    }
    ports
}

/// How long a SIGHUP'd nats-server gets to show a new config_load_time.
const HOT_RELOAD_CONFIRM: Duration = Duration::from_secs(5);

/// Probe period while waiting for a fresh child to become ready.
const STARTUP_PROBE_EVERY: Duration = Duration::from_millis(20);

/// Finds nats-server: the configured path, else the first on PATH, else
/// Debian's /usr/sbin/nats-server.
pub fn resolve_server_bin(c: &Config) -> Result<PathBuf, String> {
    if let Some(p) = &c.nats.server_bin {
        crate::config::check_executable(p).map_err(|e| format!("nats.server_bin: {e}"))?;
        return Ok(p.clone());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .chain([PathBuf::from("/usr/sbin/nats-server")])
        .find(|p| crate::config::check_executable(p).is_ok())
        .ok_or_else(|| {
            "nats-server not found on PATH or at /usr/sbin/nats-server: install the nats-server package or set nats.server_bin".to_string()
        })
}

/// The supervisor: owns the child, its spawner thread and its status.
pub struct Supervisor {
    config: Arc<Config>,
    render: RenderOptions,
    bin: PathBuf,
    spawner: Spawner,
    status: watch::Sender<ChildStatus>,
    tail: Arc<Mutex<Tail>>,
    /// Notified by the relays when the child says a store write failed.
    store_failed: Arc<Notify>,
    monitor: SocketAddr,
    client: SocketAddr,
}

/// A spawned child and the tasks relaying its output.
struct Running {
    child: Child,
    pid: u32,
    relays: Vec<tokio::task::JoinHandle<()>>,
    /// The tail's count of failed store writes when it was spawned.
    store_failures_before: u64,
}

impl Supervisor {
    pub fn new(
        config: Arc<Config>,
        render: RenderOptions,
        bin: PathBuf,
        status: watch::Sender<ChildStatus>,
    ) -> Result<Self, SupervisorError> {
        let spawner = Spawner::start(tokio::runtime::Handle::current()).map_err(|e| {
            SupervisorError::Unavailable(format!("cannot start the spawner thread: {e}"))
        })?;
        let n = &config.nats;
        Ok(Supervisor {
            monitor: probe::connect_addr(&n.host, n.http_port),
            client: probe::connect_addr(&n.host, n.nats_port),
            config,
            render,
            bin,
            spawner,
            status,
            tail: Arc::new(Mutex::new(Tail::default())),
            store_failed: Arc::new(Notify::new()),
        })
    }

    pub fn conf_path(&self) -> PathBuf {
        self.config.data_dir().join("nats-server.conf")
    }

    fn pid_path(&self) -> PathBuf {
        self.config.runtime_dir().join("nats-server.pid")
    }

    /// The last lines nats-server printed, for error messages.
    pub fn tail(&self, n: usize) -> Vec<String> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner()).last(n)
    }

    /// Runs until `stop` turns true (then stops the child gracefully) or
    /// supervision fails.
    pub async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut commands: mpsc::Receiver<Command>,
    ) -> Result<(), SupervisorError> {
        let mut m = Machine::new(policy(&self.config));
        // A reload that restarts the child answers once the new one is
        // ready (or has failed).
        let mut restart_reply: Option<oneshot::Sender<Applied>> = None;
        let mut commands_open = true;
        // systemd's watchdog is fed from this loop: it is the loop that
        // keeps nats-server alive, so if it (or the runtime) wedges the
        // pings stop and systemd restarts the daemon. A dead or
        // crash-looping child does not stop them: restarting it is this
        // loop's job, and giving up exits the daemon (69) for Restart= to
        // handle.
        let mut watchdog = crate::systemd::WatchdogTimer::new();
        let mut running: Option<Running> = None;
        let mut wake: Option<Instant> = None;
        let mut next_probe = Instant::now();
        let mut probe = InFlight::default();
        let mut first_spawn = true;
        let mut stop_seen = false;
        let mut pending: VecDeque<Action> = m.handle(Event::Start, Instant::now()).into();

        loop {
            while let Some(action) = pending.pop_front() {
                match action {
                    Action::Spawn => {
                        let ev = match self.spawn_child(first_spawn).await {
                            Ok(r) => {
                                let pid = r.pid;
                                tracing::info!(pid, conf = %self.conf_path().display(), "nats-server started (pid {pid}, config {})", self.conf_path().display());
                                running = Some(r);
                                probe.cancel();
                                next_probe = Instant::now();
                                Event::Spawned { pid }
                            }
                            Err(SpawnError::Fatal(e)) => return Err(e),
                            Err(SpawnError::Retry(error)) => {
                                tracing::error!(%error, "cannot start nats-server: {error}");
                                Event::SpawnFailed { error }
                            }
                        };
                        first_spawn = false;
                        pending.extend(step(&mut m, ev));
                    }
                    Action::Terminate { pid } => {
                        tracing::info!(pid, "stopping nats-server (SIGTERM to pid {pid})");
                        let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                    }
                    Action::LameDuck { pid } => {
                        let n = &self.config.nats;
                        tracing::info!(
                            pid,
                            grace_period = %n.lame_duck_grace_period,
                            duration = %n.lame_duck_duration,
                            "{DRAINING} (SIGUSR2 to pid {pid}; grace period {}, duration {})",
                            n.lame_duck_grace_period,
                            n.lame_duck_duration
                        );
                        crate::systemd::status(DRAINING);
                        let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGUSR2);
                    }
                    Action::Interrupt { pid } => {
                        tracing::warn!(
                            pid,
                            "nats-server is still draining; stopping it now (SIGINT to pid {pid})"
                        );
                        let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGINT);
                    }
                    Action::Kill { pid } => {
                        tracing::warn!(pid, "killing nats-server (SIGKILL to pid {pid})");
                        let _ = signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    }
                    Action::WakeAt(t) => wake = Some(t),
                    Action::Announce { pid } => {
                        let ports = self.read_ports().await;
                        self.status.send_modify(|st| {
                            st.generation += 1;
                            st.healthy_since = Some(SystemTime::now());
                            st.ports = ports;
                        });
                        let listening = ports
                            .map(|p| format!("clients on {}, monitor on {}", p.nats, p.http))
                            .unwrap_or_default();
                        tracing::info!(
                            pid,
                            ?ports,
                            "nats-server is ready (pid {pid}; {listening})"
                        );
                        if let Some(r) = restart_reply.take() {
                            let _ = r.send(Applied::Done(format!(
                                "nats-server restarted with the new config (pid {pid})"
                            )));
                        }
                    }
                    Action::GiveUp { reason } => {
                        self.publish_status(&m);
                        let tail = self.tail(10);
                        let _ = std::fs::remove_file(self.pid_path());
                        let mut msg = reason;
                        if !tail.is_empty() {
                            msg.push_str("\nlast nats-server output:\n  ");
                            msg.push_str(&tail.join("\n  "));
                        }
                        if let Some(r) = restart_reply.take() {
                            let _ = r.send(Applied::Failing(msg.clone()));
                        }
                        return Err(SupervisorError::Unavailable(msg));
                    }
                    Action::Done => {
                        self.publish_status(&m);
                        let _ = std::fs::remove_file(self.pid_path());
                        tracing::info!("nats-server stopped");
                        return Ok(());
                    }
                }
            }
            self.note_store_failure(&running);
            self.publish_status(&m);

            if let (Some(_), State::Backoff { reason, .. }) = (&restart_reply, &m.state) {
                let reason = reason.clone();
                if let Some(r) = restart_reply.take() {
                    let _ = r.send(Applied::Failing(format!(
                        "nats-server failed with the new config: {reason}; retrying"
                    )));
                }
            }
            let starting = matches!(m.state, State::Starting { .. });
            if starting || matches!(m.state, State::Running { .. }) {
                probe.ensure(|| self.prober(), next_probe, starting);
            } else {
                probe.cancel();
            }
            let event = tokio::select! {
                _ = watchdog.due() => {
                    crate::systemd::watchdog();
                    continue;
                }
                _ = self.store_failed.notified() => {
                    self.note_store_failure(&running);
                    continue;
                }
                cmd = commands.recv(), if commands_open => {
                    match cmd {
                        Some(Command::Apply { config, action, reply }) => {
                            // Its address or timeout may be changing.
                            probe.cancel();
                            if let Some(ev) = self.apply(config, action, &m, reply, &mut restart_reply).await {
                                pending.extend(step(&mut m, ev));
                            }
                            m.set_policy(policy(&self.config));
                        }
                        Some(Command::Restart) => {
                            if matches!(m.state, State::Running { .. }) {
                                pending.extend(step(&mut m, Event::RestartRequested));
                            }
                        }
                        None => commands_open = false,
                    }
                    continue;
                }
                status = wait_exit(&mut running) => {
                    let r = running.take().expect("wait_exit only resolves with a child");
                    // Let the relays drain what the child printed last (its
                    // fatal error, usually) before anyone reads the tail.
                    for relay in r.relays {
                        let _ = tokio::time::timeout(Duration::from_millis(500), relay).await;
                    }
                    let exit = status.as_ref().ok().and_then(Exit::of);
                    self.status.send_modify(|st| st.last_exit = exit);
                    let status = describe_exit(status);
                    if matches!(m.state, State::Draining { .. }) {
                        tracing::info!(pid = r.pid, %status, "nats-server (pid {}) finished draining: {status}", r.pid);
                    } else if !matches!(m.state, State::Stopping { .. }) {
                        tracing::warn!(pid = r.pid, %status, "nats-server (pid {}) exited: {status}", r.pid);
                    }
                    Event::Exited { status }
                }
                _ = sleep_until_opt(wake) => {
                    wake = None;
                    Event::Tick
                }
                result = probe.done() => {
                    // Period measured from probe start to probe start, so a
                    // probe that times out does not stretch the period.
                    let every = if matches!(m.state, State::Starting { .. }) {
                        STARTUP_PROBE_EVERY
                    } else {
                        self.config.supervisor.health_interval.get()
                    };
                    next_probe = (next_probe + every).max(Instant::now());
                    match result {
                        Ok(()) => Event::Healthy,
                        Err(error) => {
                            if matches!(m.state, State::Running { .. }) {
                                tracing::warn!(%error, "nats-server health probe failed: {error}");
                                self.status.send_modify(|st| st.probe_error = Some(error.clone()));
                            }
                            Event::ProbeFailed { error }
                        }
                    }
                }
                _ = crate::flag_set(&mut stop), if !stop_seen => {
                    stop_seen = true;
                    Event::StopRequested
                }
            };
            // Whether this exit is the full disk's doing (see Machine::store_full).
            if matches!(event, Event::Exited { .. }) {
                m.store_full = self.config.nats.jetstream_enabled
                    && probe::store_space_problem(&self.config.data_dir()).is_some();
            }
            let event = match event {
                // After a probe either way: nats-server 2.15's /healthz
                // keeps saying "write error" once there is room again, so
                // a child that failed a write may never probe healthy.
                Event::Healthy | Event::ProbeFailed { .. }
                    if self.needs_store_restart(&running) =>
                {
                    tracing::warn!("nats-server failed to write its JetStream store while the disk was full, and there is room again: restarting it, so that it reads its store back from disk (nats-server 2.10 otherwise goes on with a wrong last sequence: it acknowledges new messages under sequences that are taken and cannot read earlier ones); publishes are refused with 503 until it is back");
                    Event::RestartRequested
                }
                other => other,
            };
            pending.extend(step(&mut m, event));
        }
    }

    /// Takes a new config. Returns the event for the machine when the
    /// child must restart; answers `reply` itself otherwise.
    async fn apply(
        &mut self,
        config: Arc<Config>,
        mut action: NatsAction,
        m: &Machine,
        reply: oneshot::Sender<Applied>,
        restart_reply: &mut Option<oneshot::Sender<Applied>>,
    ) -> Option<Event> {
        // Ports the new child needs beyond those ours holds must be free
        // before anything is stopped: a reload that cannot work changes
        // nothing.
        if action == NatsAction::Restart {
            let held = listen_ports(&self.config);
            for (host, port, what) in listen_ports(&config) {
                if held.iter().any(|(h, p, _)| *h == host && *p == port) {
                    continue;
                }
                if let Err(e) = probe::check_port_free(&host, port, what) {
                    let _ = reply.send(Applied::Refused(e));
                    return None;
                }
            }
        }
        let n = &config.nats;
        self.monitor = probe::connect_addr(&n.host, n.http_port);
        self.client = probe::connect_addr(&n.host, n.nats_port);
        if n.server_bin != self.config.nats.server_bin {
            match resolve_server_bin(&config) {
                Ok(bin) => {
                    let b = bin.clone();
                    self.render.server_version = tokio::task::spawn_blocking(move || {
                        crate::server_version::ServerVersion::query(&b)
                    })
                    .await
                    .unwrap_or(None);
                    self.bin = bin;
                }
                Err(e) => {
                    let _ = reply.send(Applied::Refused(e));
                    return None;
                }
            }
        }
        self.config = config;
        if action == NatsAction::Signal {
            match m.state {
                State::Running { pid, .. } => match self.hot_reload(pid).await {
                    Ok(()) => {
                        let _ = reply.send(Applied::Done(format!(
                            "nats-server (pid {pid}) reloaded its config live"
                        )));
                        return None;
                    }
                    Err(e) => {
                        tracing::warn!(
                            pid,
                            "nats-server did not take the change live ({e}); restarting it"
                        );
                        action = NatsAction::Restart;
                    }
                },
                // No healthy child right now: the next start renders the
                // new config anyway.
                _ => {
                    let _ = reply.send(Applied::Done(
                        "the new config applies when nats-server next starts".into(),
                    ));
                    return None;
                }
            }
        }
        match action {
            NatsAction::Restart => {
                if let Some(old) = restart_reply.replace(reply) {
                    let _ = old.send(Applied::Done("superseded by a newer reload".into()));
                }
                Some(Event::RestartRequested)
            }
            _ => {
                let _ = reply.send(Applied::Done("nats-server is unaffected".into()));
                None
            }
        }
    }

    /// Rewrites the config, SIGHUPs the child and waits for /varz to show a
    /// new config_load_time: nats-server logs a refused reload and goes on
    /// with the old config, so only that field proves it took the change.
    async fn hot_reload(&self, pid: u32) -> Result<(), String> {
        let load_time = |v: serde_json::Value| v["config_load_time"].as_str().map(str::to_string);
        let before = self
            .varz()
            .await
            .and_then(load_time)
            .ok_or("cannot read /varz")?;
        let conf = self.conf_path();
        let text = natsconf::render(&self.config, &self.render);
        crate::runfiles::write_atomic(&conf, text.as_bytes(), 0o600)
            .map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
        let seen = self.tail.lock().unwrap_or_else(|e| e.into_inner()).seen();
        signal::kill(Pid::from_raw(pid as i32), Signal::SIGHUP)
            .map_err(|e| format!("SIGHUP: {e}"))?;
        let deadline = Instant::now() + HOT_RELOAD_CONFIRM;
        while Instant::now() < deadline {
            if let Some(now) = self.varz().await.and_then(load_time) {
                if now != before {
                    return Ok(());
                }
            }
            // It says so at once when it refuses: no need to wait it out.
            let refusal = self
                .tail
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .since(seen)
                .into_iter()
                .find(|l| l.starts_with("Failed to reload server configuration"));
            if let Some(line) = refusal {
                return Err(format!("nats-server says: {line}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!(
            "config_load_time unchanged {HOT_RELOAD_CONFIRM:?} after SIGHUP"
        ))
    }

    /// Whether the running child failed a store write since it started;
    /// says so in the status (publishes are refused while it is true).
    fn note_store_failure(&self, running: &Option<Running>) -> bool {
        let failures = self
            .tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .store_write_failures();
        let failed = running
            .as_ref()
            .is_some_and(|r| failures > r.store_failures_before);
        self.status.send_if_modified(|st| {
            let changed = st.store_write_failed != failed;
            st.store_write_failed = failed;
            changed
        });
        failed
    }

    /// A child that failed a store write is restarted once its store's
    /// filesystem has room again: nats-server rebuilds its view of the
    /// store from disk at start. While the disk is still full a restart
    /// would not help (and 2.9 wedges and is killed anyway).
    fn needs_store_restart(&self, running: &Option<Running>) -> bool {
        self.note_store_failure(running)
            && probe::store_space_problem(&self.config.data_dir()).is_none()
    }

    async fn varz(&self) -> Option<serde_json::Value> {
        probe::monitor_json(self.monitor, "/varz").await
    }

    fn publish_status(&self, m: &Machine) {
        let (phase, healthy, restart_in) = match &m.state {
            State::Idle | State::Starting { .. } if m.restarts == 0 => {
                (Phase::Starting, false, None)
            }
            State::Idle
            | State::Starting { .. }
            | State::Killing { .. }
            | State::Restarting { .. } => (Phase::Restarting, false, None),
            State::Backoff { until, .. } => (
                Phase::Restarting,
                false,
                Some(until.saturating_duration_since(Instant::now())),
            ),
            State::Running { probe_failures, .. } => (Phase::Running, *probe_failures == 0, None),
            State::Stopping { .. } => (Phase::Stopping, false, None),
            State::Draining { .. } => (Phase::Draining, false, None),
            State::Stopped => (Phase::Stopped, false, None),
            State::Failed { .. } => (Phase::Failed, false, None),
        };
        let pid = m.pid();
        self.status.send_if_modified(|st| {
            let before = st.clone();
            st.phase = phase;
            st.pid = pid;
            st.healthy = healthy;
            st.restarts = m.restarts;
            st.last_failure = m.last_failure.clone();
            st.restart_in = restart_in;
            if phase != Phase::Running {
                st.healthy_since = None;
            }
            if healthy || phase != Phase::Running {
                st.probe_error = None;
            }
            *st != before
        });
    }

    /// What a probe needs, owned: probes run as their own task so that
    /// nothing else the loop waits for cancels one halfway.
    fn prober(&self) -> Prober {
        Prober {
            monitor: self.monitor,
            client: self.client,
            config: self.config.clone(),
            internal: self.render.internal.clone(),
        }
    }

    async fn read_ports(&self) -> Option<Ports> {
        let v = self.varz().await?;
        let port = |v: &serde_json::Value| {
            v.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
        };
        Some(Ports {
            nats: port(&v["port"])?,
            http: port(&v["http_port"])?,
            cluster: port(&v["cluster"]["port"]),
        })
    }

    async fn spawn_child(&self, first: bool) -> Result<Running, SpawnError> {
        let c = &self.config;
        let data_dir = c.data_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&data_dir)
            .map_err(|e| {
                SpawnError::Fatal(SupervisorError::CantCreate(format!(
                    "cannot create state directory {}: {e}",
                    data_dir.display()
                )))
            })?;
        let conf = self.conf_path();
        let text = natsconf::render(c, &self.render);
        crate::runfiles::write_atomic(&conf, text.as_bytes(), 0o600).map_err(|e| {
            SpawnError::Fatal(SupervisorError::CantCreate(format!(
                "cannot write {}: {e}",
                conf.display()
            )))
        })?;

        for (host, port, what) in listen_ports(c) {
            if let Err(e) = probe::check_port_free(&host, port, what) {
                let msg = format!("cannot start nats-server: {e}");
                return Err(if first {
                    SpawnError::Fatal(SupervisorError::Unavailable(msg))
                } else {
                    SpawnError::Retry(msg)
                });
            }
        }

        let spec = SpawnSpec {
            program: self.bin.clone(),
            args: vec!["-c".into(), conf.clone().into_os_string()],
        };
        let mut child = self.spawner.spawn(spec).await.map_err(|e| {
            let msg = format!("cannot run {}: {e}", self.bin.display());
            if first {
                SpawnError::Fatal(SupervisorError::Unavailable(msg))
            } else {
                SpawnError::Retry(msg)
            }
        })?;
        let pid = child.id().unwrap_or(0);
        let pid_path = self.pid_path();
        if let Err(e) =
            crate::runfiles::write_atomic(&pid_path, format!("{pid}\n").as_bytes(), 0o644)
        {
            tracing::warn!(path = %pid_path.display(), error = %e, "cannot write the pid file {}: {e}", pid_path.display());
        }
        // nats-server warns of plaintext passwords when any user has one.
        // The daemon's own (random, 0600 in the state dir, checked on
        // every reconnect, where bcrypt's cost would slow reconnection)
        // and the password-less anonymous user natsconf renders for
        // no_auth_user are not worth that warning: it is shown only when
        // a configured user's password is plain text (check-config says
        // the same, with what to do).
        let plain = c.nats.users.iter().any(|u| {
            !u.password
                .as_deref()
                .is_some_and(crate::config::secrets::is_bcrypt)
        });
        let benign: &'static [&'static str] = if !plain {
            &["Plaintext passwords detected"]
        } else {
            &[]
        };
        let store_failures_before = self
            .tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .store_write_failures();
        let mut relays = Vec::new();
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let (tail, failed) = (self.tail.clone(), self.store_failed.clone());
            relays.push(tokio::spawn(relay(out, pid, tail, benign, failed)));
        }
        Ok(Running {
            child,
            pid,
            relays,
            store_failures_before,
        })
    }
}

/// Feeds one event to the machine, logging when it decides to restart.
fn step(m: &mut Machine, event: Event) -> Vec<Action> {
    let was_backoff = matches!(m.state, State::Backoff { .. });
    let actions = m.handle(event, Instant::now());
    if let (State::Backoff { until, reason }, false) = (&m.state, was_backoff) {
        let delay_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64;
        tracing::warn!(
            delay_ms,
            restarts = m.restarts,
            "{reason}; restarting nats-server in {delay_ms} ms"
        );
    }
    actions
}

enum SpawnError {
    /// Give up now (exit 69/73): nothing a retry could fix.
    Fatal(SupervisorError),
    /// Counts as a failure; the machine decides whether to retry.
    Retry(String),
}

async fn wait_exit(running: &mut Option<Running>) -> std::io::Result<std::process::ExitStatus> {
    match running {
        Some(r) => r.child.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

fn describe_exit(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(name) => format!("killed by signal {sig} ({})", name.as_str()),
                Err(_) => format!("killed by signal {sig}"),
            },
            _ => s.to_string(),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}
