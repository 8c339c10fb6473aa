//! What the supervisor publishes about its child: phase, pid, health,
//! restarts, ports and how the last one ended. Read by the app, /health,
//! /metrics and systemd's STATUS line.

use std::time::{Duration, SystemTime};

/// How the child is doing, published on every change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChildStatus {
    pub phase: Phase,
    pub pid: Option<u32>,
    /// The last probe succeeded.
    pub healthy: bool,
    /// Why the running child's last probe failed (None once one passes).
    pub probe_error: Option<String>,
    /// Increments each time a (new) child becomes healthy: the signal to
    /// reconnect and reconcile streams (memory streams die with the child).
    pub generation: u64,
    pub restarts: u64,
    pub last_failure: Option<String>,
    /// When the current child became healthy.
    pub healthy_since: Option<SystemTime>,
    /// Ports the running server reports in /varz.
    pub ports: Option<Ports>,
    /// Delay before the next restart, while waiting for it.
    pub restart_in: Option<Duration>,
    /// How the last child ended (for /metrics).
    pub last_exit: Option<Exit>,
    /// The running child failed to write its JetStream store (a full
    /// disk): its idea of the store is not to be trusted until it is
    /// restarted, which the supervisor does once there is room again.
    /// Publishes are refused meanwhile.
    pub store_write_failed: bool,
}

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn of(status: &std::process::ExitStatus) -> Option<Exit> {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(c), _) => Some(Exit::Code(c)),
            (None, Some(s)) => Some(Exit::Signal(s)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    #[default]
    Starting,
    Running,
    Restarting,
    /// In lame-duck mode before a stop or restart (a clustered node).
    Draining,
    Stopping,
    Stopped,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Restarting => "restarting",
            Phase::Draining => "draining",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Ports {
    pub nats: u16,
    pub cluster: Option<u16>,
    pub http: u16,
}
