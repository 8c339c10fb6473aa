//! sd_notify: readiness, status, reload, stop, watchdog and start-timeout
//! extension. Every call is a no-op without NOTIFY_SOCKET (the sd-notify
//! crate checks), so the daemon runs the same outside systemd.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd: {e}");
    }
}

/// Start-up (or a reload) finished: nats-server healthy, streams
/// reconciled, HTTP listening.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// A reload begins. systemd 253+ requires MONOTONIC_USEC with RELOADING=1
/// (Type=notify-reload) and uses it to match the READY=1 that ends it.
pub fn reloading() {
    send(&[
        NotifyState::Reloading,
        NotifyState::monotonic_usec_now().unwrap_or(NotifyState::MonotonicUsec(0)),
        NotifyState::Status("reloading the configuration"),
    ]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Pushes the start timeout to `by` from now: a big JetStream store can
/// take longer to recover than TimeoutStartSec, and systemd must not kill
/// a start that is making progress.
pub fn extend_timeout(by: Duration, status: &str) {
    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
    send(&[
        NotifyState::ExtendTimeoutUsec(usec),
        NotifyState::Status(status),
    ]);
}

/// The ping period when systemd's watchdog is on for this process: half
/// of WatchdogSec, as sd_watchdog_enabled(3) advises.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .map(|d| d / 2)
        .filter(|d| !d.is_zero())
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}
