//! The HTTP listener survives a restart: the daemon takes the socket
//! systemd passes back from its fd store (LISTEN_PID / LISTEN_FDS /
//! LISTEN_FDNAMES, fd 3 named "http") when it listens where the config
//! says, and otherwise binds afresh and swaps the stored one. Here without
//! systemd: the test passes a bound socket as fd 3 itself, and receives
//! the notify datagrams. (tests/e2e/systemd-nspawn.sh runs the real thing.)

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Runs the daemon (external mode: no nats-server needed to serve HTTP)
/// with `listener` as fd 3 named `http`, and LISTEN_PID its own pid (a
/// shell that execs it keeps its pid).
fn start_with_fd(
    port: u16,
    listener: &std::net::TcpListener,
    notify: &NotifySocket,
) -> (std::process::Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broker.yaml");
    std::fs::write(
        &config,
        format!("port: {port}\nauto_start_nats: false\nnats:\n  nats_url: \"nats://127.0.0.1:1\"\n  data_dir: {:?}\n", dir.path().join("state")),
    )
    .unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" --config \"$1\"")
        .arg(BIN)
        .arg(&config)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http")
        .env("NOTIFY_SOCKET", notify.path_str())
        .env("RUNTIME_DIRECTORY", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: dup2 is async-signal-safe; the new fd 3 is not close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    (cmd.spawn().unwrap(), dir)
}

fn stop(child: std::process::Child) -> String {
    kill(child.id(), nix::sys::signal::Signal::SIGTERM);
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_on_the_socket_systemd_kept() {
    // The socket is bound (by "systemd"), so a daemon that bound afresh
    // would find the port taken and exit 69: an answer proves the take-over.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let notify = NotifySocket::bind();
    let (child, _dir) = start_with_fd(port, &listener, &notify);
    drop(listener);
    let answer = eventually(Duration::from_secs(20), "an HTTP answer", || async {
        get_json(port, "/api/v1/status").await.ok()
    })
    .await;
    assert_eq!(answer.0, 200, "{answer:?}");
    let log = stop(child);
    assert!(log.contains("took over the listening socket"), "{log}");
    assert!(
        !notify.all().iter().any(|m| m.contains("FDSTORE")),
        "the kept socket is stored already: {:?}",
        notify.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_socket_on_another_port_is_replaced() {
    let old = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free_port();
    let notify = NotifySocket::bind();
    let (child, _dir) = start_with_fd(port, &old, &notify);
    let answer = eventually(Duration::from_secs(20), "an HTTP answer", || async {
        get_json(port, "/api/v1/status").await.ok()
    })
    .await;
    assert_eq!(answer.0, 200, "{answer:?}");
    let log = stop(child);
    assert!(log.contains("binding afresh"), "{log}");
    let all = notify.all();
    let removed = all
        .iter()
        .position(|m| m.contains("FDSTOREREMOVE=1\nFDNAME=http"));
    let stored = all
        .iter()
        .position(|m| m.contains("FDSTORE=1\nFDNAME=http"));
    assert!(
        matches!((removed, stored), (Some(r), Some(s)) if r < s),
        "the old socket is dropped from the store, then the new one stored: {all:?}"
    );
}
