//! Issue 14, lame duck: stopping a clustered node first puts its
//! nats-server into lame-duck mode. Three daemons on 127.0.0.1 form a
//! cluster with an R3 stream and a short grace period; an async-nats
//! client connected to node A only is told `ldm` and moves to B or C, and
//! its JetStream publishes keep succeeding; HTTP publishes to A get 503
//! "draining" with Retry-After meanwhile, /health says draining, STATUS=
//! says so, and A exits 0 once nats-server has drained (after the grace
//! period, long before the 30 s duration). A single node still stops at
//! once.

mod common;

use std::future::IntoFuture;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::trio::{self, ports, Node};
use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const STREAM: &str = "LAMEDUCK";
const GRACE: Duration = Duration::from_secs(2);

fn node(i: usize, nodes: &[Node], bin: &Path, state: &Path) -> DaemonBuilder {
    trio::node(
        i,
        nodes,
        bin,
        state,
        "mpb-ldm",
        &format!(
            "  lame_duck_grace_period: {}s\n  lame_duck_duration: 30s\n  streams:\n    {STREAM}:\n      subjects: [\"ld.>\"]\n      replicas: 3\n",
            GRACE.as_secs()
        ),
    )
}

/// Not both versions at once: 2 × 3 nodes on a shared 2-core machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_node_drains_its_clients_to_the_others_on_2_9() {
    let _g = ONE_AT_A_TIME.lock().await;
    drains(&nats_server()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_node_drains_its_clients_to_the_others_on_a_current_server() {
    let _g = ONE_AT_A_TIME.lock().await;
    drains(&nats_server_current()).await;
}

async fn drains(bin: &Path) {
    let nodes = ports();
    let states = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind();
    let mut daemons: Vec<Daemon> = (0..3)
        .map(|i| {
            let b = node(i, &nodes, bin, &states.path().join(format!("n{i}")));
            if i == 0 {
                b.env("NOTIFY_SOCKET", notify.path_str()).start()
            } else {
                b.start()
            }
        })
        .collect();
    for d in &daemons {
        d.wait_healthy(Duration::from_secs(60)).await;
    }
    // Every node takes publishes for the R3 stream.
    for d in &daemons {
        eventually(Duration::from_secs(30), "an acked HTTP publish", || async {
            let (code, v) = d.publish("ld.warmup", json!({"n": 0})).await;
            (code == 200 && v["persisted"] == true).then_some(())
        })
        .await;
    }

    // A native client that knows node A only: the others it learns from
    // A's INFO (connect_urls), as a client given one address does.
    let ldm_seen = Arc::new(AtomicBool::new(false));
    let seen = ldm_seen.clone();
    let client = async_nats::ConnectOptions::new()
        .event_callback(move |e| {
            let seen = seen.clone();
            async move {
                if matches!(e, async_nats::Event::LameDuckMode) {
                    seen.store(true, Ordering::SeqCst);
                }
            }
        })
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(format!("nats://127.0.0.1:{}", nodes[0].nats))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let gave_up = Arc::new(Mutex::new(Vec::<String>::new()));
    let producer = {
        let (stop, acked, gave_up) = (stop.clone(), acked.clone(), gave_up.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let mut last = String::new();
                let mut ok = false;
                // Retries with the same message id: nothing doubled.
                for _ in 0..100 {
                    let mut h = async_nats::HeaderMap::new();
                    h.insert("Nats-Msg-Id", format!("native-{i}").as_str());
                    let r = match js
                        .publish_with_headers("ld.native", h, format!("{i}").into())
                        .await
                    {
                        Ok(ack) => tokio::time::timeout(Duration::from_secs(2), ack.into_future())
                            .await
                            .map_err(|_| "ack timed out".to_string())
                            .and_then(|r| r.map_err(|e| e.to_string())),
                        Err(e) => Err(e.to_string()),
                    };
                    match r {
                        Ok(_) => {
                            ok = true;
                            break;
                        }
                        Err(e) => {
                            last = e;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                if ok {
                    acked.fetch_add(1, Ordering::SeqCst);
                } else {
                    gave_up.lock().unwrap().push(format!("message {i}: {last}"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(acked.load(Ordering::SeqCst) > 0, "the producer runs");

    // Stop node A.
    let a = daemons.remove(0);
    let t = Instant::now();
    a.signal(Signal::SIGTERM);
    let mut draining_503 = None;
    let mut health_draining = None;
    let mut other = Vec::new();
    // A publish and a /health every 50 ms, each in a task of its own: one
    // taken just before the drain may wait for its ack (2.10+ shuts
    // JetStream down in lame duck), and a slow /health on a loaded machine,
    // must not hold back the requests that come after them.
    enum Answer {
        Publish(Result<(u16, hyper::HeaderMap, bytes::Bytes), String>),
        Health(Option<Value>),
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let port = a.http;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut failed: Vec<String> = Vec::new();
    let mut answered_200 = 0usize;
    while !a.has_exited() && t.elapsed() < Duration::from_secs(60) {
        tokio::select! {
            _ = tick.tick() => {
                let tx2 = tx.clone();
                tokio::spawn(async move {
                    let body = json!({"subject": "ld.http", "message": {"n": 1}}).to_string();
                    let r = request(port, "POST", "/api/v1/publish", &[("content-type", "application/json")], body.into_bytes()).await;
                    let _ = tx2.send(Answer::Publish(r));
                });
                let tx2 = tx.clone();
                tokio::spawn(async move {
                    let h = match get_json(port, "/health").await {
                        Ok((503, h)) => Some(h),
                        _ => None,
                    };
                    let _ = tx2.send(Answer::Health(h));
                });
            }
            Some(answer) = rx.recv() => match answer {
                Answer::Health(Some(h)) if h["status"] == "draining" => {
                    health_draining.get_or_insert(h);
                }
                Answer::Health(_) => {}
                Answer::Publish(Err(e)) => failed.push(e),
                Answer::Publish(Ok((code, headers, body))) => {
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    if code == 503 && v["error"]["code"] == "draining" {
                        draining_503.get_or_insert((headers.get("retry-after").cloned(), v));
                    } else if code != 200 {
                        other.push((code, v));
                    } else {
                        answered_200 += 1;
                    }
                }
            }
        }
    }
    // What was answered before the exit but not read yet.
    drop(tx);
    while let Ok(answer) = rx.try_recv() {
        match answer {
            Answer::Health(Some(h)) if h["status"] == "draining" => {
                health_draining.get_or_insert(h);
            }
            Answer::Publish(Ok((503, headers, body))) => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if v["error"]["code"] == "draining" {
                    draining_503.get_or_insert((headers.get("retry-after").cloned(), v));
                }
            }
            _ => {}
        }
    }
    let mut a = a;
    let status = a.wait_exit(Duration::from_secs(5));
    let took = t.elapsed();
    let log = a.log();
    assert_eq!(status.code(), Some(0), "{log}");
    let (retry_after, v) = draining_503.unwrap_or_else(|| {
        panic!("no 503 draining while A drained ({answered_200} answered 200, other answers {other:?}, failed requests {failed:?}):\n{log}")
    });
    assert!(retry_after.is_some(), "503 without Retry-After: {v}");
    assert!(
        v["error"]["message"].to_string().contains("draining"),
        "{v}"
    );
    let h = health_draining.expect("/health said 503 draining");
    assert_eq!(h["nats_server"], "draining", "{h}");
    assert!(
        notify.all().iter().any(|m| m.lines().any(|l| l
            == "STATUS=draining: nats-server in lame-duck mode, clients moving to other nodes")),
        "STATUS= never said draining: {:?}",
        notify.all()
    );
    assert!(notify.all().iter().any(|m| m.contains("STOPPING=1")));
    // It waited for the grace period (clients are closed after it), and
    // did not sit out the 30 s duration with so few clients.
    assert!(
        took >= GRACE,
        "stopped after {took:?}, before the grace period:\n{log}"
    );
    assert!(
        took < Duration::from_secs(20),
        "stopped after {took:?}:\n{log}"
    );
    assert!(
        log.contains("draining: nats-server in lame-duck mode"),
        "{log}"
    );
    assert!(!log.contains("SIGINT") && !log.contains("SIGKILL"), "{log}");

    // The native client was told and moved on: it publishes through B or C.
    let before = acked.load(Ordering::SeqCst);
    eventually(
        Duration::from_secs(20),
        "publishes after the stop",
        || async { (acked.load(Ordering::SeqCst) >= before + 20).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    producer.await.unwrap();
    assert!(ldm_seen.load(Ordering::SeqCst), "the client never saw ldm");
    let port = client.server_info().port;
    assert!(
        port == nodes[1].nats || port == nodes[2].nats,
        "client on port {port}, not B or C"
    );
    assert!(
        gave_up.lock().unwrap().is_empty(),
        "publishes that never got an ack: {:?}",
        gave_up.lock().unwrap()
    );
    eprintln!(
        "{}: A stopped {took:?} after SIGTERM (grace {GRACE:?}); {} native publishes acked",
        bin.display(),
        acked.load(Ordering::SeqCst)
    );
    drop(daemons);
}

/// A single node has nowhere to send its clients: it stops at once,
/// however long the lame-duck duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_stops_promptly() {
    for bin in nats_servers() {
        let notify = NotifySocket::bind();
        let mut d = Daemon::builder()
            .bin(&bin)
            .nats("  lame_duck_grace_period: 20s\n  lame_duck_duration: 1m\n")
            .env("NOTIFY_SOCKET", notify.path_str())
            .start();
        d.wait_healthy(Duration::from_secs(30)).await;
        let t = Instant::now();
        d.signal(Signal::SIGTERM);
        let status = d.wait_exit(Duration::from_secs(15));
        let took = t.elapsed();
        assert_eq!(status.code(), Some(0), "{}", d.log());
        assert!(took < Duration::from_secs(5), "took {took:?}:\n{}", d.log());
        assert!(!d.log().contains("lame-duck"), "{}", d.log());
        assert!(
            !notify.all().iter().any(|m| m.contains("draining")),
            "{:?}",
            notify.all()
        );
    }
}
