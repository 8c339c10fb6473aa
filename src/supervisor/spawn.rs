//! Spawning nats-server so that it never outlives the daemon.
//!
//! PR_SET_PDEATHSIG fires when the *thread* that forked the child exits,
//! not the process. tokio's blocking pool reaps idle threads after 10 s, so
//! a child spawned from `spawn_blocking` would be killed 10 s after the
//! daemon went idle. All spawns therefore happen on one dedicated thread
//! that lives exactly as long as the [`Spawner`].

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;

use nix::libc;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// Environment a child must not inherit: systemd would take nats-server's
/// messages on our notify socket as ours (NotifyAccess=main refuses them,
/// but they would be noise), and socket activation is ours too.
const SCRUBBED_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// What to run.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

struct Request {
    spec: SpawnSpec,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// Handle to the spawner thread. Dropping it ends the thread, which (by
/// PDEATHSIG) kills any child still running: drop it only after the child
/// has been stopped.
pub struct Spawner {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spawner {
    /// Starts the spawner thread; `runtime` is entered there so tokio can
    /// register the child for async wait.
    pub fn start(runtime: tokio::runtime::Handle) -> io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("nats-spawner".into())
            .spawn(move || {
                let _guard = runtime.enter();
                for req in rx {
                    let _ = req.reply.send(spawn_now(&req.spec));
                }
            })?;
        Ok(Spawner {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    pub async fn spawn(&self, spec: SpawnSpec) -> io::Result<Child> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(Request { spec, reply }).ok())
            .ok_or_else(|| io::Error::other("spawner thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("spawner thread is gone"))?
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn spawn_now(spec: &SpawnSpec) -> io::Result<Child> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: a signal sent to the daemon's group from a
        // terminal (Ctrl-C) reaches us only, and we stop the child in order.
        .process_group(0)
        .kill_on_drop(true);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec in the child and only
    // makes async-signal-safe syscalls (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The daemon may have died between fork and prctl: then the
            // signal will never come, so do not start at all.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::other("daemon exited during spawn"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}
