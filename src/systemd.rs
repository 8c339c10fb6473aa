//! sd_notify: readiness, status, reload, stop, watchdog and start-timeout
//! extension. Every call is a no-op without NOTIFY_SOCKET (the sd-notify
//! crate checks), so the daemon runs the same outside systemd.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use sd_notify::NotifyState;

/// What the notify thread is asked to do.
enum Job {
    Send(String),
    /// Answer once everything queued before has been sent.
    Flush(mpsc::Sender<()>),
}

/// How long one datagram may wait for room in the receiver's queue.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The queue to the notify thread; None without NOTIFY_SOCKET.
///
/// Why a thread: sending to the notify socket blocks while the receiver's
/// queue is full (10 datagrams by default, net.unix.max_dgram_qlen), and a
/// blocking send on an async worker stalls every task on it; with one
/// worker (a 1-CPU machine) the whole daemon. The watchdog still proves
/// liveness: WATCHDOG=1 is queued by the task whose progress it vouches
/// for, so a wedged runtime queues nothing.
fn queue() -> Option<&'static mpsc::Sender<Job>> {
    static QUEUE: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let path = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty())?;
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .name("sd-notify".into())
                .spawn(move || writer(path, rx))
                .ok()?;
            Some(tx)
        })
        .as_ref()
}

fn writer(path: OsString, rx: mpsc::Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        let mut jobs = vec![job];
        jobs.extend(rx.try_iter());
        let last_status = jobs
            .iter()
            .rposition(|j| matches!(j, Job::Send(m) if m.starts_with("STATUS=")));
        for (i, job) in jobs.into_iter().enumerate() {
            match job {
                // A status line alone that a newer one replaces is skipped:
                // a slow receiver gets the current state, not a backlog.
                Job::Send(m) if m.starts_with("STATUS=") && Some(i) != last_status => {}
                Job::Send(m) => {
                    if let Err(e) = send_now(&path, &m) {
                        tracing::warn!(error = %e, "cannot notify systemd: {e}");
                    }
                }
                Job::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

fn send_now(path: &OsString, msg: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    sock.set_write_timeout(Some(SEND_TIMEOUT))?;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.connect_addr(&addr)?;
        }
        None => sock.connect(path)?,
    }
    let n = sock.send(msg.as_bytes())?;
    if n != msg.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "incomplete notify datagram",
        ));
    }
    Ok(())
}

/// Queues one notify datagram (never blocks the caller).
fn send(states: &[NotifyState]) {
    let Some(q) = queue() else { return };
    let mut msg = String::new();
    for s in states {
        let _ = writeln!(msg, "{s}");
    }
    let _ = q.send(Job::Send(msg));
}

