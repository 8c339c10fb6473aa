//! Issue 14, catch-up-aware health: a node that returns to a three-node
//! cluster while its peers took tens of MB without it says "catching up"
//! (503, naming the stream and how far behind) until its replica is
//! current, its nats-server is not restarted for it, and `wait-ready`
//! exits 0 only once it is current. A node whose stream has no quorum
//! never becomes current: `wait-ready` gives up with 75 and says why.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::trio::{self, name, ports, Node};
use common::*;
use serde_json::Value;

const STREAM: &str = "BACKLOG";

/// Payload per message and how many: 40 MB the returning node must fetch.
const PAYLOAD: usize = 4096;
const MESSAGES: usize = 10_000;

fn node(i: usize, nodes: &[Node], bin: &Path, state: &Path) -> DaemonBuilder {
    trio::node(
        i,
        nodes,
        bin,
        state,
        "mpb-catchup",
        &format!("  jetstream_max_storage: 2GB\n  max_payload: 1MB\n  streams:\n    {STREAM}:\n      subjects: [\"backlog.>\"]\n      replicas: 3\n      max_msgs: -1\n      consumers:\n        worker:\n          filter_subject: \"backlog.>\"\n          replicas: 3\n"),
    )
}

/// `marketprism-broker wait-ready` against `d`'s config, as a child.
fn wait_ready(d: &Daemon, timeout: &str) -> std::process::Child {
    Command::new(BIN)
        .args(["wait-ready", "--timeout", timeout, "--config"])
        .arg(&d.config_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Messages of the stream in the replica this node's nats-server holds.
async fn local_messages(d: &Daemon) -> Option<u64> {
    let (_, jsz) = get_json(d.monitor, "/jsz?streams=true").await.ok()?;
    jsz["account_details"]
        .as_array()?
        .iter()
        .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == STREAM)
        .and_then(|s| s["state"]["messages"].as_u64())
}

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_returning_node_catches_up_unrestarted_and_wait_ready_waits_for_it() {
    catch_up(&nats_server()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_returning_node_catches_up_on_a_current_nats_server() {
    catch_up(&nats_server_current()).await;
}

async fn catch_up(bin: &Path) {
    let _g = ONE_AT_A_TIME.lock().await;
    let nodes = ports();
    let states = tempfile::tempdir().unwrap();
    let state = |i: usize| states.path().join(name(i));
    let mut ds: Vec<Option<Daemon>> = (0..3)
        .map(|i| Some(node(i, &nodes, bin, &state(i)).start()))
        .collect();
    for d in ds.iter().flatten() {
        d.wait_healthy(Duration::from_secs(60)).await;
    }

    // Node 3 leaves; the other two take 40 MB without it.
    let mut c = ds[2].take().unwrap();
    c.signal(nix::sys::signal::Signal::SIGTERM);
    c.expect_exit(0, Duration::from_secs(30));
    drop(c);
    let a = ds[0].as_ref().unwrap();
    let client = a.client().await;
    let js = async_nats::jetstream::new(client);
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    let t = Instant::now();
    for chunk in 0..MESSAGES / 500 {
        let mut acks = Vec::with_capacity(500);
        for i in 0..500 {
            let subject = format!("backlog.{}", chunk * 500 + i);
            acks.push(js.publish(subject, payload.clone()).await.unwrap());
        }
        for ack in acks {
            ack.await.expect("the two remaining nodes have quorum");
        }
    }
    eprintln!(
        "published {} MB while node 3 was down in {:?}",
        (MESSAGES * PAYLOAD) >> 20,
        t.elapsed()
    );

    // Node 3 returns on its old store; wait-ready starts right away.
    let c = node(2, &nodes, bin, &state(2)).start();
    let waiter = wait_ready(&c, "60s");
    let mut waiter = Some(waiter);
    let mut catching_up: Option<Value> = None;
    let mut first_pid: Option<u32> = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    let (out, ready_at_local) = loop {
        assert!(
            Instant::now() < deadline,
            "wait-ready did not end; log:\n{}",
            c.log()
        );
        if let Ok((code, h)) = get_json(c.http, "/health").await {
            if first_pid.is_none() {
                first_pid = h["pid"].as_u64().map(|p| p as u32);
            }
            if code == 503 && h["status"] == "catching_up" && catching_up.is_none() {
                catching_up = Some(h);
            }
        }
        if let Some(st) = waiter.as_mut().unwrap().try_wait().unwrap() {
            // The moment wait-ready says ready: this node's replica holds
            // every message.
            let local = local_messages(&c).await;
            let out = waiter.take().unwrap().wait_with_output().unwrap();
            assert_eq!(st.code(), Some(0), "wait-ready: {out:?}\nlog:\n{}", c.log());
            break (out, local);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("wait-ready said:\n{stdout}");
    assert_eq!(
        ready_at_local,
        Some(MESSAGES as u64),
        "wait-ready exited 0 before node 3's replica was current:\n{stdout}"
    );
    let h = catching_up.unwrap_or_else(|| {
        panic!(
            "node 3 was never seen catching up; wait-ready said:\n{stdout}\nlog:\n{}",
            c.log()
        )
    });
    assert!(h["problems"].as_array().unwrap().is_empty(), "{h}");
    let lagging = h["catching_up"].to_string();
    assert!(
        lagging.contains(STREAM) || lagging.contains("meta group"),
        "{h}"
    );
    assert!(stdout.contains("waiting: catching up: "), "{stdout}");
    assert!(stdout.contains("ready: healthy and current"), "{stdout}");

    // Healthy now, on the same child: nothing was restarted.
    let h = c.wait_healthy(Duration::from_secs(5)).await;
    assert_eq!(h["status"], "healthy", "{h}");
    let (_, st) = c.get("/api/v1/status").await;
    assert_eq!(st["nats_server"]["restarts"], 0, "{st}\nlog:\n{}", c.log());
    assert_eq!(h["pid"].as_u64().map(|p| p as u32), first_pid, "{h}");
    assert_eq!(st["cluster"]["catching_up"], serde_json::json!([]), "{st}");

    // Its peers go: the stream has no quorum and cannot become current.
    for mut d in ds.iter_mut().filter_map(Option::take) {
        d.signal(nix::sys::signal::Signal::SIGTERM);
        d.expect_exit(0, Duration::from_secs(30));
    }
    c.wait_health(503, Duration::from_secs(30)).await;
    let out = wait_ready(&c, "1s").wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(err.contains("this node is not ready after 1s: "), "{err}");
    // Without quorum, /health itself may take longer than 1 s (2.9.10's
    // JetStream requests wait out their timeout): either way it says why.
    assert!(
        err.contains("unhealthy: ") || err.contains("does not answer"),
        "{err}"
    );
}
