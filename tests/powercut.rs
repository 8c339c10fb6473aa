//! Power cuts (issue 13): every HTTP publish answered `"durable": true`
//! survives a power cut, and with `nats.durability: lazy` acknowledged
//! publishes are lost, which proves the harness sees loss.
//!
//! nats-server's store lives on a LazyFS-style FUSE filesystem
//! (tests/powercut/lazyfs.rs): writes pass through, but what no fsync or
//! fdatasync covered is thrown away on a "power cut". Each cut: several
//! HTTP clients publish, then at a random moment nats-server and the
//! daemon are killed (kill -9, the processes of a machine that lost
//! power), every unsynced write is dropped and the filesystem is mounted
//! again (no page cache survives), and the daemon starts again on the
//! same store. At the end the stream is read back message by message.
//!
//! Needs FUSE (root and /dev/fuse): where that is missing each test prints
//! one SKIPPED line with the reason and passes.

mod common;
#[path = "powercut/lazyfs.rs"]
mod lazyfs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lazyfs::LazyFs;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const STREAM: &str = "POWER";
const CLIENTS: usize = 8;

/// Cuts per run: `MPB_POWERCUT_CUTS` or 20.
fn cuts() -> usize {
    std::env::var("MPB_POWERCUT_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// A small xorshift generator: the cut moments vary from run to run, and
/// the seed is printed so a failing run can be repeated
/// (`MPB_POWERCUT_SEED`).
struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("MPB_POWERCUT_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("power-cut seed: {seed} (MPB_POWERCUT_SEED={seed} repeats it)");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The FUSE mount, or why the test cannot run here.
fn mount() -> Option<(tempfile::TempDir, LazyFs)> {
    if let Some(why) = LazyFs::unavailable() {
        let test = std::thread::current()
            .name()
            .unwrap_or("tests/powercut.rs")
            .to_string();
        println!("SKIPPED {test}: {why}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("disk");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let fs = LazyFs::mount(&backing, &mnt).unwrap();
    Some((dir, fs))
}

/// A daemon on `state` (on the FUSE mount) at fixed ports, so clients and
/// the test find it again after each cut.
fn daemon(bin: &Path, state: &Path, ports: (u16, u16, u16), nats_extra: &str) -> Daemon {
    Daemon::builder()
        .bin(bin)
        .state(state)
        .ports(ports)
        .top("api:\n  publish_timeout: 5s\n")
        .nats(&format!(
            "  streams:\n    {STREAM}:\n      subjects: [\"power.>\"]\n      storage: file\n{nats_extra}"
        ))
        .start()
}

/// What the clients were told: seq -> the message id that got it.
type Answered = BTreeMap<u64, String>;

/// Publishes unique ids until `stop`; keeps the ones answered 200 (and,
/// with `durable_only`, `"durable": true`). Any other answer (the daemon
/// being killed mid-request) promises nothing.
async fn client(
    d: Arc<Daemon>,
    c: usize,
    round: usize,
    stop: Arc<AtomicBool>,
    durable_only: bool,
    out: Arc<Mutex<Answered>>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Every other client streams 20 lines at a time through
        // POST /api/v1/publish/stream: its acknowledgments make the same
        // promise.
        if c % 2 == 1 {
            let ids: Vec<String> = (0..20).map(|k| format!("r{round}-c{c}-{i}-{k}")).collect();
            i += 1;
            let body: String = ids
                .iter()
                .map(|id| {
                    json!({"subject": format!("power.c{c}"), "message": {"id": id}}).to_string()
                        + "\n"
                })
                .collect();
            let Ok((200, _, resp)) = d
                .request(
                    None,
                    "POST",
                    "/api/v1/publish/stream",
                    &[("content-type", "application/x-ndjson")],
                    body.into_bytes(),
                )
                .await
            else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            for line in String::from_utf8_lossy(&resp).lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                let (Some(n), Some(seq)) = (v["line"].as_u64(), v["seq"].as_u64()) else {
                    continue;
                };
                if v["success"] != true {
                    continue;
                }
                if durable_only && v["durable"] != true {
                    panic!("a streamed publish answered without \"durable\": true under nats.durability: sync: {v}");
                }
                out.lock().unwrap().insert(seq, ids[n as usize - 1].clone());
            }
            continue;
        }
        let id = format!("r{round}-c{c}-{i}");
        i += 1;
        let body = json!({"subject": format!("power.c{c}"), "message": {"id": id}}).to_string();
        let Ok((status, _, resp)) = d
            .request(
                None,
                "POST",
                "/api/v1/publish",
                &[("content-type", "application/json")],
                body.into_bytes(),
            )
            .await
        else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        if status != 200 {
            continue;
        }
        let v: Value = serde_json::from_slice(&resp).unwrap();
        assert_eq!(v["persisted"], true, "{v}");
        if durable_only && v["durable"] != true {
            panic!("a publish to a one-replica file stream answered without \"durable\": true under nats.durability: sync: {v}");
        }
        let seq = v["seq"].as_u64().unwrap();
        out.lock().unwrap().insert(seq, id);
    }
}

/// Kills nats-server and the daemon at once (SIGKILL, as a machine that
/// loses power stops them) and waits until both are gone.
fn kill_machine(d: &Daemon) {
    let pids: Vec<u32> = d.child_pid().into_iter().chain([d.pid()]).collect();
    for &p in &pids {
        try_kill(p, Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "a process outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every message of the stream, seq -> id (the `id` of its JSON payload).
async fn read_back(d: &Daemon) -> BTreeMap<u64, String> {
    let js = async_nats::jetstream::new(d.client().await);
    let mut stream = js.get_stream(STREAM).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = BTreeMap::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        match stream.get_raw_message(seq).await {
            Ok(m) => {
                let v: Value = serde_json::from_slice(&m.payload).unwrap();
                out.insert(seq, v["id"].as_str().unwrap_or_default().to_string());
            }
            // A gap: nothing stored at that seq.
            Err(_) => continue,
        }
    }
    out
}

/// Runs `cuts` power cuts under load; returns what the clients were told
/// and what the stream holds at the end.
async fn run_cuts(
    bin: &Path,
    nats_extra: &str,
    cuts: usize,
    durable_only: bool,
) -> Option<(Answered, BTreeMap<u64, String>, u64)> {
    let (dir, mut fs) = mount()?;
    let state: PathBuf = fs.mountpoint().join("state");
    let [a, b, c] = free_ports::<3>();
    let ports = (a, b, c);
    let mut rng = Rng::new();
    let answered = Arc::new(Mutex::new(Answered::new()));
    let mut dropped = 0;
    for round in 0..cuts {
        let d = daemon(bin, &state, ports, nats_extra);
        d.wait_healthy(Duration::from_secs(60)).await;
        let d = Arc::new(d);
        // Messages acknowledged before a cut must be there after it: a
        // lost one's seq goes to a new message, so seq and id both count.
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                tokio::spawn(client(
                    d.clone(),
                    c,
                    round,
                    stop.clone(),
                    durable_only,
                    answered.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(150 + rng.below(600))).await;
        kill_machine(&d);
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        drop(d);
        let report = fs.power_cut().unwrap();
        dropped += report.bytes_dropped;
    }
    let d = daemon(bin, &state, ports, nats_extra);
    d.wait_healthy(Duration::from_secs(60)).await;
    let stored = read_back(&d).await;
    drop(d);
    drop(fs);
    drop(dir);
    let answered = Arc::try_unwrap(answered).unwrap().into_inner().unwrap();
    Some((answered, stored, dropped))
}

/// The answered messages the stream does not hold at their seq.
fn lost(answered: &Answered, stored: &BTreeMap<u64, String>) -> Vec<(u64, String)> {
    answered
        .iter()
        .filter(|(seq, id)| stored.get(seq) != Some(id))
        .map(|(s, i)| (*s, i.clone()))
        .collect()
}

async fn durable_answers_survive(bin: PathBuf) {
    let n = cuts();
    let Some((answered, stored, dropped)) = run_cuts(&bin, "", n, true).await else {
        return;
    };
    let lost = lost(&answered, &stored);
    println!(
        "{}: {n} power cuts, {} publishes answered durable, {} stored, {dropped} unsynced bytes dropped by the cuts, {} lost",
        bin.display(),
        answered.len(),
        stored.len(),
        lost.len()
    );
    assert!(
        answered.len() >= 100.min(50 * n),
        "too few publishes were answered to prove anything: {}",
        answered.len()
    );
    assert!(
        lost.is_empty(),
        "{} of {} publishes answered \"durable\": true are gone after {n} power cuts, e.g. {:?}",
        lost.len(),
        answered.len(),
        &lost[..lost.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_answers_survive_power_cuts_on_a_current_nats_server() {
    durable_answers_survive(nats_server_current()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_answers_survive_power_cuts_on_debian_nats_server() {
    durable_answers_survive(nats_server()).await;
}

/// The same harness with the daemon's sync off must see acknowledged
/// messages vanish, or it could not see a broken sync either. nats-server's
/// own flush is pushed out of the way (2 minutes on the current server,
/// 2.9.10's fixed default), so what survives is what someone synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lazy_acknowledgments_are_lost_by_power_cuts() {
    for (bin, extra) in [
        (
            nats_server_current(),
            "  durability: lazy\n  sync_interval: 2m\n",
        ),
        (nats_server(), "  durability: lazy\n"),
    ] {
        let Some((answered, stored, _)) = run_cuts(&bin, extra, 3, false).await else {
            return;
        };
        let lost = lost(&answered, &stored);
        println!(
            "{} with durability: lazy: 3 power cuts, {} acknowledged, {} lost",
            bin.display(),
            answered.len(),
            lost.len()
        );
        assert!(
            !answered.is_empty() && !lost.is_empty(),
            "with durability: lazy, 3 power cuts lost none of {} acknowledged publishes: the harness cannot see loss",
            answered.len()
        );
    }
}

/// A sync that fails is never a 200: EIO is 503 `sync_failed`, a full disk
/// 507; both are counted in /metrics and listed in /health, and publishing
/// works again once the disk does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_sync_is_an_error_counted_and_shown() {
    let Some((_dir, fs)) = mount() else { return };
    let state = fs.mountpoint().join("state");
    let [a, b, c] = free_ports::<3>();
    let d = daemon(&nats_server_current(), &state, (a, b, c), "");
    d.wait_healthy(Duration::from_secs(60)).await;
    let (s, v) = d.publish("power.ok", json!({"n": 1})).await;
    assert_eq!((s, &v["durable"]), (200, &json!(true)), "{v}");

    for (errno, status, code, label) in [
        (5, 503, "sync_failed", "io"),
        (28, 507, "insufficient_storage", "no_space"),
    ] {
        fs.fail_syncs(Some(errno));
        let (s, v) = d.publish("power.fail", json!({"n": 2})).await;
        assert_eq!(s, status, "errno {errno}: {v}");
        assert_eq!(v["success"], false, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("syncing it to disk failed"), "{msg}");
        assert!(msg.contains(&format!("os error {errno}")), "{msg}");
        // A batch: every entry carries the error, the answer is 207.
        let batch =
            json!([{"subject": "power.b", "message": 1}, {"subject": "power.b", "message": 2}]);
        let (s, v) = d.post("/api/v1/publish/batch", batch).await;
        assert_eq!(s, 207, "{v}");
        assert_eq!(v["failed"], 2, "{v}");
        assert_eq!(v["results"][0]["status"], status, "{v}");
        fs.fail_syncs(None);

        let (_, _, metrics) = d
            .request(None, "GET", "/metrics", &[], vec![])
            .await
            .unwrap();
        let metrics = String::from_utf8_lossy(&metrics).to_string();
        let line = format!("marketprism_broker_sync_failures_total{{error=\"{label}\"}} ");
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in /metrics"))
            .trim()
            .parse()
            .unwrap();
        assert!(count >= 2, "{line}{count}");
        let (hs, h) = d.get("/health").await;
        assert_eq!(hs, 503, "{h}");
        let problems = h["problems"].to_string();
        assert!(
            problems.contains("syncing the JetStream store to disk failed"),
            "{problems}"
        );
    }
    let (s, v) = d.publish("power.ok", json!({"n": 3})).await;
    assert_eq!((s, &v["durable"]), (200, &json!(true)), "{v}");
}

/// A sync that hangs (a dying disk) is never waited out past
/// `api.publish_timeout`: the publish is answered 503 `sync_timeout`, and
/// publishing is durable again once the disk answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_sync_is_a_503_within_publish_timeout() {
    let Some((_dir, fs)) = mount() else { return };
    let state = fs.mountpoint().join("state");
    let d = Daemon::builder()
        .bin(nats_server_current())
        .state(&state)
        .top("api:\n  publish_timeout: 1s\n")
        .start();
    d.wait_healthy(Duration::from_secs(60)).await;
    let (s, v) = d.publish("market.hung", json!({"n": 1})).await;
    assert_eq!((s, &v["durable"]), (200, &json!(true)), "{v}");

    fs.stall_syncs(Some(Duration::from_secs(3)));
    let t = Instant::now();
    let (s, v) = d.publish("market.hung", json!({"n": 2})).await;
    let took = t.elapsed();
    fs.stall_syncs(None);
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "sync_timeout", "{v}");
    assert!(
        took < Duration::from_millis(2500),
        "answered after {took:?}, past api.publish_timeout (1s)"
    );
    // The stalled sync ends; the next publish is synced again.
    let v = eventually(
        Duration::from_secs(15),
        "a durable publish after the stall",
        || async {
            let (s, v) = d.publish("market.hung", json!({"n": 3})).await;
            (s == 200 && v["durable"] == true).then_some(v)
        },
    )
    .await;
    assert_eq!(v["persisted"], true, "{v}");
}

/// `lazy` answers as soon as the stream acknowledges, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lazy_answers_say_they_are_not_durable() {
    let d = Daemon::builder()
        .bin(nats_server_current())
        .nats("  durability: lazy\n")
        .start();
    d.wait_healthy(Duration::from_secs(30)).await;
    let (s, v) = d
        .publish("market.binance.BTCUSDT.trade", json!({"p": 1}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["persisted"], &v["durable"]),
        (&json!(true), &json!(false)),
        "{v}"
    );
}