/// Waits (up to `timeout`) until everything queued has been sent: called
/// before the process exits, so STOPPING=1 and the last STATUS are not
/// lost with the thread.
pub fn flush(timeout: Duration) {
    let Some(q) = queue() else { return };
    let (tx, rx) = mpsc::channel();
    if q.send(Job::Flush(tx)).is_ok() {
        let _ = rx.recv_timeout(timeout);
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

/// When to ping the watchdog: every [`watchdog_period`], or never when
/// systemd's watchdog is off for this process.
pub struct WatchdogTimer(Option<tokio::time::Interval>);

impl WatchdogTimer {
    pub fn new() -> WatchdogTimer {
        WatchdogTimer(watchdog_period().map(|p| {
            let mut i = tokio::time::interval(p);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        }))
    }

    /// Resolves when the next ping is due (never, without a watchdog).
    pub async fn due(&mut self) {
        match &mut self.0 {
            Some(i) => {
                i.tick().await;
            }
            None => std::future::pending().await,
        }
    }
}

impl Default for WatchdogTimer {
    fn default() -> Self {
        WatchdogTimer::new()
    }
}

/// The fd store name of the HTTP API's listening socket.
pub const HTTP_FD_NAME: &str = "http";

/// Hands a duplicate of `fd` to systemd's fd store under `name`
/// (sd_pid_notify_with_fds(3) with FDSTORE=1 and FDNAME=): systemd keeps
/// it while the service runs or has a restart queued (`systemctl
/// restart`, an upgrade's postinst; systemd 252 and 257 alike), and passes
/// it back at the next start (LISTEN_FDS, see [`take_listen_fds`]). So
/// the listening socket outlives the process: connections that come while
/// no daemon runs wait in its backlog instead of being refused. Needs
/// `FileDescriptorStoreMax=` in the unit. Ok(false) without NOTIFY_SOCKET.
///
/// Sent here, synchronously, rather than through the notify thread: the
/// datagram must carry the descriptor while it is open.
pub fn store_fd(fd: std::os::fd::BorrowedFd<'_>, name: &str) -> std::io::Result<bool> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
        return Ok(false);
    };
    let addr = match path.as_bytes().strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name)?,
        None => UnixAddr::new(path.as_os_str())?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.set_write_timeout(Some(SEND_TIMEOUT))?;
    let msg = format!("FDSTORE=1\nFDNAME={name}\n");
    let iov = [std::io::IoSlice::new(msg.as_bytes())];
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg(
        sock.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::empty(),
        Some(&addr),
    )?;
    Ok(true)
}

/// Drops what the fd store holds under `name` (a listener that no longer
/// matches the config), so the next start does not get it.
pub fn remove_stored_fd(name: &str) {
    let Some(q) = queue() else { return };
    let _ = q.send(Job::Send(format!("FDSTOREREMOVE=1\nFDNAME={name}\n")));
}

/// The descriptors systemd passed (sd_listen_fds(3)): `(fd, name)` for fds
/// 3.. when LISTEN_PID is `pid` (pure; the caller reads the environment).
pub fn parse_listen_fds(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
    pid: u32,
) -> Vec<(i32, String)> {
    const START: i32 = 3;
    if listen_pid.and_then(|p| p.trim().parse::<u32>().ok()) != Some(pid) {
        return Vec::new();
    }
    let n = listen_fds
        .and_then(|n| n.trim().parse::<i32>().ok())
        .filter(|n| (1..=1024).contains(n))
        .unwrap_or(0);
    let names: Vec<&str> = names.map(|s| s.split(':').collect()).unwrap_or_default();
    (0..n)
        .map(|i| {
            let name = names.get(i as usize).copied().unwrap_or("unknown");
            (START + i, name.to_string())
        })
        .collect()
}

/// Takes the descriptors systemd passed to this process, by name; each is
/// made close-on-exec (nats-server must not inherit them). Call once.
pub fn take_listen_fds() -> Vec<(String, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let var = |k: &str| std::env::var(k).ok();
    parse_listen_fds(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    )
    .into_iter()
    .filter_map(|(fd, name)| {
        // SAFETY: systemd's protocol hands fds 3..3+LISTEN_FDS to this
        // process (LISTEN_PID checked) and nothing else owns them; one
        // that is not open is skipped before it is owned.
        nix::fcntl::fcntl(
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_GETFD,
        )
        .ok()?;
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let _ = nix::fcntl::fcntl(
            &owned,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        Some((name, owned))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_fds_are_ours_only_with_our_pid_and_named_in_order() {
        assert_eq!(
            parse_listen_fds(Some("42"), Some("2"), Some("http:other"), 42),
            [(3, "http".to_string()), (4, "other".to_string())]
        );
        assert!(parse_listen_fds(Some("41"), Some("1"), Some("http"), 42).is_empty());
        assert!(parse_listen_fds(None, Some("1"), Some("http"), 42).is_empty());
        assert!(parse_listen_fds(Some("42"), Some("x"), None, 42).is_empty());
        assert_eq!(
            parse_listen_fds(Some("42"), Some("1"), None, 42),
            [(3, "unknown".to_string())]
        );
    }
}
