//! The real daemon against a real nats-server: the seed's endpoints,
//! publishing, supervision (kill -9, SIGSTOP, crash loops), ports, stop.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const SEED_TRADE: &str = r#"{"symbol": "BTCUSDT", "price": "50000.00", "quantity": "0.1", "timestamp": "2024-01-01T12:00:00Z"}"#;

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort();
    k
}

fn has_keys(v: &Value, want: &[&str]) {
    for k in want {
        assert!(v.get(*k).is_some(), "key {k:?} missing in {v}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_answers_with_the_seeds_shapes() {
    let d = Daemon::start();
    let health = d.wait_healthy(Duration::from_secs(20)).await;
    let child = d.child_pid().expect("pid file");
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["pid"], child);
    assert_eq!(health["connected"], true);

    let (code, status) = d.get("/api/v1/status").await;
    assert_eq!(code, 200);
    has_keys(
        &status,
        &[
            "service",
            "timestamp",
            "uptime_seconds",
            "nats_server",
            "jetstream_streams",
            "message_stats",
        ],
    );
    assert_eq!(status["service"], "message-broker-service");
    let ts = status["timestamp"].as_str().unwrap();
    assert!(
        humantime::parse_rfc3339(ts).is_ok() && ts.ends_with('Z'),
        "{ts}"
    );
    assert!(status["uptime_seconds"].is_u64());
    assert_eq!(status["nats_server"]["status"], "running");
    let si = &status["nats_server"]["server_info"];
    has_keys(
        si,
        &[
            "server_id",
            "server_name",
            "version",
            "go",
            "host",
            "port",
            "max_connections",
            "connections",
            "total_connections",
            "routes",
            "remotes",
        ],
    );
    assert_eq!(si["port"], d.nats);
    assert_eq!(si["server_name"], "test");
    assert_eq!(si["max_connections"], 1000);
    let names: Vec<&str> = status["jetstream_streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["MARKET_DATA", "SERVICE_LOGS", "SYSTEM_EVENTS"]);
    for s in status["jetstream_streams"].as_array().unwrap() {
        has_keys(
            s,
            &["name", "subjects", "messages", "bytes", "consumer_count"],
        );
    }
    assert_eq!(
        status["jetstream_streams"][0]["subjects"],
        json!(["market.>"])
    );
    has_keys(
        &status["message_stats"],
        &["published", "consumed", "errors"],
    );

    let (code, streams) = d.get("/api/v1/streams").await;
    assert_eq!(code, 200);
    assert_eq!(keys(&streams), ["streams"]);
    let sys = streams["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "SYSTEM_EVENTS")
        .unwrap();
    has_keys(
        sys,
        &[
            "name",
            "subjects",
            "messages",
            "bytes",
            "first_seq",
            "last_seq",
            "consumer_count",
        ],
    );
    assert_eq!(sys["subjects"], json!(["system.>"]));

    let (code, info) = d.get("/api/v1/nats/info").await;
    assert_eq!(code, 200);
    assert_eq!(info["status"], "running");
    assert_eq!(info["pid"], child, "nats/info pid must be the real child");
    let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap();
    assert_eq!(comm.trim(), "nats-server");
    assert_eq!(
        info["ports"],
        json!({"nats": d.nats, "cluster": null, "http": d.monitor})
    );
    has_keys(
        &info["server_info"],
        &[
            "server_id",
            "connections",
            "in_msgs",
            "out_msgs",
            "in_bytes",
            "out_bytes",
        ],
    );

    // The generated nats-server config is private: it may hold passwords.
    use std::os::unix::fs::PermissionsExt;
    let conf = std::fs::metadata(d.state_dir().join("nats-server.conf")).unwrap();
    assert_eq!(conf.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        info["config_file"],
        d.state_dir().join("nats-server.conf").display().to_string()
    );

    assert!(
        !d.log()
            .contains("WARN nats-server: Plaintext passwords detected"),
        "{}",
        d.log()
    );
    let (code, md) = d.get("/api/v1/streams/MARKET_DATA").await;
    assert_eq!(code, 200);
    assert_eq!(md["name"], "MARKET_DATA");
    assert_eq!(md["config"]["max_age_seconds"], 3600);
    assert_eq!(md["config"]["max_msgs"], 1_000_000);
    assert_eq!(md["storage"], "file");

    let (code, nope) = d.get("/api/v1/streams/NOPE").await;
    assert_eq!(code, 404);
    assert_eq!(nope["success"], false);
    assert_eq!(nope["error"]["code"], "not_found");

    let (code, _, body) = request(d.http, "GET", "/api/v1/nothing", &[], vec![])
        .await
        .unwrap();
    assert_eq!(code, 404);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"],
        "not_found"
    );
    let (code, headers, body) = request(d.http, "DELETE", "/api/v1/status", &[], vec![])
        .await
        .unwrap();
    assert_eq!(code, 405);
    assert_eq!(headers["allow"], "GET, HEAD");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"],
        "method_not_allowed"
    );
    let (code, _, _) = request(d.http, "GET", "/api/v1/publish", &[], vec![])
        .await
        .unwrap();
    assert_eq!(code, 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn published_messages_can_be_read_back_with_async_nats() {
    let d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let client = d.client().await;
    let js = async_nats::jetstream::new(client.clone());

    // The seed's trade example: persisted in MARKET_DATA, bytes as sent.
    let body = format!(r#"{{"subject": "market.binance.BTCUSDT.trade", "message": {SEED_TRADE}}}"#);
    let (status, _, resp) = d.publish_raw(body.into_bytes()).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        resp,
        json!({"success": true, "persisted": true, "durable": true, "stream": "MARKET_DATA", "seq": 1, "duplicate": false})
    );
    let stream = js.get_stream("MARKET_DATA").await.unwrap();
    let msg = stream.get_raw_message(1).await.unwrap();
    assert_eq!(msg.subject.as_str(), "market.binance.BTCUSDT.trade");
    assert_eq!(
        std::str::from_utf8(&msg.payload).unwrap(),
        SEED_TRADE,
        "an object goes to NATS exactly as it came"
    );

    // The seed's debug example: a string to a subject no stream captures is
    // a core publish, delivered as its UTF-8 text.
    let mut sub = subscribe_synced(&client, "test.message").await;
    let (status, resp) = d.publish("test.message", json!("Hello World")).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        resp,
        json!({"success": true, "persisted": false, "durable": false})
    );
    use futures::StreamExt;
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got.payload[..], b"Hello World");

    // Numbers, arrays and escaped strings.
    let (_, resp) = d
        .publish("system.alert.critical.high_cpu", json!([1, 2, 3]))
        .await;
    assert_eq!(resp["stream"], "SYSTEM_EVENTS");
    let msg = js
        .get_stream("SYSTEM_EVENTS")
        .await
        .unwrap()
        .get_raw_message(resp["seq"].as_u64().unwrap())
        .await
        .unwrap();
    assert_eq!(&msg.payload[..], b"[1,2,3]");
    let (_, resp) = d
        .publish(
            "service.monitoring.log.error",
            json!("line \"one\"\nline two ✓"),
        )
        .await;
    let msg = js
        .get_stream("SERVICE_LOGS")
        .await
        .unwrap()
        .get_raw_message(resp["seq"].as_u64().unwrap())
        .await
        .unwrap();
    assert_eq!(
        std::str::from_utf8(&msg.payload).unwrap(),
        "line \"one\"\nline two ✓"
    );

    let (_, status) = d.get("/api/v1/status").await;
    assert_eq!(status["message_stats"]["published"], 4);
    assert_eq!(status["message_stats"]["errors"], 0);
    let md = status["jetstream_streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "MARKET_DATA")
        .unwrap()
        .clone();
    assert_eq!(md["messages"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_publish_requests_get_4xx_json_errors_and_are_counted() {
    let d = Daemon::builder().nats("  max_payload: 1KB\n").start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let json_ct = [("content-type", "application/json")];
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "not json",
            json_ct.to_vec(),
            b"{nope".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "truncated",
            json_ct.to_vec(),
            br#"{"subject": "a.b", "mess"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "no subject",
            json_ct.to_vec(),
            br#"{"message": 1}"#.to_vec(),
            400,
            "missing_subject",
        ),
        (
            "no message",
            json_ct.to_vec(),
            br#"{"subject": "a.b"}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "unknown field",
            json_ct.to_vec(),
            br#"{"subject": "a.b", "message": 1, "extra": 2}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "wildcard",
            json_ct.to_vec(),
            br#"{"subject": "market.>", "message": 1}"#.to_vec(),
            400,
            "wildcard_subject",
        ),
        (
            "star",
            json_ct.to_vec(),
            br#"{"subject": "market.*.x", "message": 1}"#.to_vec(),
            400,
            "wildcard_subject",
        ),
        (
            "empty subject",
            json_ct.to_vec(),
            br#"{"subject": "", "message": 1}"#.to_vec(),
            400,
            "invalid_subject",
        ),
        (
            "double dot",
            json_ct.to_vec(),
            br#"{"subject": "a..b", "message": 1}"#.to_vec(),
            400,
            "invalid_subject",
        ),
        (
            "space",
            json_ct.to_vec(),
            br#"{"subject": "a b", "message": 1}"#.to_vec(),
            400,
            "invalid_subject",
        ),
        (
            "js api",
            json_ct.to_vec(),
            br#"{"subject": "$JS.API.STREAM.DELETE.MARKET_DATA", "message": 1}"#.to_vec(),
            400,
            "reserved_subject",
        ),
        (
            "invalid utf-8",
            json_ct.to_vec(),
            b"{\"subject\": \"a.\xff\", \"message\": 1}".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "form",
            vec![("content-type", "application/x-www-form-urlencoded")],
            br#"{"subject": "a.b", "message": 1}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "no content type",
            vec![],
            br#"{"subject": "a.b", "message": 1}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "too big",
            json_ct.to_vec(),
            format!(
                r#"{{"subject": "market.a", "message": "{}"}}"#,
                "x".repeat(1025)
            )
            .into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            "huge body",
            json_ct.to_vec(),
            vec![b' '; 200_000],
            413,
            "payload_too_large",
        ),
    ];
    let n = cases.len();
    for (name, headers, body, want_status, want_code) in cases {
        let (status, _, resp) = request(d.http, "POST", "/api/v1/publish", &headers, body)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&resp)
            .unwrap_or_else(|e| panic!("{name}: non-JSON answer: {e}"));
        assert_eq!(status, want_status, "{name}: {v}");
        assert_eq!(v["success"], false, "{name}");
        assert_eq!(v["error"]["code"], want_code, "{name}: {v}");
        assert!(
            !v["error"]["message"].as_str().unwrap().is_empty(),
            "{name}"
        );
    }
    // Exactly at the limit is fine.
    let (status, resp) = d.publish("market.a", json!("x".repeat(1024))).await;
    assert_eq!(status, 200, "{resp}");
    let (_, status) = d.get("/api/v1/status").await;
    assert_eq!(status["message_stats"]["errors"], n);
    assert_eq!(status["message_stats"]["published"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_nats_server_restarts_it_within_2s_and_loses_nothing_acknowledged() {
    let d = Daemon::builder()
        .nats(
            "  streams:\n    MEMORY_TICKS:\n      subjects: [\"ticks.>\"]\n      storage: memory\n",
        )
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let d = std::sync::Arc::new(d);
    // Publishers keep going through the kill; every answer is recorded.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut publishers = Vec::new();
    for p in 0..4 {
        let (d, stop) = (d.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), 0u32);
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let msg = json!({"p": p, "i": i});
                let (status, resp) = d.publish("market.binance.BTCUSDT.trade", msg.clone()).await;
                match status {
                    200 => acked.push((resp["seq"].as_u64().unwrap(), msg)),
                    503 => refused += 1,
                    other => panic!("unexpected {other}: {resp}"),
                }
                i += 1;
            }
            (acked, refused)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = d.child_pid().unwrap();
    let killed_at = Instant::now();
    kill(old, Signal::SIGKILL);
    let new = d.wait_new_child(old, Duration::from_secs(2)).await;
    let took = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut acked, mut refused) = (Vec::new(), 0);
    for p in publishers {
        let (a, r) = p.await.unwrap();
        acked.extend(a);
        refused += r;
    }
    eprintln!("healthy again {took:?} after kill -9 (pid {old} -> {new}); {} acked, {refused} refused with 503", acked.len());
    assert!(took < Duration::from_secs(2));
    assert!(!alive(old));
    assert!(alive(new));
    assert!(
        acked.len() > 50,
        "too little load to mean anything: {}",
        acked.len()
    );

    // Every acknowledged message is there, with its content.
    let js = async_nats::jetstream::new(d.client().await);
    let stream = js.get_stream("MARKET_DATA").await.unwrap();
    for (seq, msg) in &acked {
        let m = stream
            .get_raw_message(*seq)
            .await
            .unwrap_or_else(|e| panic!("acknowledged seq {seq} is gone: {e}"));
        assert_eq!(
            &serde_json::from_slice::<Value>(&m.payload).unwrap(),
            msg,
            "seq {seq}"
        );
    }
    assert!(stream.cached_info().state.messages >= acked.len() as u64);
    // The memory stream died with the old child and was recreated.
    assert!(
        js.get_stream("MEMORY_TICKS").await.is_ok(),
        "memory stream not recreated"
    );
    let (status, resp) = d.publish("ticks.a", json!(1)).await;
    assert_eq!(
        (status, resp["stream"].as_str()),
        (200, Some("MEMORY_TICKS"))
    );

    let (_, status) = d.get("/api/v1/status").await;
    assert_eq!(status["nats_server"]["restarts"], 1);
    assert!(
        status["nats_server"]["last_failure"]
            .as_str()
            .unwrap()
            .contains("signal 9"),
        "{status}"
    );
    let (_, info) = d.get("/api/v1/nats/info").await;
    assert_eq!(info["pid"], new);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_nats_server_is_detected_and_replaced() {
    let d = Daemon::builder()
        .supervisor("  health_failures: 3\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let old = d.child_pid().unwrap();
    kill(old, Signal::SIGSTOP);
    let stopped_at = Instant::now();
    // While it hangs, health says so.
    d.wait_health(503, Duration::from_secs(5)).await;
    let new = d.wait_new_child(old, Duration::from_secs(10)).await;
    eprintln!("hang detected and replaced in {:?}", stopped_at.elapsed());
    assert!(!alive(old), "the hung process must be killed");
    assert!(alive(new));
    assert!(
        d.log().contains("health probes failed in a row"),
        "{}",
        d.log()
    );
}

/// nats-server 2.10+ (single server) builds /healthz from its store's
/// stream folders: a stream being created has its folder a few
/// milliseconds before it is registered, and /healthz answers 503 "could
/// not be recovered" in between. That must not mark the node unhealthy
/// (it made READY go out with /health at 503 after the streams were
/// created); a folder that stays must.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_folder_that_flickers_does_not_flap_health_but_one_that_stays_does() {
    let d = Daemon::builder().bin(nats_server_current()).start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let streams = d.state_dir().join("jetstream/MARKETPRISM/streams");
    assert!(streams.is_dir(), "{}", streams.display());
    let ghost = streams.join("GHOST");
    let seen_by_server = || d.log().matches("could not be recovered").count();

    // 60 ms there, 170 ms gone, for 4 s; /health read every 10 ms. Probes
    // come every 250 ms, and the second look 100 ms after a 503 falls in a
    // gap.
    let flicker = {
        let ghost = ghost.clone();
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(4);
            while Instant::now() < end {
                std::fs::create_dir(&ghost).unwrap();
                std::thread::sleep(Duration::from_millis(60));
                std::fs::remove_dir(&ghost).unwrap();
                std::thread::sleep(Duration::from_millis(170));
            }
        })
    };
    let mut answers = std::collections::BTreeMap::<u16, usize>::new();
    let mut unhealthy = Vec::new();
    while !flicker.is_finished() {
        let (code, h) = d.get("/health").await;
        *answers.entry(code).or_default() += 1;
        if code != 200 {
            unhealthy.push(h);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    flicker.join().unwrap();
    let seen = seen_by_server();
    eprintln!("/health answers while the folder flickered: {answers:?}; nats-server's /healthz failed {seen} times");
    assert!(
        seen > 0,
        "nats-server never answered /healthz 503 for the flickering folder: the test proves nothing\n{}",
        d.log()
    );
    assert!(
        unhealthy.is_empty(),
        "a folder there for 60 ms made /health unhealthy {} times, first: {}",
        unhealthy.len(),
        unhealthy[0]
    );

    // A folder that stays is a stream that cannot be recovered.
    std::fs::create_dir(&ghost).unwrap();
    let h = d.wait_health(503, Duration::from_secs(3)).await;
    // Naming what nats-server said.
    let problems = h["problems"].to_string();
    assert!(
        problems.contains("nats-server failed its health probe")
            && problems.contains("GHOST")
            && problems.contains("could not be recovered"),
        "{h}"
    );
    std::fs::remove_dir(&ghost).unwrap();
    d.wait_healthy(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn publishing_while_nats_server_is_down_is_a_quick_503_with_retry_after() {
    // A long backoff keeps nats-server down after the kill.
    let d = Daemon::builder()
        .supervisor("  backoff_initial: 5s\n  backoff_max: 5s\n")
        .top("api:\n  publish_timeout: 1s\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    kill(d.child_pid().unwrap(), Signal::SIGKILL);
    d.wait_health(503, Duration::from_secs(2)).await;
    let t = Instant::now();
    let body = br#"{"subject": "market.a.b.trade", "message": {"x": 1}}"#.to_vec();
    let (status, headers, v) = d.publish_raw(body).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(v["error"]["code"], "nats_unavailable");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "503 must not wait: {:?}",
        t.elapsed()
    );
    // The client may see the dropped connection a moment before the
    // supervisor reaps the child: health names the cause soon after.
    let problems = eventually(Duration::from_secs(2), "health naming the kill", || async {
        let (code, h) = d.get("/health").await;
        assert_eq!(code, 503, "{h}");
        assert_eq!(h["status"], "unhealthy");
        let problems = h["problems"].to_string();
        (problems.contains("nats-server is restarting") && problems.contains("signal 9"))
            .then_some(problems)
    })
    .await;
    assert!(problems.contains("next attempt in"), "{problems}");
    let (_, status) = d.get("/api/v1/status").await;
    assert_eq!(status["message_stats"]["errors"], 1);
    // And it comes back by itself.
    d.wait_healthy(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_jetstream_ack_is_a_bounded_503() {
    // SIGSTOP keeps the TCP connection up, so only the timeout can answer.
    let d = Daemon::builder()
        .supervisor("  health_failures: 1000\n")
        .top("api:\n  publish_timeout: 1s\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let child = d.child_pid().unwrap();
    kill(child, Signal::SIGSTOP);
    let t = Instant::now();
    let (status, resp) = d.publish("market.a.b.trade", json!({"x": 1})).await;
    kill(child, Signal::SIGCONT);
    assert_eq!(status, 503, "{resp}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MARKET_DATA"),
        "{resp}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_everything_and_exits_0() {
    let mut d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let child = d.child_pid().unwrap();
    let conf = d.state_dir().join("nats-server.conf");
    d.signal(Signal::SIGTERM);
    d.expect_exit(0, Duration::from_secs(15));
    assert!(!alive(child), "nats-server outlived the daemon");
    assert!(nats_servers_with(&conf.display().to_string()).is_empty());
    assert!(
        !d.state_dir().join("nats-server.pid").exists(),
        "stale pid file"
    );
    let log = d.log();
    let stopped = log
        .find("stopping nats-server (SIGTERM")
        .expect("child stop logged");
    let http_closed = log.find("SIGTERM received").unwrap();
    assert!(http_closed < stopped);
    assert!(log.contains("marketprism-broker stopped code=0"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_stops_too() {
    let mut d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let child = d.child_pid().unwrap();
    d.signal(Signal::SIGINT);
    d.expect_exit(0, Duration::from_secs(15));
    assert!(!alive(child));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_child_survives_tokio_reaping_its_idle_blocking_threads() {
    // tokio's blocking pool (used at start to resolve the bind address)
    // drops idle threads after 10 s; a child forked from one of them would
    // get its PDEATHSIG then.
    let d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let child = d.child_pid().unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        alive(child),
        "nats-server died with an idle thread; log:\n{}",
        d.log()
    );
    let (code, h) = d.get("/health").await;
    assert_eq!((code, h["pid"].as_u64()), (200, Some(child as u64)));
    assert!(!d.log().contains("exited unexpectedly"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_child_dies_with_a_killed_daemon() {
    let mut d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let child = d.child_pid().unwrap();
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(5));
    eventually(
        Duration::from_secs(2),
        "nats-server to die with the daemon",
        || async { (!alive(child)).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_nats_port_exits_69_naming_the_port_and_holder() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let mut d = Daemon::builder()
        .ports({
            let [h, m] = free_ports::<2>();
            (h, port, m)
        })
        .start();
    d.expect_exit(69, Duration::from_secs(15));
    let log = d.log();
    assert!(
        log.contains(&format!(
            "port {port} (nats.nats_port) on 127.0.0.1 is already in use by pid {}",
            std::process::id()
        )),
        "{log}"
    );
    assert!(nats_servers_with(&d.state_dir().display().to_string()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_http_port_exits_69_naming_it() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let mut d = Daemon::builder()
        .ports({
            let [n, m] = free_ports::<2>();
            (port, n, m)
        })
        .start();
    d.expect_exit(69, Duration::from_secs(15));
    assert!(
        d.log()
            .contains(&format!("port {port} (HTTP API port `port`)")),
        "{}",
        d.log()
    );
    assert!(
        nats_servers_with(&d.state_dir().display().to_string()).is_empty(),
        "nothing may start when the HTTP port is taken"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_looping_child_gives_up_with_its_last_words() {
    let fake = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/fake-nats-server"
    );
    let mut d = Daemon::builder().bin(fake).start();
    d.expect_exit(69, Duration::from_secs(20));
    let log = d.log();
    assert!(
        log.contains("giving up: nats-server could not be started (3 attempts)"),
        "{log}"
    );
    assert!(
        log.contains("last nats-server output:")
            && log.contains("boom: fake failure for the crash-loop test"),
        "{log}"
    );
    assert_eq!(
        log.matches("INFO nats-server: Starting fake nats-server")
            .count(),
        3,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_that_never_gets_healthy_is_killed_and_retried() {
    let fake = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/fake-nats-server"
    );
    let mut d = Daemon::builder()
        .bin(fake)
        .env("FAKE_MODE", "hang")
        .supervisor("  start_timeout: 500ms\n")
        .start();
    d.expect_exit(69, Duration::from_secs(20));
    assert!(
        d.log().contains("did not become healthy within 500ms"),
        "{}",
        d.log()
    );
    assert!(nats_servers_with(&d.state_dir().display().to_string()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_nats_server_binary_exits_69() {
    let mut d = Daemon::builder().bin("/nonexistent/nats-server").start();
    // server_bin is validated with the config: 78 names the key.
    d.expect_exit(78, Duration::from_secs(10));
    assert!(
        d.log()
            .contains("nats.server_bin: /nonexistent/nats-server"),
        "{}",
        d.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seeds_services_yaml_runs() {
    let seed = include_str!("../config/examples/seed-services.yaml");
    let [http, nats, mon, cluster] = free_ports::<4>();
    let dir = tempfile::tempdir().unwrap();
    let text = seed
        .replace("port: 8085", &format!("port: {http}"))
        .replace(
            "nats_port: 4222",
            &format!(
                "nats_port: {nats}\n    server_bin: {:?}",
                nats_server().display().to_string()
            ),
        )
        .replace("cluster_port: 6222", &format!("cluster_port: {cluster}"))
        .replace("http_port: 8222", &format!("http_port: {mon}"))
        .replace(
            "\"data/nats\"",
            &format!("{:?}", dir.path().join("nats").display().to_string()),
        );
    let path = dir.path().join("services.yaml");
    std::fs::write(&path, text).unwrap();
    let mut child = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let result = eventually(
        Duration::from_secs(20),
        "the seed config to be healthy",
        || async {
            get_json(http, "/health")
                .await
                .ok()
                .filter(|(c, _)| *c == 200)
        },
    )
    .await;
    let (_, streams) = get_json(http, "/api/v1/streams").await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(result.1["status"], "healthy");
    let names: Vec<&str> = streams["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "CUSTOM_STREAM",
            "MARKET_DATA",
            "SERVICE_LOGS",
            "SYSTEM_EVENTS"
        ]
    );
}

/// A plain nats-server of the test's own, for external mode.
fn external_nats(port: u16, monitor: u16, store: &std::path::Path) -> std::process::Child {
    std::process::Command::new(nats_server())
        .args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-m",
            &monitor.to_string(),
            "-sd",
        ])
        .arg(store)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_auto_start_off_it_uses_an_external_server_and_reconnects_forever() {
    let [http, port, monitor] = free_ports::<3>();
    let store = tempfile::tempdir().unwrap();
    let mut ext = external_nats(port, monitor, store.path());
    eventually(Duration::from_secs(10), "the external server", || async {
        get_json(monitor, "/healthz")
            .await
            .ok()
            .filter(|(c, _)| *c == 200)
    })
    .await;

    let d = Daemon::builder()
        .ports((http, port, monitor))
        .top("auto_start_nats: false\n")
        .nats(&format!("  nats_url: \"nats://127.0.0.1:{port}\"\n"))
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let (_, status) = d.get("/api/v1/status").await;
    assert_eq!(status["nats_server"]["status"], "running");
    assert_eq!(status["nats_server"]["supervised"], false);
    assert_eq!(status["nats_server"]["pid"], Value::Null);
    assert_eq!(status["nats_server"]["server_info"]["port"], port);
    assert_eq!(
        status["jetstream_streams"].as_array().unwrap().len(),
        3,
        "streams are created in the external server"
    );
    let (code, resp) = d.publish("market.a.b.trade", json!({"x": 1})).await;
    assert_eq!(
        (code, resp["persisted"].as_bool()),
        (200, Some(true)),
        "{resp}"
    );
    assert!(
        nats_servers_with(&d.state_dir().display().to_string()).is_empty(),
        "nothing may be spawned"
    );

    // The external server goes away: health says so, publish is 503.
    let _ = ext.kill();
    let _ = ext.wait();
    // (The first answer may still be "the connection dropped".)
    eventually(
        Duration::from_secs(5),
        "health to say it is not connected",
        || async {
            match get_json(http, "/health").await {
                Ok((503, h))
                    if h["problems"]
                        .to_string()
                        .contains("not connected to nats-server") =>
                {
                    Some(())
                }
                _ => None,
            }
        },
    )
    .await;
    let (_, status) = d.get("/api/v1/status").await;
    assert_eq!(status["nats_server"]["status"], "unreachable");
    let (code, _) = d.publish("market.a.b.trade", json!({"x": 2})).await;
    assert_eq!(code, 503);

    // It comes back: the daemon reconnects by itself, the message is there.
    let mut ext = external_nats(port, monitor, store.path());
    d.wait_healthy(Duration::from_secs(10)).await;
    let (code, resp) = d.publish("market.a.b.trade", json!({"x": 3})).await;
    assert_eq!((code, resp["seq"].as_u64()), (200, Some(2)), "{resp}");
    let _ = ext.kill();
    let _ = ext.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn reconciliation_updates_what_it_can_reports_drift_and_never_deletes() {
    let state = tempfile::tempdir().unwrap();
    let resync = "  stream_resync_interval: 300ms\n";
    let v1 = "  streams:\n    CUSTOM:\n      subjects: [\"custom.>\"]\n      max_age: 60\n";
    let mut d = Daemon::builder()
        .state(state.path())
        .nats(v1)
        .supervisor(resync)
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    for i in 0..3 {
        assert_eq!(d.publish("custom.x", json!(i)).await.0, 200);
    }
    let js = async_nats::jetstream::new(d.client().await);
    // Someone else's stream is never touched; a deleted declared stream is
    // recreated by the periodic resync.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "NOT_OURS".into(),
        subjects: vec!["other.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    js.delete_stream("SYSTEM_EVENTS").await.unwrap();
    eventually(
        Duration::from_secs(5),
        "SYSTEM_EVENTS to be recreated",
        || async { js.get_stream("SYSTEM_EVENTS").await.ok().map(|_| ()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        js.get_stream("NOT_OURS").await.is_ok(),
        "an undeclared stream was deleted"
    );
    d.signal(Signal::SIGTERM);
    d.expect_exit(0, Duration::from_secs(15));

    // Same store, new config: storage changes (impossible in place), limits
    // and subjects change (possible).
    let v2 = "  streams:\n    CUSTOM:\n      subjects: [\"custom.>\", \"custom2.>\"]\n      max_age: 120\n      storage: memory\n";
    let d = Daemon::builder()
        .state(state.path())
        .nats(v2)
        .supervisor(resync)
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let (code, custom) = d.get("/api/v1/streams/CUSTOM").await;
    assert_eq!(code, 200);
    assert_eq!(
        custom["storage"], "file",
        "an immutable difference must leave the stream as it is"
    );
    assert_eq!(custom["messages"], 3, "messages must survive");
    assert_eq!(custom["config"]["max_age_seconds"], 120);
    assert_eq!(custom["subjects"], json!(["custom.>", "custom2.>"]));
    assert_eq!(
        custom["drift"],
        json!(["CUSTOM: storage is file, config says memory"])
    );
    let log = d.log();
    assert!(
        log.contains("stream CUSTOM: storage is file but the config says memory"),
        "{log}"
    );
    assert!(
        log.contains("updated stream") && log.contains("max_age 60s -> 120s"),
        "{log}"
    );
    let (_, status) = d.get("/api/v1/status").await;
    assert_eq!(
        status["stream_reconciliation"]["drift"],
        json!(["CUSTOM: storage is file, config says memory"])
    );
    let (_, streams) = d.get("/api/v1/streams").await;
    let not_ours = streams["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "NOT_OURS")
        .unwrap()
        .clone();
    assert_eq!(not_ours["declared"], false);
    // Publishing to the undeclared stream's subject is persisted there too.
    let (_, resp) = d.publish("other.thing", json!(1)).await;
    assert_eq!(resp["stream"], "NOT_OURS", "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_crashes_in_the_window_end_the_daemon_with_69() {
    let mut d = Daemon::builder()
        .supervisor("  max_failures: 2\n  failure_window: 60s\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    for round in 0..3 {
        let old = d.child_pid().unwrap();
        kill(old, Signal::SIGKILL);
        if round < 2 {
            d.wait_new_child(old, Duration::from_secs(5)).await;
        }
    }
    d.expect_exit(69, Duration::from_secs(10));
    let log = d.log();
    assert!(
        log.contains("giving up: nats-server failed 3 times within 60s"),
        "{log}"
    );
    assert!(log.contains("last nats-server output:"), "{log}");
    assert!(nats_servers_with(&d.state_dir().display().to_string()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_deaf_to_sigterm_is_killed_after_stop_timeout() {
    let fake = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/fake-nats-server"
    );
    let mut d = Daemon::builder()
        .bin(fake)
        .env("FAKE_MODE", "stubborn")
        .supervisor("  stop_timeout: 500ms\n  start_timeout: 60s\n")
        .start();
    let child = eventually(Duration::from_secs(10), "the fake child", || async {
        d.child_pid()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    d.signal(Signal::SIGTERM);
    d.expect_exit(0, Duration::from_secs(10));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(!alive(child));
    let log = d.log();
    assert!(
        log.contains("stopping nats-server (SIGTERM")
            && log.contains("killing nats-server (SIGKILL"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declared_stream_that_cannot_be_created_makes_health_say_so() {
    let state = tempfile::tempdir().unwrap();
    let mut d = Daemon::builder().state(state.path()).start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let js = async_nats::jetstream::new(d.client().await);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "SOMEONE_ELSES".into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    d.signal(Signal::SIGTERM);
    d.expect_exit(0, Duration::from_secs(15));

    // Now the config declares a stream on the same subjects.
    let d = Daemon::builder()
        .state(state.path())
        .nats("  streams:\n    ORDERS:\n      subjects: [\"orders.>\"]\n")
        .start();
    let problems = eventually(Duration::from_secs(20), "health to name ORDERS", || async {
        match get_json(d.http, "/health").await {
            Ok((503, h)) if h["problems"].to_string().contains("ORDERS") => {
                Some(h["problems"].to_string())
            }
            _ => None,
        }
    })
    .await;
    assert!(
        problems.contains("declared stream ORDERS does not exist")
            && problems.contains("cannot create"),
        "{problems}"
    );
    let (_, status) = d.get("/api/v1/status").await;
    assert!(
        status["stream_reconciliation"]["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("ORDERS: cannot create"),
        "{status}"
    );
    assert!(d.log().contains("cannot create stream"), "{}", d.log());
}
