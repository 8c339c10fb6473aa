//! Faults (issue 8): whatever happens to nats-server, the disk, the config
//! or the requests, every acknowledged message is kept, the daemon says
//! truthfully what state it is in, and it comes back by itself.
//!
//! Already covered elsewhere (not repeated here): one kill -9 under load,
//! SIGSTOP detected and replaced, crash loops and a child that never gets
//! healthy or is deaf to SIGTERM (tests/fixtures/fake-nats-server), taken
//! ports, a missing binary, the child dying with a SIGKILLed daemon
//! (tests/daemon.rs); a burst of valid SIGHUPs and broken files
//! (tests/reload.rs).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// One publisher's record: what was acknowledged (seq -> msg_id) and how
/// many were refused with a proper 503.
#[derive(Default)]
struct Record {
    acked: Vec<(u64, String)>,
    refused: u64,
}

/// Publishes to MARKET_DATA with unique msg_ids until `stop`; every answer
/// must be a 200 persisted or a 503 with Retry-After, within
/// `publish_timeout` (plus slack for a loaded machine).
async fn publisher(
    d: Arc<Daemon>,
    p: usize,
    stop: Arc<AtomicBool>,
    acked_total: Arc<AtomicU64>,
    publish_timeout: Duration,
) -> Record {
    let mut rec = Record::default();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("p{p}-{i}");
        let body = json!({
            "subject": format!("market.faults.p{p}.trade"),
            "message": {"id": id},
            "msg_id": id,
        })
        .to_string();
        let t = Instant::now();
        let (status, headers, resp) = d.publish_raw(body.into_bytes()).await;
        let took = t.elapsed();
        assert!(
            took < publish_timeout + Duration::from_secs(2),
            "{id}: answered after {took:?}, past api.publish_timeout {publish_timeout:?}: {status} {resp}"
        );
        match status {
            200 => {
                assert_eq!(resp["persisted"], true, "{id}: {resp}");
                assert_eq!(resp["duplicate"], false, "{id}: {resp}");
                rec.acked.push((resp["seq"].as_u64().unwrap(), id));
                acked_total.fetch_add(1, Ordering::Relaxed);
            }
            503 => {
                assert_eq!(
                    headers.get("retry-after").map(|v| v.as_bytes()),
                    Some(&b"1"[..]),
                    "{id}: a 503 without Retry-After: {resp}"
                );
                assert_eq!(resp["success"], false, "{id}: {resp}");
                assert!(resp["error"]["code"].is_string(), "{id}: {resp}");
                rec.refused += 1;
                // A polite client waits a little (not all of Retry-After:
                // the point is to publish through the restarts).
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => panic!("{id}: unexpected {other}: {resp}"),
        }
        i += 1;
    }
    rec
}

