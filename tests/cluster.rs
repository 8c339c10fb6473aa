//! Issue 6, cluster: three daemons on 127.0.0.1, each supervising its own
//! nats-server, form one JetStream cluster with an R3 stream (every node
//! lists the same three routes, its own included). While a
//! producer publishes through one daemon's HTTP API and another through
//! async-nats (connected to all three nodes, with message ids), the test
//! kill -9s one node's nats-server, stops a whole daemon (the one whose node
//! leads the stream, to force a leader change), and starts it again on its
//! state dir. Every acknowledged publish must then be in the stream, the
//! returning node must catch up, and neither client needed a restart.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::trio::{self, name, ports, Node};
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const STREAM: &str = "CLUSTERED";

fn start_node(i: usize, nodes: &[Node], bin: &Path, state: &Path) -> Daemon {
    node(i, nodes, bin, state).start()
}

fn node(i: usize, nodes: &[Node], bin: &Path, state: &Path) -> DaemonBuilder {
    let client_urls: String = nodes
        .iter()
        .map(|n| format!("    - \"nats://127.0.0.1:{}\"\n", n.nats))
        .collect();
    trio::node(
        i,
        nodes,
        bin,
        state,
        "mpb-test",
        &format!("  client_urls:\n{client_urls}  streams:\n    {STREAM}:\n      subjects: [\"clustered.>\"]\n      replicas: 3\n      consumers:\n        worker:\n          filter_subject: \"clustered.>\"\n"),
    )
}

/// Whether `bin` is the current nats-server (not Debian's 2.9).
fn client_is_current(bin: &Path) -> bool {
    bin == nats_server_current()
}

/// The status' view of the stream's group: leader and replica names.
fn stream_group(status: &Value) -> Option<Value> {
    status["cluster"]["streams"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == STREAM)
        .cloned()
}

/// Waits until `d`'s status shows the stream with a leader and two
/// replicas that are current with no lag; returns the group.
async fn wait_stream_settled(d: &Daemon, within: Duration, what: &str) -> Value {
    eventually(within, what, || async {
        let (code, st) = get_json(d.http, "/api/v1/status").await.ok()?;
        let g = stream_group(&st).filter(|_| code == 200)?;
        let reps = g["replicas"].as_array()?;
        let ok = g["leader"].is_string()
            && reps.len() == 2
            && reps
                .iter()
                .all(|r| r["current"] == true && r["lag"] == 0 && r["offline"] == false);
        ok.then_some(g)
    })
    .await
}

/// A single keep-alive HTTP/1.1 connection: the "HTTP client" that must
/// keep working through every fault without being recreated.
struct HttpClient {
    port: u16,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl HttpClient {
    async fn connect(port: u16) -> HttpClient {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        HttpClient { port, sender }
    }

    /// POST /api/v1/publish; Err when the connection itself failed.
    async fn publish(&mut self, subject: &str, message: Value) -> Result<(u16, Value), String> {
        let body = json!({"subject": subject, "message": message}).to_string();
        let req = hyper::Request::post("/api/v1/publish")
            .header("host", format!("127.0.0.1:{}", self.port))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(20), self.sender.send_request(req))
            .await
            .map_err(|_| "no answer within 20 s".to_string())?
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let retry_after = resp.headers().contains_key("retry-after");
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status == 503 && !retry_after {
            return Err(format!("503 without Retry-After: {v}"));
        }
        Ok((status, v))
    }
}

/// Acked / failed publishes per phase and producer.
#[derive(Default)]
struct Tally {
    /// phase -> (http acked, http failed, nats acked, nats failed)
    by_phase: BTreeMap<usize, [usize; 4]>,
}

const PHASES: [&str; 5] = [
    "steady",
    "kill -9 nats-server",
    "SIGTERM daemon",
    "daemon back",
    "settled",
];

/// Not both versions at the same time: 2 × 3 nodes on a shared 2-core CI
/// machine would time the elections, not the daemon.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_daemons_keep_every_acked_publish_through_kill_stop_and_return() {
    let _g = ONE_AT_A_TIME.lock().await;
    cluster_faults(&nats_server()).await;
}

