//! The sd_notify protocol, spoken over a real unix datagram socket: READY
//! exactly when healthy, STATUS lines, WATCHDOG cadence, EXTEND_TIMEOUT
//! during a slow start, RELOADING + MONOTONIC_USEC then READY on SIGHUP,
//! STOPPING on SIGTERM, and nothing leaking to the child.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const FAKE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/fake-nats-server"
);

fn monotonic_usec() -> i128 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as i128 * 1_000_000 + t.tv_nsec() as i128 / 1000
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_comes_only_once_healthy_and_the_child_does_not_inherit_the_socket() {
    let sock = NotifySocket::bind();
    let mut d = Daemon::builder()
        .env("NOTIFY_SOCKET", sock.path_str())
        .env("WATCHDOG_USEC", "30000000")
        .start();
    let msg = sock.wait_line("READY=1", 1, Duration::from_secs(20)).await;
    // READY means ready: health is green the moment it arrives.
    let (code, h) = d.get("/health").await;
    assert_eq!(code, 200, "{h}");
    let child = d.child_pid().unwrap();
    assert!(
        msg.contains(&format!(
            "STATUS=nats-server pid {child} healthy, 3 streams"
        )),
        "{msg}"
    );
    assert_eq!(sock.with_line("READY=1").len(), 1);
    let env = std::fs::read(format!("/proc/{child}/environ")).unwrap();
    let env = String::from_utf8_lossy(&env);
    assert!(
        !env.contains("NOTIFY_SOCKET=") && !env.contains("WATCHDOG_USEC="),
        "the child inherited systemd's variables"
    );
    d.signal(Signal::SIGTERM);
    let stopping = sock
        .wait_line("STOPPING=1", 1, Duration::from_secs(10))
        .await;
    assert!(stopping.contains("STATUS=stopping"));
    d.expect_exit(0, Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_ready_when_nats_server_cannot_start() {
    let sock = NotifySocket::bind();
    let mut d = Daemon::builder()
        .bin(FAKE)
        .env("NOTIFY_SOCKET", sock.path_str())
        .start();
    d.expect_exit(69, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        sock.with_line("READY=1").is_empty(),
        "READY sent for a daemon that never got nats-server up: {:?}",
        sock.all()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_start_extends_the_start_timeout_and_says_why() {
    let sock = NotifySocket::bind();
    let mut d = Daemon::builder()
        .bin(FAKE)
        .env("FAKE_MODE", "hang")
        .env("NOTIFY_SOCKET", sock.path_str())
        .supervisor("  start_timeout: 2s\n")
        .start();
    // Every start_timeout/4 = 500 ms while the (fake) server recovers.
    let ext = sock
        .wait_line("EXTEND_TIMEOUT_USEC=1500000", 3, Duration::from_secs(5))
        .await;
    assert!(
        ext.contains("STATUS=waiting for nats-server to become healthy"),
        "{ext}"
    );
    d.expect_exit(69, Duration::from_secs(30));
    assert!(sock.with_line("READY=1").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_watchdog_is_fed_at_half_its_period() {
    let sock = NotifySocket::bind();
    let d = Daemon::builder()
        .env("NOTIFY_SOCKET", sock.path_str())
        .env("WATCHDOG_USEC", "400000")
        .start();
    sock.wait_line("READY=1", 1, Duration::from_secs(20)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pings: Vec<Instant> = sock
        .with_line("WATCHDOG=1")
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| *t >= from)
        .collect();
    // One every 200 ms: about 10 in 2 s.
    assert!(
        (8..=12).contains(&pings.len()),
        "{} pings in 2 s",
        pings.len()
    );
    let worst = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        worst < Duration::from_millis(400),
        "a gap of {worst:?} would trip a 400 ms watchdog"
    );
    // A restarting child does not stop them: the supervisor loop is alive.
    let old = d.child_pid().unwrap();
    kill(old, Signal::SIGKILL);
    d.wait_new_child(old, Duration::from_secs(5)).await;
    let n = sock.with_line("WATCHDOG=1").len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(sock.with_line("WATCHDOG=1").len() >= n + 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watchdog_meant_for_another_pid_is_ignored() {
    let sock = NotifySocket::bind();
    let _d = Daemon::builder()
        .env("NOTIFY_SOCKET", sock.path_str())
        .env("WATCHDOG_USEC", "200000")
        .env("WATCHDOG_PID", "1")
        .start();
    sock.wait_line("READY=1", 1, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(sock.with_line("WATCHDOG=1").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_is_reloading_with_monotonic_usec_then_ready() {
    let sock = NotifySocket::bind();
    let d = Daemon::builder()
        .env("NOTIFY_SOCKET", sock.path_str())
        .nats("  max_payload: 1MB\n")
        .start();
    sock.wait_line("READY=1", 1, Duration::from_secs(20)).await;
    d.edit_config(|c| c.replace("max_payload: 1MB", "max_payload: 2MB"));
    let before = monotonic_usec();
    d.signal(Signal::SIGHUP);
    let reloading = sock
        .wait_line("RELOADING=1", 1, Duration::from_secs(5))
        .await;
    let usec: i128 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("RELOADING=1 without MONOTONIC_USEC")
        .parse()
        .unwrap();
    assert!(
        usec >= before && usec <= monotonic_usec(),
        "MONOTONIC_USEC {usec} is not now"
    );
    let ready = sock.wait_line("READY=1", 2, Duration::from_secs(10)).await;
    assert!(ready.contains("STATUS=nats-server pid"), "{ready}");
    let all = sock.all();
    let r = all.iter().position(|m| m.contains("RELOADING=1")).unwrap();
    let second_ready = all
        .iter()
        .enumerate()
        .filter(|(_, m)| m.lines().any(|l| l == "READY=1"))
        .nth(1)
        .unwrap()
        .0;
    assert!(r < second_ready, "{all:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_reload_still_ends_with_ready_and_says_so_in_status() {
    let sock = NotifySocket::bind();
    let d = Daemon::builder()
        .env("NOTIFY_SOCKET", sock.path_str())
        .start();
    sock.wait_line("READY=1", 1, Duration::from_secs(20)).await;
    d.edit_config(|c| c.replace("nats:\n", "nats:\n  nats_prot: 1\n"));
    d.signal(Signal::SIGHUP);
    let ready = sock.wait_line("READY=1", 2, Duration::from_secs(10)).await;
    assert!(
        ready.contains("reload failed:") && ready.contains("nats.nats_prot"),
        "{ready}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_follows_a_restart() {
    let sock = NotifySocket::bind();
    let d = Daemon::builder()
        .env("NOTIFY_SOCKET", sock.path_str())
        .start();
    sock.wait_line("READY=1", 1, Duration::from_secs(20)).await;
    let old = d.child_pid().unwrap();
    kill(old, Signal::SIGKILL);
    let new = d.wait_new_child(old, Duration::from_secs(5)).await;
    let want = format!("STATUS=nats-server pid {new} healthy");
    eventually(
        Duration::from_secs(5),
        "STATUS for the new child",
        || async { sock.all().iter().any(|m| m.contains(&want)).then_some(()) },
    )
    .await;
    let all = sock.all().join("\n");
    assert!(all.contains("STATUS=restarting nats-server in "), "{all}");
    assert!(all.contains("killed by signal 9"), "{all}");
}

/// A notify socket nobody reads fills after a few datagrams (10 by
/// default). On a 1-CPU machine the runtime has one worker: a blocking
/// send there would freeze the whole daemon. It must keep serving, and
/// still stop cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn an_unread_notify_socket_never_stalls_a_single_worker_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let unread = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let mut d = Daemon::builder()
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .env("WATCHDOG_USEC", "100000")
        .env("TOKIO_WORKER_THREADS", "1")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    // Watchdog pings every 50 ms: the queue has long been full by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..3 {
        let (code, v) = d
            .publish("market.binance.BTCUSDT.trade", serde_json::json!({"i": i}))
            .await;
        assert_eq!(code, 200, "{v}; log:\n{}", d.log());
    }
    let (code, h) = d.get("/health").await;
    assert_eq!(code, 200, "{h}");
    // What systemd would have read: READY=1 among the first datagrams.
    unread.set_nonblocking(true).unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = unread.recv(&mut buf) {
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.lines().any(|l| l == "READY=1"), "{seen}");
    d.signal(Signal::SIGTERM);
    d.expect_exit(0, Duration::from_secs(15));
}