/// Every acknowledged (seq, id) is in MARKET_DATA at that seq with that id.
async fn assert_all_stored(d: &Daemon, acked: &[(u64, String)]) {
    let js = async_nats::jetstream::new(d.client().await);
    let stream = js.get_stream("MARKET_DATA").await.unwrap();
    for (seq, id) in acked {
        let m = stream
            .get_raw_message(*seq)
            .await
            .unwrap_or_else(|e| panic!("acknowledged {id} (seq {seq}) is gone: {e}"));
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["id"], id.as_str(), "seq {seq} holds another message");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_kill_9s_under_publish_load_lose_nothing_acknowledged() {
    const KILLS: usize = 50;
    let publish_timeout = Duration::from_secs(2);
    // The backoff is capped low so every kill is followed by a quick
    // restart; the failure budget is large enough for 50 kills.
    let d = Arc::new(
        Daemon::builder()
            .top("api:\n  publish_timeout: 2s\n")
            .supervisor(
                "  backoff_initial: 50ms\n  backoff_max: 200ms\n  max_failures: 1000\n  failure_window: 600s\n",
            )
            .start(),
    );
    d.wait_healthy(Duration::from_secs(20)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            tokio::spawn(publisher(
                d.clone(),
                p,
                stop.clone(),
                acked.clone(),
                publish_timeout,
            ))
        })
        .collect();

    let started = Instant::now();
    let mut worst = Duration::ZERO;
    for k in 0..KILLS {
        // Publishes are acknowledged again before each kill: the daemon
        // came back by itself, its client too.
        let before = acked.load(Ordering::Relaxed);
        eventually(
            Duration::from_secs(10),
            &format!("publishes acknowledged before kill #{k}"),
            || async { (acked.load(Ordering::Relaxed) > before + 5).then_some(()) },
        )
        .await;
        let old = d.child_pid().unwrap();
        let t = Instant::now();
        try_kill(old, Signal::SIGKILL);
        let new = d.wait_new_child(old, Duration::from_secs(5)).await;
        worst = worst.max(t.elapsed());
        assert!(!d.has_exited(), "the daemon exited at kill #{k}");
        assert!(alive(new));
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut refused = 0;
    for p in publishers {
        let r = p.await.unwrap();
        all.extend(r.acked);
        refused += r.refused;
    }
    eprintln!(
        "{KILLS} kills in {took:?} (slowest back to healthy {worst:?}); {} acked, {refused} refused with 503",
        all.len()
    );
    assert!(!d.has_exited());
    d.wait_healthy(Duration::from_secs(10)).await;
    assert_all_stored(&d, &all).await;
    // No seq was handed out twice.
    let mut seqs: Vec<u64> = all.iter().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), all.len(), "two acks with the same seq");
    let (_, status) = d.get("/api/v1/status").await;
    assert_eq!(status["nats_server"]["restarts"], KILLS, "{status}");
    assert_eq!(
        nats_servers_with(&d.state_dir().display().to_string()).len(),
        1,
        "exactly one nats-server"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigcont_racing_the_hang_kill_ends_with_one_healthy_child_and_no_orphan() {
    // health_failures 2 at 250 ms: the kill decision falls about 500 ms
    // after SIGSTOP. SIGCONT is sent at delays around it, so some rounds
    // continue the child just before, some just after the decision (the
    // last one surely after it).
    let d = Daemon::builder()
        .supervisor("  health_failures: 2\n  backoff_max: 200ms\n  max_failures: 100\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let needle = d.state_dir().display().to_string();
    let mut replaced = 0;
    for delay_ms in [350u64, 450, 500, 550, 600, 650, 700, 800, 2000] {
        let old = d.child_pid().unwrap();
        try_kill(old, Signal::SIGSTOP);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        try_kill(old, Signal::SIGCONT);
        // Settled: healthy, and the process table holds exactly the one
        // child health names.
        let pid = eventually(
            Duration::from_secs(15),
            "one healthy nats-server",
            || async {
                let (code, h) = get_json(d.http, "/health").await.ok()?;
                let pid = h["pid"].as_u64()? as u32;
                (code == 200 && nats_servers_with(&needle) == [pid] && d.child_pid() == Some(pid))
                    .then_some(pid)
            },
        )
        .await;
        if pid != old {
            replaced += 1;
            assert!(!alive(old), "the replaced child {old} still runs");
        }
        assert!(!d.has_exited());
        // Still settled a moment later (a late kill of the new child, a
        // second spawn, would show now).
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (code, h) = d.get("/health").await;
        assert_eq!((code, h["pid"].as_u64()), (200, Some(pid as u64)), "{h}");
        assert_eq!(nats_servers_with(&needle), [pid]);
        let (status, resp) = d.publish("market.a.b.trade", json!(delay_ms)).await;
        assert_eq!(status, 200, "{resp}");
    }
    eprintln!("{replaced} of 9 stopped children were replaced");
    assert!(replaced >= 1, "no round reached the kill decision");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkilled_daemon_takes_its_child_along_and_a_new_one_takes_over_the_store() {
    let state = tempfile::tempdir().unwrap();
    let mut d = Daemon::builder().state(state.path()).start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let mut acked = Vec::new();
    for i in 0..200 {
        let id = format!("m{i}");
        let (status, resp) = d.publish("market.a.b.trade", json!({"id": id})).await;
        assert_eq!(status, 200, "{resp}");
        acked.push((resp["seq"].as_u64().unwrap(), id));
    }
    let child = d.child_pid().unwrap();
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5));
    let t = Instant::now();
    eventually(
        Duration::from_secs(2),
        "nats-server to die with the daemon",
        || async { (!alive(child)).then_some(()) },
    )
    .await;
    eprintln!("child gone {:?} after the daemon", t.elapsed());
    let needle = state.path().display().to_string();
    assert!(
        nats_servers_with(&needle).is_empty(),
        "an orphan nats-server"
    );

    // A new daemon on the same state directory (stale pid files and all).
    let d = Daemon::builder().state(state.path()).start();
    d.wait_healthy(Duration::from_secs(20)).await;
    assert_ne!(d.child_pid(), Some(child));
    assert_all_stored(&d, &acked).await;
    let (_, md) = d.get("/api/v1/streams/MARKET_DATA").await;
    assert_eq!(md["messages"], 200, "{md}");
    let (status, resp) = d.publish("market.a.b.trade", json!({"id": "after"})).await;
    assert_eq!((status, resp["seq"].as_u64()), (200, Some(201)), "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storm_of_sighups_between_valid_and_broken_files_ends_on_the_last_valid_one() {
    let d = Daemon::builder().nats("  max_connections: 100\n").start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let pid = d.child_pid().unwrap();
    let good = std::fs::read_to_string(&d.config_path).unwrap();
    let write = |text: String| {
        let tmp = d.config_path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &d.config_path).unwrap();
    };
    let mut last_valid = 100;
    for i in 1..=100u32 {
        if i % 2 == 0 {
            last_valid = 100 + i;
            write(good.replace(
                "max_connections: 100",
                &format!("max_connections: {last_valid}"),
            ));
        } else if i % 4 == 1 {
            write(good.replace("max_connections: 100", "max_connections: [unclosed"));
        } else {
            write(good.replace("max_connections: 100", "max_conections: 150"));
        }
        d.signal(Signal::SIGHUP);
    }
    assert_eq!(last_valid, 200);
    eventually(
        Duration::from_secs(30),
        "the last valid file in force",
        || async {
            let v = get_json(d.monitor, "/varz").await.ok()?.1;
            (v["max_connections"] == last_valid).then_some(())
        },
    )
    .await;
    // The reload the last SIGHUP asked for has finished and succeeded.
    eventually(
        Duration::from_secs(30),
        "the last reload to succeed",
        || async {
            let text = std::fs::read_to_string(d.state_dir().join("reload-state")).ok()?;
            text.split('\t').nth(1).filter(|s| *s == "ok").map(|_| ())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!d.has_exited());
    assert_eq!(
        d.child_pid(),
        Some(pid),
        "hot changes only: same nats-server"
    );
    let (code, h) = d.get("/health").await;
    assert_eq!((code, h["pid"].as_u64()), (200, Some(pid as u64)), "{h}");
    let (_, status) = d.get("/api/v1/status").await;
    assert_eq!(
        status["nats_server"]["server_info"]["max_connections"], last_valid,
        "{status}"
    );
    assert_eq!(status["nats_server"]["restarts"], 0);
    let (code, resp) = d.publish("market.a.b.trade", json!(1)).await;
    assert_eq!(code, 200, "{resp}");
    // A broken file now changes nothing either.
    write(good.replace("max_connections: 100", "max_connections: [unclosed"));
    d.signal(Signal::SIGHUP);
    eventually(
        Duration::from_secs(10),
        "the broken file refused",
        || async {
            let text = std::fs::read_to_string(d.state_dir().join("reload-state")).ok()?;
            text.split('\t')
                .nth(1)
                .filter(|s| *s == "failed")
                .map(|_| ())
        },
    )
    .await;
    let v = get_json(d.monitor, "/varz").await.unwrap().1;
    assert_eq!(v["max_connections"], last_valid);
    assert_eq!(d.child_pid(), Some(pid));
}

/// A stand-in nats-server that records each start in `count` and prints
/// `says` before exiting with `code`.
fn counting_script(
    dir: &std::path::Path,
    says: &str,
    code: i32,
) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let count = dir.join("starts");
    let script = dir.join("not-nats-server");
    std::fs::write(
        &script,
        format!(
            // Asked its version (the daemon does, once), it is not started.
            "#!/bin/sh\n[ \"$1\" = --version ] || echo start >> {count:?}\necho {says:?}\nexit {code}\n",
            count = count.display().to_string(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, count)
}

fn starts(count: &std::path::Path) -> usize {
    std::fs::read_to_string(count)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wrong_program_as_nats_server_gives_up_after_three_tries_with_exit_69() {
    // /bin/true: exits 0 at once, says nothing.
    let mut d = Daemon::builder().bin("/bin/true").start();
    d.expect_exit(69, Duration::from_secs(20));
    let log = d.log();
    assert!(
        log.contains("giving up: nats-server could not be started (3 attempts)")
            && log.contains("nats-server exited during start-up (exit code 0)"),
        "{log}"
    );
    assert_eq!(log.matches("nats-server started (pid").count(), 3, "{log}");

    // A program printing garbage: its words are in the error, and it was
    // started exactly three times, not in a storm.
    let dir = tempfile::tempdir().unwrap();
    let (script, count) = counting_script(dir.path(), "Usage: frobnicate [--garbage]", 2);
    let mut d = Daemon::builder().bin(&script).start();
    d.expect_exit(69, Duration::from_secs(20));
    let log = d.log();
    assert!(
        log.contains("last nats-server output:") && log.contains("Usage: frobnicate [--garbage]"),
        "{log}"
    );
    assert!(log.contains("(exit code 2)"), "{log}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(starts(&count), 3, "spawn attempts");
    assert!(nats_servers_with(&d.state_dir().display().to_string()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_server_that_is_not_executable_is_a_config_error_78() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (script, count) = counting_script(dir.path(), "never", 0);
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut d = Daemon::builder().bin(&script).start();
    d.expect_exit(78, Duration::from_secs(10));
    let log = d.log();
    assert!(
        log.contains(&format!("nats.server_bin: {}", script.display())),
        "{log}"
    );
    assert_eq!(starts(&count), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_that_cannot_be_created_exits_73_naming_it_without_starting_anything() {
    // A path under a regular file: not even root can create it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let data = file.join("state");
    let mut d = Daemon::builder().state(&data).start();
    d.expect_exit(73, Duration::from_secs(10));
    let log = d.log();
    assert!(log.contains(&data.display().to_string()), "{log}");
    assert!(!log.contains("nats-server started"), "{log}");
    assert!(nats_servers_with(&data.display().to_string()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_data_dir_exits_73_naming_it() {
    if !root_or_skip("a_read_only_data_dir_exits_73_naming_it") {
        return;
    }
    let fs = Tmpfs::mount("size=1m,ro");
    let mut d = Daemon::builder().state(&fs.path).start();
    d.expect_exit(73, Duration::from_secs(10));
    let log = d.log();
    assert!(
        log.contains(&fs.path.display().to_string()) && log.contains("Read-only file system"),
        "{log}"
    );
    assert!(!log.contains("nats-server started"), "{log}");
    drop(d);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_store_refuses_clearly_says_why_and_recovers_once_there_is_room() {
    if !root_or_skip("a_full_store_refuses_clearly_says_why_and_recovers_once_there_is_room") {
        return;
    }
    for bin in nats_servers() {
        full_store(&bin).await;
    }
}

async fn full_store(bin: &std::path::Path) {
    let fs = Tmpfs::mount("size=8m");
    let d = Daemon::builder()
        .bin(bin)
        .state(&fs.path)
        .top("api:\n  publish_timeout: 2s\n")
        // Two failures are all the budget: the kills a full disk causes
        // must not use it up (the daemon would give up with 69).
        .supervisor("  backoff_max: 500ms\n  max_failures: 2\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let pad = "x".repeat(60_000);
    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut refusals: HashMap<(u16, String), usize> = HashMap::new();
    let mut i = 0;
    // 8 MB hold about 130 of these. nats-server 2.9 wedges JetStream on a
    // full disk (/jsz hangs) and is killed as hung: publish until that
    // happened three times, more than max_failures allows. 2.10+ keeps
    // answering (each publish gets its store error) and is not killed:
    // there, publish until 60 were refused.
    let kills = || d.log().matches("killing nats-server (SIGKILL").count();
    let refused = |r: &HashMap<(u16, String), usize>| r.values().sum::<usize>();
    while refused(&refusals) < 12 || (kills() < 3 && refused(&refusals) < 60) {
        assert!(i < 3000, "the store never filled up: {refusals:?}");
        assert!(
            !d.has_exited(),
            "the daemon gave up on a full disk: {}",
            d.log()
        );
        let id = format!("f{i}");
        let body = json!({"subject": "market.full.trade", "message": {"id": id, "pad": pad}});
        let (status, headers, resp) = d.publish_raw(body.to_string().into_bytes()).await;
        match status {
            200 => acked.push((resp["seq"].as_u64().unwrap(), id)),
            503 | 507 => {
                if status == 503 {
                    assert!(headers.get("retry-after").is_some(), "{resp}");
                } else {
                    assert_eq!(resp["error"]["code"], "insufficient_storage", "{resp}");
                    let msg = resp["error"]["message"].as_str().unwrap();
                    assert!(msg.contains("no space left on device"), "{resp}");
                }
                *refusals
                    .entry((status, resp["error"]["code"].as_str().unwrap().to_string()))
                    .or_default() += 1;
            }
            other => panic!("unexpected {other}: {resp}"),
        }
        i += 1;
    }
    eprintln!(
        "{}: {} acked, then refused: {refusals:?}; nats-server killed {} times",
        bin.display(),
        acked.len(),
        kills()
    );
    assert!(acked.len() > 50, "{}", acked.len());
    assert!(
        refusals.keys().any(|(status, _)| *status == 507),
        "no publish was refused naming the full disk: {refusals:?}"
    );
    // Health says why (while the disk is full).
    let why = eventually(
        Duration::from_secs(20),
        "health naming the full disk",
        || async {
            let (code, h) = get_json(d.http, "/health").await.ok()?;
            let p = h["problems"].to_string();
            (code == 503 && p.contains("no space left on device")).then_some(p)
        },
    )
    .await;
    eprintln!("health: {why}");

    // Room again: service resumes by itself, the daemon never restarted.
    // The first message taken gets the next sequence (nats-server 2.10,
    // unless restarted after its failed writes, acknowledges it under a
    // sequence that is taken and can no longer read the messages after it).
    fs.remount("size=64m");
    let pid = d.pid();
    let seq = eventually(
        Duration::from_secs(30),
        "publishing to work again",
        || async {
            let (status, resp) = d.publish("market.full.trade", json!({"id": "again"})).await;
            (status == 200 && resp["persisted"] == true).then(|| resp["seq"].as_u64().unwrap())
        },
    )
    .await;
    let last = acked.iter().map(|(s, _)| *s).max().unwrap();
    assert!(
        seq > last,
        "the first publish with room again was acknowledged with sequence {seq}, not after the last acknowledged one ({last})"
    );
    d.wait_healthy(Duration::from_secs(10)).await;
    assert!(!d.has_exited());
    assert_eq!(d.pid(), pid);
    assert_all_stored(&d, &acked).await;
    acked.push((seq, "again".into()));
    assert_all_stored(&d, &acked).await;
    drop(d);
}