/// The same on a current nats-server (route pooling, other /jsz shapes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_daemons_on_a_current_nats_server() {
    let _g = ONE_AT_A_TIME.lock().await;
    cluster_faults(&nats_server_current()).await;
}

async fn cluster_faults(bin: &Path) {
    let started = Instant::now();
    let nodes = ports();
    let states = tempfile::tempdir().unwrap();
    let state = |i: usize| states.path().join(name(i));

    // --- Three daemons at once: one cluster, one R3 stream. -------------
    let mut daemons: Vec<Option<Daemon>> = (0..3)
        .map(|i| Some(start_node(i, &nodes, bin, &state(i))))
        .collect();
    // Room for one self-heal (about a minute; see below).
    for d in daemons.iter().flatten() {
        d.wait_healthy(Duration::from_secs(150)).await;
    }
    let formed = started.elapsed();
    let mut formation_heals = [0u64; 3];
    let d = |daemons: &Vec<Option<Daemon>>, i: usize| -> u16 { daemons[i].as_ref().unwrap().http };

    let mut meta_leaders = HashSet::new();
    for (i, dm) in daemons.iter().flatten().enumerate() {
        let (code, st) = dm.get("/api/v1/status").await;
        assert_eq!(code, 200);
        let c = &st["cluster"];
        assert_eq!(c["server_name"], name(i), "{c}");
        assert_eq!(c["name"], "mpb-test", "{c}");
        let routes = c["routes"].as_array().expect("routes from /routez");
        assert_eq!(routes.len(), 2, "one route per other node: {c}");
        let addrs: HashSet<String> = routes
            .iter()
            .map(|r| r["address"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(addrs.len(), 2, "{c}");
        // nats-server >= 2.10 names the remote servers; 2.9 does not.
        let mut named: Vec<&str> = routes.iter().filter_map(|r| r["name"].as_str()).collect();
        named.sort();
        let others: Vec<String> = (0..3).filter(|j| *j != i).map(name).collect();
        if !named.is_empty() || client_is_current(bin) {
            assert_eq!(named, others, "{c}");
        }
        meta_leaders.insert(
            c["meta"]["leader"]
                .as_str()
                .expect("a meta leader")
                .to_string(),
        );
        assert_eq!(c["meta"]["cluster_size"], 3, "{c}");
        assert_eq!(c["problems"], json!([]), "{c}");
        // The meta group check found every routed peer and this node.
        assert_eq!(c["meta_heal"]["shortfall"], Value::Null, "{c}");
        // Debian 13's nats-server 2.10.27 sometimes leaves a server out of
        // the meta group when three start at once under load (about one
        // start in 30 here): the self-heal restarts that one server once,
        // and says why. Anything else is a false alarm.
        let heals = c["meta_heal"]["restarts"].as_u64().expect("restarts");
        if heals > 0 {
            let log = dm.log();
            assert!(
                !client_is_current(bin),
                "the meta group self-heal restarted a current nats-server:\n{log}"
            );
            assert_eq!(heals, 1, "{c}");
            assert!(log.contains("restarting nats-server (self-heal)"), "{log}");
            eprintln!(
                "NOTE: node {} needed the meta group self-heal while the cluster formed (nats-server {}); formed in {formed:?}",
                name(i),
                bin.display()
            );
        }
        formation_heals[i] = heals;
        // The reconciliation settled without errors on every daemon.
        assert_eq!(st["stream_reconciliation"]["errors"], json!([]), "{st}");
        assert_eq!(st["stream_reconciliation"]["error"], Value::Null, "{st}");
    }
    assert_eq!(
        meta_leaders.len(),
        1,
        "one meta leader for all: {meta_leaders:?}"
    );
    // The meta leader sees both other peers, current (every version lists
    // them there).
    let ml = meta_leaders.iter().next().unwrap().clone();
    let ml_idx = (0..3).find(|i| name(*i) == ml).unwrap();
    let (_, st) = daemons[ml_idx]
        .as_ref()
        .unwrap()
        .get("/api/v1/status")
        .await;
    let peers = st["cluster"]["meta"]["peers"].as_array().unwrap().clone();
    let mut peer_names: Vec<&str> = peers.iter().map(|p| p["name"].as_str().unwrap()).collect();
    peer_names.sort();
    let others: Vec<String> = (0..3).filter(|j| *j != ml_idx).map(name).collect();
    assert_eq!(peer_names, others, "{st}");
    assert!(peers.iter().all(|p| p["current"] == true), "{st}");
    // The declared consumer, created by three daemons at once, is there
    // for each of them.
    for dm in daemons.iter().flatten() {
        let (code, c) = dm
            .get(&format!("/api/v1/streams/{STREAM}/consumers/worker"))
            .await;
        assert_eq!(code, 200, "{c}");
    }
    // Exactly one stream of that name, R3, its group spread over all nodes.
    let g = wait_stream_settled(
        daemons[0].as_ref().unwrap(),
        Duration::from_secs(20),
        "the stream's replicas to be current",
    )
    .await;
    assert_eq!(g["configured_replicas"], 3, "{g}");
    let mut members: Vec<String> = g["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    members.push(g["leader"].as_str().unwrap().to_string());
    members.sort();
    assert_eq!(members, vec!["n1", "n2", "n3"], "{g}");
    for dm in daemons.iter().flatten() {
        let (_, list) = dm.get("/api/v1/streams").await;
        let named = list
            .to_string()
            .matches(&format!("\"name\":\"{STREAM}\""))
            .count();
        assert_eq!(named, 1, "{list}");
    }
    let creators = daemons
        .iter()
        .flatten()
        .filter(|d| d.log().contains(&format!("created stream {STREAM}")))
        .count();
    let rounds: usize = daemons
        .iter()
        .flatten()
        .map(|d| d.log().matches("did not settle").count())
        .sum();
    let raced = daemons
        .iter()
        .flatten()
        .filter(|d| d.log().contains("was created by another node"))
        .count();
    let consumer_errors: usize = daemons
        .iter()
        .flatten()
        .map(|d| d.log().matches("cannot create consumer").count())
        .sum();
    eprintln!("cluster formed, healthy and reconciled in {formed:?}; daemons that created {STREAM}: {creators}, found it created by another: {raced}, reconciliation rounds retried: {rounds}, consumer creations refused: {consumer_errors}");
    // Three daemons reconciled at once; nats-server's did_create tells the
    // one whose request made the stream: the others found it made.
    // (None, when the winning answer was lost to a timeout and a re-read
    // found the stream.)
    assert!(
        creators <= 1,
        "one daemon at most says it created the stream"
    );

    // The stream leader's node is the one to stop later; the HTTP producer
    // talks to another one, which stays up throughout.
    let leader_idx = |g: &Value| -> usize {
        let l = g["leader"].as_str().unwrap();
        (0..3).find(|i| name(*i) == l).unwrap()
    };
    let first_leader = leader_idx(&g);
    let http_idx = (first_leader + 1) % 3;
    eprintln!(
        "stream leader {}, HTTP producer on {}",
        name(first_leader),
        name(http_idx)
    );

    // --- Producers. -------------------------------------------------------
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let http_acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let nats_acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();

    let mut http = HttpClient::connect(d(&daemons, http_idx)).await;
    let http_task = {
        let (phase, stop, tally, acked) = (
            phase.clone(),
            stop.clone(),
            tally.clone(),
            http_acked.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let id = format!("h-{n}");
                let ph = phase.load(Ordering::SeqCst);
                let r = http.publish("clustered.http", json!({ "id": id })).await;
                let (code, v) = r.unwrap_or_else(|e| {
                    panic!("the HTTP client broke in phase {}: {e}", PHASES[ph])
                });
                {
                    let mut t = tally.lock().unwrap();
                    let row = t.by_phase.entry(ph).or_default();
                    match code {
                        200 => {
                            assert_eq!(v["stream"], STREAM, "{v}");
                            assert_eq!(v["persisted"], true, "{v}");
                            row[0] += 1;
                            acked
                                .lock()
                                .unwrap()
                                .push((id, v["seq"].as_u64().expect("seq")));
                        }
                        503 => row[1] += 1,
                        other => panic!("publish answered {other}: {v}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            http
        })
    };

    let urls: Vec<async_nats::ServerAddr> = nodes
        .iter()
        .map(|n| format!("nats://127.0.0.1:{}", n.nats).parse().unwrap())
        .collect();
    let client = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(urls)
        .await
        .unwrap();
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(Duration::from_secs(2));
    let nats_task = {
        let (phase, stop, tally, acked) = (
            phase.clone(),
            stop.clone(),
            tally.clone(),
            nats_acked.clone(),
        );
        let js = js.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let id = format!("a-{n}");
                // Up to 3 tries with the same message id: a retry after a
                // lost ack must not store the message twice.
                for _ in 0..3 {
                    let ph = phase.load(Ordering::SeqCst);
                    let msg = async_nats::jetstream::message::PublishMessage::build()
                        .payload(Bytes::from(id.clone()))
                        .message_id(id.clone());
                    let r = match js.send_publish("clustered.nats", msg).await {
                        Ok(fut) => fut.await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    let acked_now = {
                        let mut t = tally.lock().unwrap();
                        let row = t.by_phase.entry(ph).or_default();
                        match r {
                            Ok(ack) => {
                                assert_eq!(ack.stream, STREAM);
                                row[2] += 1;
                                acked.lock().unwrap().push((id.clone(), ack.sequence));
                                true
                            }
                            Err(_) => {
                                row[3] += 1;
                                false
                            }
                        }
                    };
                    if acked_now {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let counted = |tally: &Arc<Mutex<Tally>>, ph: usize| -> [usize; 4] {
        tally
            .lock()
            .unwrap()
            .by_phase
            .get(&ph)
            .copied()
            .unwrap_or_default()
    };
    let http_port = d(&daemons, http_idx);
    let watcher = daemons[http_idx].as_ref().unwrap();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let steady = counted(&tally, 0);
    assert!(
        steady[0] > 0 && steady[2] > 0,
        "both producers publish: {steady:?}"
    );

    // --- (a) kill -9 the stream leader's nats-server. --------------------
    phase.store(1, Ordering::SeqCst);
    let a_idx = leader_idx(&stream_group(&watcher.get("/api/v1/status").await.1).unwrap());
    let victim = daemons[a_idx].as_ref().unwrap();
    let old = victim.child_pid().unwrap();
    eprintln!("(a) kill -9 nats-server of {} (pid {old})", name(a_idx));
    kill(old, nix::sys::signal::Signal::SIGKILL);
    let t = Instant::now();
    victim.wait_new_child(old, Duration::from_secs(30)).await;
    let g = wait_stream_settled(
        watcher,
        Duration::from_secs(30),
        "the restarted node's replica to catch up",
    )
    .await;
    eprintln!(
        "(a) supervisor restarted it and its replica caught up in {:?}; stream leader now {}",
        t.elapsed(),
        g["leader"]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // --- (b) SIGTERM the daemon whose node leads the stream. -------------
    phase.store(2, Ordering::SeqCst);
    let mut g = stream_group(&watcher.get("/api/v1/status").await.1).unwrap();
    if leader_idx(&g) == http_idx {
        // The HTTP producer's daemon stays up: move the leadership away
        // from it first (JetStream's own step-down), so that stopping the
        // leader's daemon still forces a leader change.
        let r = client
            .request(
                format!("$JS.API.STREAM.LEADER.STEPDOWN.{STREAM}"),
                "".into(),
            )
            .await
            .unwrap();
        eprintln!(
            "(b) asked {} to step down: {}",
            name(http_idx),
            String::from_utf8_lossy(&r.payload)
        );
        g = eventually(
            Duration::from_secs(20),
            "a stream leader off the HTTP node",
            || async {
                let (_, st) = get_json(http_port, "/api/v1/status").await.ok()?;
                stream_group(&st)
                    .filter(|g| g["leader"].is_string() && g["leader"] != name(http_idx).as_str())
            },
        )
        .await;
    }
    let b_idx = leader_idx(&g);
    eprintln!(
        "(b) SIGTERM daemon {} (stream leader {})",
        name(b_idx),
        g["leader"]
    );
    let mut gone = daemons[b_idx].take().unwrap();
    let t = Instant::now();
    gone.signal(nix::sys::signal::Signal::SIGTERM);
    // A clean exit on SIGTERM.
    gone.expect_exit(0, Duration::from_secs(30));
    eprintln!("(b) daemon stopped in {:?}", t.elapsed());
    drop(gone);
    // Two of three: the stream keeps a leader and takes writes.
    let g = eventually(
        Duration::from_secs(20),
        "a stream leader on the remaining nodes",
        || async {
            let (_, st) = get_json(http_port, "/api/v1/status").await.ok()?;
            stream_group(&st)
                .filter(|g| g["leader"].is_string() && g["leader"] != name(b_idx).as_str())
        },
    )
    .await;
    eprintln!("(b) stream leader now {}", g["leader"]);
    // Two of three still have quorum: the remaining daemons have a meta
    // leader and CLUSTERED has one. The seed's default streams are R1, each
    // on one node: one that lived on the stopped node has no leader and
    // takes no writes, which /health must say (and only that).
    for dm in daemons.iter().flatten() {
        let (code, h) = eventually(
            Duration::from_secs(15),
            "only R1 streams' problems",
            || async {
                let (code, h) = get_json(dm.http, "/health").await.ok()?;
                let problems: Vec<String> = h["problems"]
                    .as_array()?
                    .iter()
                    .map(|p| p.as_str().unwrap_or_default().to_string())
                    .collect();
                let only_r1 = problems.iter().all(|p| {
                    ["MARKET_DATA", "SYSTEM_EVENTS", "SERVICE_LOGS"]
                        .iter()
                        .any(|s| p.starts_with(&format!("stream {s} has no leader (replicas: 1)")))
                });
                (only_r1 && (code == 200) == problems.is_empty()).then_some((code, h))
            },
        )
        .await;
        eprintln!(
            "(b) {} /health {code}: {}",
            dm.get("/api/v1/status").await.1["cluster"]["server_name"],
            h["problems"]
        );
    }
    let t = Instant::now();
    let (code, _) = get_json(http_port, "/health").await.unwrap();
    let (health_took, t) = (t.elapsed(), Instant::now());
    let _ = get_json(http_port, "/api/v1/status").await.unwrap();
    eprintln!(
        "(b) with one node down: /health answered {code} in {health_took:?}, /api/v1/status in {:?}",
        t.elapsed()
    );
    // Both producers get acks with one node down (their next ack may wait
    // out a publish that was in flight to the stopped node: up to a few s).
    let before = counted(&tally, 2);
    let t = Instant::now();
    let during = eventually(
        Duration::from_secs(15),
        "acks for both producers with one node down",
        || async {
            let now = counted(&tally, 2);
            (now[0] > before[0] + 10 && now[2] > before[2] + 10).then_some(now)
        },
    )
    .await;
    eprintln!("(b) with one node down, both producers had 10 more acks within {:?}: {before:?} -> {during:?}", t.elapsed());

    // --- (c) The daemon comes back on its state dir. ----------------------
    phase.store(3, Ordering::SeqCst);
    let t = Instant::now();
    daemons[b_idx] = Some(start_node(b_idx, &nodes, bin, &state(b_idx)));
    let back = daemons[b_idx].as_ref().unwrap();
    back.wait_healthy(Duration::from_secs(60)).await;
    let healthy_after = t.elapsed();
    let g = wait_stream_settled(
        back,
        Duration::from_secs(30),
        "the returning node to catch up",
    )
    .await;
    let returning = g["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .chain(std::iter::once(
            &json!({"name": g["leader"], "current": true, "lag": 0}),
        ))
        .find(|r| r["name"] == name(b_idx).as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{} is not in the stream's group: {g}", name(b_idx)));
    eprintln!(
        "(c) daemon {} healthy again in {healthy_after:?}, replica current in {:?}: {returning}",
        name(b_idx),
        t.elapsed()
    );
    phase.store(4, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let mut http = http_task.await.unwrap();
    nats_task.await.unwrap();

    // The counts per phase, before anything is checked.
    let (total_http, total_nats) = {
        let t = tally.lock().unwrap();
        eprintln!("phase                 HTTP acked/failed   async-nats acked/failed(attempts)");
        for (ph, row) in &t.by_phase {
            eprintln!(
                "{:<22}{:>6}/{:<6}            {:>6}/{:<6}",
                PHASES[*ph], row[0], row[1], row[2], row[3]
            );
        }
        (
            t.by_phase.values().map(|r| r[0]).sum::<usize>(),
            t.by_phase.values().map(|r| r[2]).sum::<usize>(),
        )
    };

    // --- Neither client was restarted: both still work. --------------------
    let (code, v) = http
        .publish("clustered.http", json!({"id": "h-final"}))
        .await
        .unwrap();
    assert_eq!(code, 200, "{v}");
    http_acked
        .lock()
        .unwrap()
        .push(("h-final".into(), v["seq"].as_u64().unwrap()));
    let ack = js
        .send_publish(
            "clustered.nats",
            async_nats::jetstream::message::PublishMessage::build()
                .payload(Bytes::from("a-final"))
                .message_id("a-final"),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    nats_acked
        .lock()
        .unwrap()
        .push(("a-final".into(), ack.sequence));

    // --- Every ack is in the stream, at the sequence it was acked with. ----
    let stream = js.get_stream(STREAM).await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut by_seq: HashMap<u64, String> = HashMap::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    for seq in 1..=last {
        let m = stream
            .get_raw_message(seq)
            .await
            .unwrap_or_else(|e| panic!("sequence {seq} of {last} is missing: {e}"));
        let text = String::from_utf8_lossy(&m.payload).to_string();
        let id = if m.subject.as_str() == "clustered.http" {
            serde_json::from_str::<Value>(&text).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        } else {
            text
        };
        *ids.entry(id.clone()).or_default() += 1;
        by_seq.insert(seq, id);
    }
    for (who, acked) in [("HTTP", &http_acked), ("async-nats", &nats_acked)] {
        for (id, seq) in acked.lock().unwrap().iter() {
            assert_eq!(
                by_seq.get(seq),
                Some(id),
                "{who} publish {id} was acked with sequence {seq}, which holds {:?}",
                by_seq.get(seq)
            );
        }
    }
    // Message ids: retries of one async-nats publish are stored once.
    let twice: Vec<_> = ids
        .iter()
        .filter(|(id, n)| id.starts_with("a-") && **n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "stored more than once despite the message id: {twice:?}"
    );

    // The returning node holds every message too (its own store's view).
    let (_, jsz) = eventually(
        Duration::from_secs(20),
        "the returning node's store to hold every message",
        || async {
            let (c, v) = get_json(nodes[b_idx].monitor, "/jsz?streams=true")
                .await
                .ok()?;
            let st = v["account_details"]
                .as_array()?
                .iter()
                .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
                .find(|s| s["name"] == STREAM)?;
            (st["state"]["last_seq"].as_u64()? >= last).then_some((c, v))
        },
    )
    .await;
    drop(jsz);

    eprintln!(
        "{} ({}): stream holds {last} messages; {total_http} HTTP and {total_nats} async-nats acks all read back; whole test {:?}",
        bin.display(),
        client.server_info().version,
        started.elapsed()
    );
    // After the faults, the cluster is whole and healthy everywhere.
    for dm in daemons.iter().flatten() {
        dm.wait_healthy(Duration::from_secs(20)).await;
    }
    // A node killed or stopped stays in the meta group (offline), so the
    // meta group self-heal never restarted anything through the faults
    // (nor while the cluster formed, but for the fault of 2.10.27 above).
    for (i, dm) in daemons.iter().flatten().enumerate() {
        let log = dm.log();
        assert_eq!(
            log.matches("restarting nats-server (self-heal)").count() as u64,
            formation_heals[i],
            "node {} ran the meta group self-heal:\n{log}",
            name(i)
        );
        let (_, st) = dm.get("/api/v1/status").await;
        assert_eq!(
            st["cluster"]["meta_heal"]["restarts"], formation_heals[i],
            "{st}"
        );
    }
}

/// A node whose peers are not (yet) there has no JetStream quorum: it is
/// degraded, says why, and is not ready; its nats-server is fine and must
/// not be restarted for its cluster's state (nats-server's plain /healthz
/// is 503 then). Once the peers come, it gets a meta leader, creates the
/// stream, and only then says READY=1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_quorum_is_degraded_not_restarted_and_ready_waits_for_a_leader() {
    let _g = ONE_AT_A_TIME.lock().await;
    let nodes = ports();
    let states = tempfile::tempdir().unwrap();
    let state = |i: usize| states.path().join(name(i));
    let notify = NotifySocket::bind();
    let first = node(0, &nodes, &nats_server(), &state(0))
        .env("NOTIFY_SOCKET", notify.path_str())
        .start();
    let h = first.wait_health(503, Duration::from_secs(20)).await;
    let problems = h["problems"].to_string();
    let waited = eventually(
        Duration::from_secs(20),
        "a no-meta-leader problem",
        || async {
            let (code, h) = get_json(first.http, "/health").await.ok()?;
            (code == 503
                && h["nats_server"] == "running"
                && h["problems"].to_string().contains("no meta leader"))
            .then_some(h)
        },
    )
    .await;
    assert_eq!(
        waited["nats_server"], "running",
        "{waited} (first: {problems})"
    );
    let pid = first.child_pid().expect("nats-server runs");
    // Several probe rounds (health_interval 250ms) without a leader.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        first.child_pid(),
        Some(pid),
        "nats-server was restarted for a missing quorum:\n{}",
        first.log()
    );
    let (_, st) = first.get("/api/v1/status").await;
    assert_eq!(st["nats_server"]["restarts"], 0, "{st}");
    assert_eq!(st["cluster"]["meta"]["leader"], Value::Null, "{st}");
    // Connected, but no stream is known yet: a publish is refused, not
    // sent as a core message and answered "persisted": false.
    let body = json!({"subject": "clustered.http", "message": {"id": "early"}});
    let (code, headers, v) = first.publish_raw(body.to_string().into_bytes()).await;
    assert_eq!(code, 503, "{v}");
    assert!(headers.get("retry-after").is_some(), "{v}");
    assert!(
        v["error"]["message"].to_string().contains("not known yet"),
        "{v}"
    );
    assert!(
        st["cluster"]["problems"]
            .to_string()
            .contains("no meta leader"),
        "{st}"
    );
    assert!(
        notify.with_line("READY=1").is_empty(),
        "READY=1 without a meta leader: {:?}",
        notify.all()
    );
    assert!(
        notify.all().iter().any(|m| m
            .contains("STATUS=waiting for the JetStream cluster: JetStream has no meta leader")),
        "STATUS= says why it waits: {:?}",
        notify.all()
    );

    // The peers arrive: a leader, the stream, READY=1, healthy, same child.
    let t = Instant::now();
    let _others: Vec<Daemon> = (1..3)
        .map(|i| start_node(i, &nodes, &nats_server(), &state(i)))
        .collect();
    notify
        .wait_line("READY=1", 1, Duration::from_secs(30))
        .await;
    let ready_after = t.elapsed();
    let h = first.wait_healthy(Duration::from_secs(20)).await;
    assert_eq!(h["pid"], pid, "{h}");
    let (_, st) = first.get("/api/v1/status").await;
    assert!(st["cluster"]["meta"]["leader"].is_string(), "{st}");
    let g = stream_group(&st).expect("the stream exists once there is a leader");
    assert!(g["leader"].is_string(), "{g}");
    eprintln!(
        "READY=1 {ready_after:?} after the peers were started; stream leader {}",
        g["leader"]
    );
}

/// start_timeout bounds the wait for a meta leader: a node that gives up
/// waiting still starts (degraded), and its reconciliation backs off and
/// retries until its peers come and the stream can be created.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_stopped_waiting_for_a_leader_creates_the_stream_when_peers_come() {
    let _g = ONE_AT_A_TIME.lock().await;
    let nodes = ports();
    let states = tempfile::tempdir().unwrap();
    let state = |i: usize| states.path().join(name(i));
    let notify = NotifySocket::bind();
    let spawned = Instant::now();
    let first = node(0, &nodes, &nats_server(), &state(0))
        .supervisor("  start_timeout: 2s\n")
        .env("NOTIFY_SOCKET", notify.path_str())
        .start();
    // Ready (degraded) about start_timeout after the start, not held up by
    // JetStream requests that cannot be answered without a leader.
    notify
        .wait_line("READY=1", 1, Duration::from_secs(10))
        .await;
    let ready = spawned.elapsed();
    assert!(ready < Duration::from_secs(5), "READY=1 after {ready:?}");
    eventually(
        Duration::from_secs(20),
        "the daemon to stop waiting for a leader",
        || async {
            first
                .log()
                .contains("still no JetStream meta leader after start_timeout")
                .then_some(())
        },
    )
    .await;
    let (code, h) = get_json(first.http, "/health").await.unwrap();
    assert_eq!(code, 503, "{h}");
    assert!(h["problems"].to_string().contains("no meta leader"), "{h}");
    let t = Instant::now();
    let _others: Vec<Daemon> = (1..3)
        .map(|i| start_node(i, &nodes, &nats_server(), &state(i)))
        .collect();
    first.wait_healthy(Duration::from_secs(40)).await;
    let (_, st) = first.get("/api/v1/status").await;
    let g = stream_group(&st).expect("the stream exists");
    assert_eq!(g["configured_replicas"], 3, "{g}");
    assert!(
        first.log().contains("stream reconciliation round")
            || first.log().contains("stream reconciliation failed"),
        "the first node retried its reconciliation:\n{}",
        first.log()
    );
    eprintln!(
        "READY=1 (degraded) {ready:?} after the start; healthy {:?} after the peers were started",
        t.elapsed()
    );
    for l in first
        .log()
        .lines()
        .filter(|l| l.contains("reconciliation") || l.contains("stream CLUSTERED"))
        .take(8)
    {
        eprintln!("  n1: {l}");
    }
}

/// With `internal_password_file` holding the same secret on every node,
/// the daemon's own client fails over to another node in `client_urls`
/// when its nats-server goes away (and HTTP publishing keeps working);
/// without it, the client stays on its own node (other nodes would refuse
/// its per-node password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_client_fails_over_to_client_urls_with_a_shared_internal_password() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("internal.pass");
    std::fs::write(&secret, "shared-internal-secret-0123456789\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let [ha, na, ma, ca, hb, nb, mb, cb] = free_ports::<8>();
    let node = |name: &str, (http, nats, mon, cl): (u16, u16, u16, u16), peer: (u16, u16)| {
        Daemon::builder()
            .ports((http, nats, mon))
            .top("auto_create_streams: false\n")
            .nats(&format!(
                "  server_name: {name}\n  jetstream_enabled: false\n  cluster_name: failover\n  cluster_listen: \"127.0.0.1:{cl}\"\n  cluster_routes: [\"nats-route://127.0.0.1:{}\"]\n  client_urls: [\"nats://127.0.0.1:{nats}\", \"nats://127.0.0.1:{}\"]\n  internal_password_file: {secret:?}\n",
                peer.0, peer.1
            ))
            .start()
    };
    let a = node("fo-a", (ha, na, ma, ca), (cb, nb));
    let b = node("fo-b", (hb, nb, mb, cb), (ca, na));
    a.wait_healthy(Duration::from_secs(20)).await;
    b.wait_healthy(Duration::from_secs(20)).await;
    let daemon_clients_on_b = || async {
        let (code, v) = get_json(hb, "/api/v1/nats/connz").await.unwrap();
        assert_eq!(code, 200, "{v}");
        v["connections"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter(|c| c["name"] == "marketprism-broker")
                    .count()
            })
            .unwrap_or(0)
    };
    eventually(Duration::from_secs(10), "both routes", || async {
        let (_, v) = get_json(ha, "/api/v1/nats/routez").await.unwrap();
        (v["num_routes"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    assert_eq!(daemon_clients_on_b().await, 1, "only b's own daemon on b");

    // a's nats-server dies: a's client moves to b at once.
    let sub_client = async_nats::connect(b.nats_url()).await.unwrap();
    let mut sub = sub_client.subscribe("failover.>").await.unwrap();
    sub_client.flush().await.unwrap();
    let old = a.child_pid().unwrap();
    kill(old, nix::sys::signal::Signal::SIGKILL);
    eventually(Duration::from_secs(10), "a's client on b", || async {
        (daemon_clients_on_b().await == 2).then_some(())
    })
    .await;
    a.wait_new_child(old, Duration::from_secs(10)).await;
    // It stays there (no need to move back) and a's HTTP API publishes
    // through it.
    let (code, v) = a.publish("failover.check", json!({"via": "b"})).await;
    assert_eq!(code, 200, "{v}");
    let m = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut sub))
        .await
        .expect("the publish arrives")
        .unwrap();
    assert_eq!(m.subject.as_str(), "failover.check");
}
