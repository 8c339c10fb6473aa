//! Consuming: config-declared durable consumers, their state over HTTP,
//! and fetch / ack / nak / term through the daemon, against a real
//! nats-server, side by side with the seed's Python client.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// MARKET_DATA as the seed declares it, plus two durable pull consumers:
/// the seed's `market-consumer` and one with a short ack_wait for
/// redelivery tests.
const CONSUMERS: &str = r#"  streams:
    MARKET_DATA:
      subjects: ["market.>"]
      max_age: 3600
      max_msgs: 1000000
      consumers:
        market-consumer:
          filter_subject: "market.>"
        crashy:
          filter_subject: "market.crash.>"
          ack_wait: 1s
"#;

fn daemon_on(bin: PathBuf) -> Daemon {
    Daemon::builder()
        .bin(bin)
        .nats(CONSUMERS)
        .top("api:\n  fetch_max_batch: 50\n")
        .start()
}

const MC: &str = "/api/v1/streams/MARKET_DATA/consumers/market-consumer";
const CRASHY: &str = "/api/v1/streams/MARKET_DATA/consumers/crashy";

async fn fetch(d: &Daemon, consumer: &str, batch: u32, expires_ms: u64) -> Vec<Value> {
    let (status, v) = d
        .post(
            &format!("{consumer}/fetch"),
            json!({"batch": batch, "expires_ms": expires_ms}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let messages = v["messages"].as_array().unwrap().clone();
    assert_eq!(v["count"], messages.len());
    messages
}

fn tokens(messages: &[Value]) -> Vec<Value> {
    messages.iter().map(|m| m["ack_token"].clone()).collect()
}

async fn ack(d: &Daemon, consumer: &str, verb: &str, body: Value) -> Value {
    let (status, v) = d.post(&format!("{consumer}/{verb}"), body).await;
    assert_eq!(status, 200, "{verb}: {v}");
    assert_eq!(v["success"], true, "{v}");
    v
}

async fn publish(d: &Daemon, subject: &str, message: Value) -> u64 {
    let (status, v) = d.publish(subject, message).await;
    assert_eq!(status, 200, "{v}");
    v["seq"].as_u64().unwrap()
}

async fn the_declared_consumer_serves_fetch_and_ack(bin: PathBuf) {
    let d = daemon_on(bin);
    d.wait_healthy(Duration::from_secs(20)).await;

    // Declared in the config: there before any client made it.
    let (status, c) = d.get(MC).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["name"], "market-consumer");
    assert_eq!(c["declared"], true);
    assert_eq!(c["config"]["type"], "pull");
    assert_eq!(c["config"]["filter_subjects"], json!(["market.>"]));
    assert_eq!(c["config"]["ack_policy"], "explicit");
    assert_eq!(c["config"]["deliver_policy"], "all");
    assert_eq!(c["config"]["ack_wait_ms"], 30_000);
    assert_eq!(c["config"]["max_deliver"], -1);
    assert_eq!(c["config"]["max_ack_pending"], 1000);
    assert_eq!(c["num_pending"], 0);
    assert!(c["created"].as_str().unwrap().ends_with('Z'), "{c}");

    // A JSON message through the API, a binary one with headers directly.
    let seq = publish(
        &d,
        "market.binance.BTCUSDT.trade",
        json!({"price": "50000.00"}),
    )
    .await;
    let client = d.client().await;
    let js = async_nats::jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Source", "collector");
    js.publish_with_headers(
        "market.okx.BTC-USDT.orderbook",
        headers,
        vec![0xff, 0x00, 0x41].into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let (_, c) = d.get(MC).await;
    assert_eq!(c["num_pending"], 2, "{c}");

    let t = Instant::now();
    let messages = fetch(&d, MC, 10, 5000).await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "available messages come at once, not after expires: {:?}",
        t.elapsed()
    );
    assert_eq!(messages.len(), 2, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m["subject"], "market.binance.BTCUSDT.trade");
    assert_eq!(m["data"], json!({"price": "50000.00"}));
    assert!(
        m.get("data_encoding").is_none() && m.get("headers").is_none(),
        "{m}"
    );
    assert_eq!(
        (m["stream_seq"].as_u64(), m["consumer_seq"].as_u64()),
        (Some(seq), Some(1))
    );
    assert_eq!(m["num_delivered"], 1);
    assert!(m["timestamp"].as_str().unwrap().starts_with("20"), "{m}");
    assert!(m["ack_token"]
        .as_str()
        .unwrap()
        .starts_with("$JS.ACK.MARKET_DATA.market-consumer."));
    let b = &messages[1];
    assert_eq!(
        (b["data"].as_str(), b["data_encoding"].as_str()),
        (Some("/wBB"), Some("base64"))
    );
    assert_eq!(b["headers"], json!({"X-Source": "collector"}));

    let (_, c) = d.get(MC).await;
    assert_eq!(
        (c["num_pending"].as_u64(), c["num_ack_pending"].as_u64()),
        (Some(0), Some(2)),
        "{c}"
    );
    assert_eq!(c["delivered"]["stream_seq"], seq + 1);

    let v = ack(&d, MC, "ack", json!({"tokens": tokens(&messages)})).await;
    assert_eq!(v["processed"], 2);
    assert_eq!(v["results"][1]["ok"], true);
    let (_, c) = d.get(MC).await;
    assert_eq!(
        c["num_ack_pending"], 0,
        "acked messages are no longer pending: {c}"
    );
    assert_eq!(c["ack_floor"]["stream_seq"], seq + 1);

    // Nothing left: an empty answer after expires, not an error.
    let t = Instant::now();
    assert!(fetch(&d, MC, 10, 300).await.is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    let (_, status) = d.get("/api/v1/status").await;
    assert_eq!(status["message_stats"]["consumed"], 2, "{status}");

    // A fetch that waits answers as soon as a message arrives.
    let waiting = tokio::spawn({
        let http = d.http;
        async move {
            let t = Instant::now();
            let r = request(
                http,
                "POST",
                &format!("{MC}/fetch"),
                &[("content-type", "application/json")],
                br#"{"batch": 5, "expires_ms": 10000}"#.to_vec(),
            )
            .await
            .unwrap();
            (t.elapsed(), serde_json::from_slice::<Value>(&r.2).unwrap())
        }
    });
    eventually(
        Duration::from_secs(5),
        "the fetch to be waiting",
        || async {
            let (_, c) = d.get(MC).await;
            (c["num_waiting"].as_u64() > Some(0)).then_some(())
        },
    )
    .await;
    publish(&d, "market.binance.ETHUSDT.trade", json!({"late": true})).await;
    let (took, v) = waiting.await.unwrap();
    assert_eq!(v["count"], 1, "{v}");
    assert_eq!(v["messages"][0]["data"], json!({"late": true}));
    assert!(
        took < Duration::from_secs(8),
        "the fetch waited out its expires: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_declared_consumer_serves_fetch_and_ack_on_debians_nats_server() {
    the_declared_consumer_serves_fetch_and_ack(nats_server()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_declared_consumer_serves_fetch_and_ack_on_a_current_nats_server() {
    the_declared_consumer_serves_fetch_and_ack(nats_server_current()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_are_listed_and_unknown_ones_are_404() {
    let d = daemon_on(nats_server());
    d.wait_healthy(Duration::from_secs(20)).await;
    // One a client made for itself: listed, not declared, left alone.
    let js = async_nats::jetstream::new(d.client().await);
    js.create_consumer_on_stream(
        async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("someone-elses".into()),
            ..Default::default()
        },
        "MARKET_DATA",
    )
    .await
    .unwrap();
    let (status, v) = d.get("/api/v1/streams/MARKET_DATA/consumers").await;
    assert_eq!(status, 200, "{v}");
    let names: Vec<(&str, bool)> = v["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["declared"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("crashy", true),
            ("market-consumer", true),
            ("someone-elses", false)
        ]
    );
    assert_eq!(v["consumers"][0]["config"]["ack_wait_ms"], 1000);
    let (_, md) = d.get("/api/v1/streams/MARKET_DATA").await;
    assert_eq!(md["consumer_count"], 3);

    for path in [
        "/api/v1/streams/MARKET_DATA/consumers/nope",
        "/api/v1/streams/NOPE/consumers/market-consumer",
        "/api/v1/streams/NOPE/consumers",
    ] {
        let (status, v) = d.get(path).await;
        assert_eq!(status, 404, "{path}: {v}");
        assert_eq!(v["error"]["code"], "not_found", "{v}");
    }
    let (status, v) = d
        .post(
            "/api/v1/streams/MARKET_DATA/consumers/nope/fetch",
            json!({}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    let (status, v) = d
        .post(
            "/api/v1/streams/MARKET_DATA/consumers/nope/ack",
            json!({"tokens": ["$JS.ACK.MARKET_DATA.nope.1.1.1.1.0"]}),
        )
        .await;
    assert_eq!(status, 404, "{v}");
    let (status, _, _) = request(d.http, "GET", &format!("{MC}/fetch"), &[], vec![])
        .await
        .unwrap();
    assert_eq!(status, 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_fetch_and_ack_requests_are_refused() {
    let d = daemon_on(nats_server());
    d.wait_healthy(Duration::from_secs(20)).await;
    let fetch_path = format!("{MC}/fetch");
    for (body, code) in [
        (json!({"batch": 0}), "invalid_batch"),
        (json!({"batch": 51}), "invalid_batch"),
        (json!({"batch": "ten"}), "invalid_json"),
        (json!({"bacth": 1}), "invalid_json"),
    ] {
        let (status, v) = d.post(&fetch_path, body.clone()).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}: {v}"
        );
    }
    let (status, v) = d
        .post_raw(&fetch_path, "application/json", b"{nope".to_vec())
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_json")),
        "{v}"
    );
    let (status, v) = d
        .post_raw(&fetch_path, "text/plain", b"batch=1".to_vec())
        .await;
    assert_eq!(status, 415, "{v}");
    // An empty body means the defaults.
    let (status, v) = d.post_raw(&fetch_path, "application/json", vec![]).await;
    assert_eq!((status, v["count"].as_u64()), (200, Some(0)), "{v}");

    publish(&d, "market.binance.BTCUSDT.trade", json!({"x": 1})).await;
    let messages = fetch(&d, MC, 1, 2000).await;
    let mine = messages[0]["ack_token"].as_str().unwrap().to_string();
    let crashy_token = mine.replace(".market-consumer.", ".crashy.");
    for (tokens, what) in [
        (json!([crashy_token]), "another consumer's token"),
        (json!(["market.binance.BTCUSDT.trade"]), "a plain subject"),
        (
            json!(["$JS.ACK.MARKET_DATA.market-consumer.>"]),
            "a wildcard",
        ),
        (
            json!([mine.clone(), "$JS.API.STREAM.DELETE.MARKET_DATA"]),
            "an API subject",
        ),
    ] {
        let (status, v) = d
            .post(&format!("{MC}/ack"), json!({"tokens": tokens}))
            .await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some("invalid_token")),
            "{what}: {v}"
        );
    }
    let (status, v) = d.post(&format!("{MC}/ack"), json!({"tokens": []})).await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = d
        .post(
            &format!("{MC}/ack"),
            json!({"tokens": [mine], "delay_ms": 5}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    // Nothing was acked by the refused requests.
    let (_, c) = d.get(MC).await;
    assert_eq!(c["num_ack_pending"], 1, "{c}");
    let (_, md) = d.get("/api/v1/streams/MARKET_DATA").await;
    assert_eq!(md["messages"], 1, "{md}");
}

#[tokio::test(flavor = "multi_thread")]
async fn nak_brings_a_message_back_and_term_ends_it() {
    let d = daemon_on(nats_server());
    d.wait_healthy(Duration::from_secs(20)).await;
    let seq = publish(&d, "market.binance.BTCUSDT.trade", json!({"n": 1})).await;

    let first = fetch(&d, MC, 10, 2000).await;
    assert_eq!(first.len(), 1);
    ack(&d, MC, "nak", json!({"tokens": tokens(&first)})).await;
    let again = fetch(&d, MC, 10, 5000).await;
    assert_eq!(again.len(), 1, "a nak'd message comes back at once");
    assert_eq!(
        (
            again[0]["stream_seq"].as_u64(),
            again[0]["num_delivered"].as_u64()
        ),
        (Some(seq), Some(2))
    );

    // A delayed nak holds it back for the delay.
    ack(
        &d,
        MC,
        "nak",
        json!({"tokens": tokens(&again), "delay_ms": 1500}),
    )
    .await;
    let t = Instant::now();
    assert!(
        fetch(&d, MC, 10, 300).await.is_empty(),
        "redelivered before the nak delay"
    );
    let third = fetch(&d, MC, 10, 10_000).await;
    assert_eq!(third.len(), 1);
    assert_eq!(third[0]["num_delivered"], 3);
    assert!(
        t.elapsed() >= Duration::from_millis(1200),
        "{:?}",
        t.elapsed()
    );

    ack(&d, MC, "term", json!({"tokens": tokens(&third)})).await;
    assert!(
        fetch(&d, MC, 10, 500).await.is_empty(),
        "a terminated message is not redelivered"
    );
    let (_, c) = d.get(MC).await;
    assert_eq!(
        (c["num_ack_pending"].as_u64(), c["num_pending"].as_u64()),
        (Some(0), Some(0)),
        "{c}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_dies_before_acking_loses_nothing() {
    let d = daemon_on(nats_server());
    d.wait_healthy(Duration::from_secs(20)).await;
    let seq = publish(&d, "market.crash.BTCUSDT.trade", json!({"important": true})).await;
    // The client fetches and "crashes": no ack ever comes.
    let lost = fetch(&d, CRASHY, 10, 2000).await;
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0]["num_delivered"], 1);
    // After the consumer's ack_wait (1s) JetStream hands it out again.
    let t = Instant::now();
    let back = fetch(&d, CRASHY, 10, 10_000).await;
    assert_eq!(back.len(), 1, "the unacked message was not redelivered");
    assert_eq!(back[0]["stream_seq"], seq);
    assert_eq!(back[0]["num_delivered"], 2);
    assert_eq!(back[0]["data"], json!({"important": true}));
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let (_, c) = d.get(CRASHY).await;
    assert_eq!(c["num_redelivered"], 1, "{c}");
    // The old delivery's token is still good: the message is done.
    ack(&d, CRASHY, "ack", json!({"tokens": tokens(&lost)})).await;
    let (_, c) = d.get(CRASHY).await;
    assert_eq!(c["num_ack_pending"], 0, "{c}");
}

/// `confirm: false` answers 202 once nats-server received the tokens,
/// without a result per token, and the acks take effect all the same:
/// nothing is handed out again after the consumer's ack_wait, while the
/// message acked with a token that was left out comes back.
#[tokio::test(flavor = "multi_thread")]
async fn unconfirmed_acks_answer_202_and_take_effect() {
    let d = daemon_on(nats_server());
    d.wait_healthy(Duration::from_secs(20)).await;
    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(publish(&d, "market.crash.ETHUSDT.trade", json!({"i": i})).await);
    }
    let got = fetch(&d, CRASHY, 10, 2000).await;
    assert_eq!(got.len(), 5);
    let (done, left) = got.split_at(4);
    let (status, v) = d
        .post(
            &format!("{CRASHY}/ack"),
            json!({"tokens": tokens(done), "confirm": false}),
        )
        .await;
    assert_eq!(
        (status, &v),
        (202, &json!({"success": true, "received": 4}))
    );
    // After ack_wait (1s) only the message left out comes back.
    let t = Instant::now();
    let back = fetch(&d, CRASHY, 10, 10_000).await;
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let back_seqs: Vec<&Value> = back.iter().map(|m| &m["stream_seq"]).collect();
    assert_eq!(back_seqs, vec![&left[0]["stream_seq"]], "{back:?}");
    assert_eq!(left[0]["stream_seq"], seqs[4]);
    // A term without waiting for it, then nothing is pending.
    let (status, v) = d
        .post(
            &format!("{CRASHY}/term"),
            json!({"tokens": tokens(&back), "confirm": false}),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let c = eventually(Duration::from_secs(5), "no ack pending", || async {
        let (_, c) = d.get(CRASHY).await;
        (c["num_ack_pending"] == 0).then_some(c)
    })
    .await;
    assert_eq!(c["num_pending"], 0, "{c}");
    // Bad input is refused as with confirmed acks, and an unknown
    // consumer is still 404 though nothing waits for answers.
    for (body, code) in [
        (
            json!({"tokens": tokens(&back), "confirm": "no"}),
            "invalid_json",
        ),
        (
            json!({"tokens": ["market.x"], "confirm": false}),
            "invalid_token",
        ),
    ] {
        let (status, v) = d.post(&format!("{CRASHY}/ack"), body).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some(code)),
            "{v}"
        );
    }
    let (status, v) = d
        .post(
            "/api/v1/streams/MARKET_DATA/consumers/nope/ack",
            json!({"tokens": ["$JS.ACK.MARKET_DATA.nope.1.1.1.1.0"], "confirm": false}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_adds_a_declared_consumer() {
    let d = Daemon::builder()
        .nats("  streams:\n    MARKET_DATA:\n      subjects: [\"market.>\"]\n      max_age: 3600\n      max_msgs: 1000000\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let (status, _) = d.get(MC).await;
    assert_eq!(status, 404);
    d.edit_config(|c| {
        c.replace(
            "      max_msgs: 1000000\n",
            "      max_msgs: 1000000\n      consumers:\n        market-consumer:\n          ack_wait: 10s\n",
        )
    });
    d.signal(Signal::SIGHUP);
    let c = eventually(
        Duration::from_secs(10),
        "the consumer after the reload",
        || async {
            let (status, c) = d.get(MC).await;
            (status == 200).then_some(c)
        },
    )
    .await;
    assert_eq!(c["config"]["ack_wait_ms"], 10_000);
    assert_eq!(c["config"]["filter_subjects"], json!([]));
    // A changed limit is applied in place by the next reload.
    d.edit_config(|c| c.replace("ack_wait: 10s", "ack_wait: 20s"));
    d.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(10), "ack_wait updated", || async {
        let (_, c) = d.get(MC).await;
        (c["config"]["ack_wait_ms"] == 20_000).then_some(())
    })
    .await;
    // The consumer changes before the sync that changed it is recorded.
    eventually(Duration::from_secs(10), "the update in status", || async {
        let (_, status) = d.get("/api/v1/status").await;
        let updated = status["stream_reconciliation"]["updated"].to_string();
        updated
            .contains("MARKET_DATA/market-consumer")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_made_push_consumer_of_the_same_name_is_reported_not_replaced() {
    let d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    // The seed's clients subscribe with push consumers named market-consumer.
    let js = async_nats::jetstream::new(d.client().await);
    js.create_consumer_on_stream(
        async_nats::jetstream::consumer::push::Config {
            durable_name: Some("market-consumer".into()),
            deliver_subject: "deliver.market".into(),
            ..Default::default()
        },
        "MARKET_DATA",
    )
    .await
    .unwrap();
    d.edit_config(|c| c.replace("nats:\n", &format!("nats:\n{CONSUMERS}")));
    d.signal(Signal::SIGHUP);
    let drift = eventually(Duration::from_secs(10), "the drift report", || async {
        let (_, s) = d.get("/api/v1/status").await;
        let drift = s["stream_reconciliation"]["drift"].to_string();
        drift.contains("market-consumer").then_some(drift)
    })
    .await;
    assert!(drift.contains("delivery is push"), "{drift}");
    let (_, c) = d.get(MC).await;
    assert_eq!(
        c["config"]["type"], "push",
        "the client's consumer is left as it was"
    );
    let (status, v) = d.post(&format!("{MC}/fetch"), json!({})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("not_a_pull_consumer")),
        "{v}"
    );
    // The other declared consumer was created all the same.
    assert_eq!(d.get(CRASHY).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_and_ack_while_nats_server_is_down_are_a_quick_503() {
    let d = Daemon::builder()
        .nats(CONSUMERS)
        .supervisor("  backoff_initial: 5s\n  backoff_max: 5s\n")
        .top("api:\n  publish_timeout: 1s\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    kill(d.child_pid().unwrap(), Signal::SIGKILL);
    d.wait_health(503, Duration::from_secs(2)).await;
    let t = Instant::now();
    let (status, v) = d
        .post(&format!("{MC}/fetch"), json!({"expires_ms": 5000}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (503, Some("nats_unavailable")),
        "{v}"
    );
    let (status, _) = d
        .post(
            &format!("{MC}/ack"),
            json!({"tokens": ["$JS.ACK.MARKET_DATA.market-consumer.1.1.1.1.0"]}),
        )
        .await;
    assert_eq!(status, 503);
    assert_eq!(d.get(MC).await.0, 503);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seeds_python_pull_client_and_http_share_the_declared_durable() {
    let d = daemon_on(nats_server());
    d.wait_healthy(Duration::from_secs(20)).await;
    for i in 0..20 {
        publish(&d, "market.binance.BTCUSDT.trade", json!({"i": i})).await;
    }
    // The first ten over HTTP, acked.
    let mut got = Vec::new();
    while got.len() < 10 {
        let batch = fetch(&d, MC, 10 - got.len() as u32, 2000).await;
        ack(&d, MC, "ack", json!({"tokens": tokens(&batch)})).await;
        got.extend(batch.into_iter().map(|m| m["data"]["i"].as_u64().unwrap()));
    }
    assert_eq!(got, (0..10).collect::<Vec<u64>>());

    let v = python_client("seed_pull_client.py", &[&d.nats_url(), "10"]).await;
    let received: Vec<u64> = v["received"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r[2], 1, "delivered once: {r}");
            serde_json::from_str::<Value>(r[1].as_str().unwrap()).unwrap()["i"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(received, (10..20).collect::<Vec<u64>>(), "{v}");
    assert_eq!(
        (
            v["extra"].as_u64(),
            v["ack_pending"].as_u64(),
            v["pending"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{v}"
    );
    assert_eq!(v["filter_subject"], "market.>");
    assert_eq!(
        v["deliver_subject"],
        Value::Null,
        "still the daemon's pull consumer"
    );
    // And the daemon sees the durable fully consumed.
    let (_, c) = d.get(MC).await;
    assert_eq!(
        (
            c["num_pending"].as_u64(),
            c["ack_floor"]["stream_seq"].as_u64()
        ),
        (Some(0), Some(20)),
        "{c}"
    );
    let (_, status) = d.get("/api/v1/status").await;
    assert_eq!(
        status["message_stats"]["consumed"], 10,
        "only the daemon's own deliveries count"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_filter_is_applied_in_place_keeping_the_position() {
    for bin in nats_servers() {
        let d = daemon_on(bin.clone());
        d.wait_healthy(Duration::from_secs(20)).await;
        publish(&d, "market.crash.x.trade", json!({"n": 1})).await;
        let done = fetch(&d, CRASHY, 10, 2000).await;
        ack(&d, CRASHY, "ack", json!({"tokens": tokens(&done)})).await;
        d.edit_config(|c| {
            c.replace(
                "filter_subject: \"market.crash.>\"",
                "filter_subject: \"market.crash.x.>\"",
            )
        });
        d.signal(Signal::SIGHUP);
        let c = eventually(Duration::from_secs(10), "the new filter", || async {
            let (_, c) = d.get(CRASHY).await;
            (c["config"]["filter_subjects"] == json!(["market.crash.x.>"])).then_some(c)
        })
        .await;
        // Updated, not recreated: what was acked stays acked.
        assert_eq!(c["ack_floor"]["stream_seq"], 1, "{}: {c}", bin.display());
        publish(&d, "market.crash.y.trade", json!({"n": 2})).await;
        publish(&d, "market.crash.x.trade", json!({"n": 3})).await;
        let next = fetch(&d, CRASHY, 10, 2000).await;
        assert_eq!(next.len(), 1, "{}: {next:?}", bin.display());
        assert_eq!(next[0]["data"], json!({"n": 3}));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn start_sequence_and_several_filters_as_each_nats_server_allows() {
    let extra = r#"        from-seq:
          deliver_policy: by_start_sequence
          opt_start_seq: 2
        two-kinds:
          filter_subjects: ["market.*.BTCUSDT.trade", "market.*.ETHUSDT.ticker"]
"#;
    for bin in [nats_server(), nats_server_current()] {
        // Several filter_subjects: nats-server 2.10 and later.
        let multi = nats_server_version(&bin) >= (2, 10, 0);
        let d = daemon_on(bin.clone());
        d.wait_healthy(Duration::from_secs(20)).await;
        for (i, subject) in [
            "market.a.BTCUSDT.trade",
            "market.a.BTCUSDT.ticker",
            "market.a.ETHUSDT.ticker",
        ]
        .iter()
        .enumerate()
        {
            publish(&d, subject, json!({"i": i})).await;
        }
        // Declared once the stream has messages: nats-server 2.9 starts a
        // by_start_sequence consumer of an empty stream at 1.
        d.edit_config(|c| c.replace(CONSUMERS, &format!("{CONSUMERS}{extra}")));
        d.signal(Signal::SIGHUP);
        let from = "/api/v1/streams/MARKET_DATA/consumers/from-seq";
        let c = eventually(
            Duration::from_secs(10),
            "from-seq after the reload",
            || async {
                let (status, c) = d.get(from).await;
                (status == 200).then_some(c)
            },
        )
        .await;
        assert_eq!(
            (
                c["config"]["deliver_policy"].as_str(),
                c["config"]["opt_start_seq"].as_u64()
            ),
            (Some("by_start_sequence"), Some(2)),
            "{c}"
        );
        let got: Vec<u64> = fetch(&d, from, 10, 1000)
            .await
            .iter()
            .map(|m| m["stream_seq"].as_u64().unwrap())
            .collect();
        assert_eq!(got, [2, 3], "{}", bin.display());

        let two = "/api/v1/streams/MARKET_DATA/consumers/two-kinds";
        // Reconciled in name order: wait for the sync to reach two-kinds.
        let (_, s) = eventually(Duration::from_secs(10), "two-kinds reconciled", || async {
            let (_, s) = d.get("/api/v1/status").await;
            let r = &s["stream_reconciliation"];
            let seen = r.to_string().contains("two-kinds");
            seen.then(|| (r["created"].clone(), r["errors"].to_string()))
        })
        .await;
        let (status, c) = d.get(two).await;
        if multi {
            assert_eq!(status, 200, "{c}");
            let got: Vec<u64> = fetch(&d, two, 10, 1000)
                .await
                .iter()
                .map(|m| m["stream_seq"].as_u64().unwrap())
                .collect();
            assert_eq!(got, [1, 3]);
        } else {
            // 2.9 would ignore filter_subjects and hand out the whole
            // stream: the consumer is not created, and status says why.
            assert_eq!(status, 404, "{c}");
            assert!(s.contains("needs nats-server 2.10"), "{s}");
            assert!(d.log().contains("cannot create consumer two-kinds"));
            // A declared consumer that does not exist is not healthy.
            let (code, h) = d.get("/health").await;
            assert_eq!(code, 503, "{h}");
            let problems = h["problems"].to_string();
            assert!(
                problems
                    .contains("declared consumer two-kinds of stream MARKET_DATA does not exist")
                    && problems.contains("needs nats-server 2.10"),
                "{h}"
            );
        }
        // The others are there all the same.
        assert_eq!(d.get(MC).await.0, 200);
    }
}

/// A consumer the tests below delete while it is in use.
const DOOMED: &str = "/api/v1/streams/MARKET_DATA/consumers/doomed";

/// A healthy daemon on `bin` with MARKET_DATA and its consumer `doomed`.
async fn doomed_daemon(bin: PathBuf) -> Daemon {
    let d = Daemon::builder()
        .bin(bin)
        .nats(
            r#"  streams:
    MARKET_DATA:
      subjects: ["market.>"]
      consumers:
        doomed:
          filter_subject: "market.doomed.>"
"#,
        )
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    d
}

/// A fetch skips the consumer lookup for a second after one; a consumer
/// deleted within that second is still 404 at the next fetch (once its
/// pull went unanswered), and at an ack of its tokens, never an empty 200.
async fn a_consumer_deleted_right_after_a_fetch_is_404_at_the_next(bin: PathBuf) {
    let d = doomed_daemon(bin).await;
    let c = DOOMED;
    publish(&d, "market.doomed.x", json!({"n": 1})).await;
    let got = fetch(&d, c, 1, 200).await;
    assert_eq!(got.len(), 1);
    let js = async_nats::jetstream::new(d.client().await);
    js.delete_consumer_from_stream("doomed", "MARKET_DATA")
        .await
        .unwrap();
    let started = Instant::now();
    let (status, v) = d
        .post(
            &format!("{c}/fetch"),
            json!({"batch": 1, "expires_ms": 200}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "answered only after {took:?}"
    );
    let (status, v) = d
        .post(&format!("{c}/ack"), json!({"tokens": tokens(&got)}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_deleted_right_after_a_fetch_is_404_at_the_next_on_debians_nats_server() {
    a_consumer_deleted_right_after_a_fetch_is_404_at_the_next(nats_server()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_deleted_right_after_a_fetch_is_404_at_the_next_on_a_current_nats_server() {
    a_consumer_deleted_right_after_a_fetch_is_404_at_the_next(nats_server_current()).await;
}

/// A pull nats-server ends with status 409 (here: the consumer was deleted
/// while the fetch waited) is answered 409 pull_refused with the server's
/// reason, not 503: the client has to change something before retrying.
async fn a_pull_the_server_terminates_is_refused_with_409(bin: PathBuf) {
    let d = doomed_daemon(bin).await;
    let c = DOOMED;
    let waiting = {
        let port = d.http;
        tokio::spawn(async move {
            let started = Instant::now();
            let r = request(
                port,
                "POST",
                &format!("{c}/fetch"),
                &[("content-type", "application/json")],
                br#"{"batch": 1, "expires_ms": 5000}"#.to_vec(),
            )
            .await
            .unwrap();
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let js = async_nats::jetstream::new(d.client().await);
    js.delete_consumer_from_stream("doomed", "MARKET_DATA")
        .await
        .unwrap();
    let ((status, _, body), took) = waiting.await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("pull_refused")),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("409"), "{message}");
    assert!(
        took < Duration::from_secs(4),
        "answered only after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_the_server_terminates_is_refused_with_409_on_debians_nats_server() {
    a_pull_the_server_terminates_is_refused_with_409(nats_server()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_the_server_terminates_is_refused_with_409_on_a_current_nats_server() {
    a_pull_the_server_terminates_is_refused_with_409(nats_server_current()).await;
}

/// Publishes `n` messages to `subject` through the batch endpoint.
async fn publish_many(d: &Daemon, subject: &str, n: usize) {
    let batch: Vec<Value> = (0..n)
        .map(|i| json!({"subject": subject, "message": {"i": i}}))
        .collect();
    let (status, v) = d.post("/api/v1/publish/batch", json!(batch)).await;
    assert_eq!(status, 200, "{}", v["failed"]);
}

/// Fetches until `n` messages are out (one pull usually brings them all).
async fn fetch_n(d: &Daemon, consumer: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let got = fetch(d, consumer, (n - out.len()) as u32, 5000).await;
        assert!(!got.is_empty(), "only {} of {n} messages came", out.len());
        out.extend(got);
    }
    out
}

/// The issue's failure: a fetch of api.fetch_max_batch messages (its
/// default, 1000) could not be acked in one request (413 past 64 KiB).
/// Every token of a full fetch is acked, nak'ed or term'ed in one request,
/// and what is acked or term'ed is not delivered again.
#[tokio::test(flavor = "multi_thread")]
async fn a_whole_fetch_at_fetch_max_batch_is_acked_naked_and_termed_in_one_request() {
    let consumer = "full-fetch-consumer";
    let d = Daemon::builder()
        .nats(&format!(
            "{CONSUMERS}        {consumer}:\n          filter_subject: \"market.full.>\"\n          ack_wait: 1s\n"
        ))
        .start();
    let path = format!("/api/v1/streams/MARKET_DATA/consumers/{consumer}");
    let path = path.as_str();
    d.wait_healthy(Duration::from_secs(20)).await;
    let (_, status) = d.get("/api/v1/status").await;
    let max = 1000;
    assert_eq!(
        d.post(&format!("{path}/fetch"), json!({"batch": max + 1}))
            .await
            .0,
        400,
        "the default api.fetch_max_batch is {max}: {status}"
    );

    // ack: all at once, and nothing comes back after ack_wait (1 s).
    publish_many(&d, "market.full.BTCUSDT.trade", max).await;
    let messages = fetch_n(&d, path, max).await;
    let body = json!({"tokens": tokens(&messages)});
    assert!(body.to_string().len() > 64 << 10, "more than the old limit");
    let v = ack(&d, path, "ack", body).await;
    assert_eq!(v["processed"], max, "{}", v["processed"]);
    let (_, c) = d.get(path).await;
    assert_eq!(
        (c["num_ack_pending"].as_u64(), c["num_pending"].as_u64()),
        (Some(0), Some(0)),
        "{c}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        fetch(&d, path, 10, 500).await.is_empty(),
        "an acked message was redelivered"
    );

    // nak: all of them come back at once.
    publish_many(&d, "market.full.ETHUSDT.trade", max).await;
    let messages = fetch_n(&d, path, max).await;
    let v = ack(&d, path, "nak", json!({"tokens": tokens(&messages)})).await;
    assert_eq!(v["processed"], max);
    let again = fetch_n(&d, path, max).await;
    assert!(
        again.iter().all(|m| m["num_delivered"] == 2),
        "every nak'd message is redelivered once"
    );

    // term: the redelivered ones, all at once; they are done for good.
    let v = ack(&d, path, "term", json!({"tokens": tokens(&again)})).await;
    assert_eq!(v["processed"], max);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        fetch(&d, path, 10, 500).await.is_empty(),
        "a terminated message was redelivered"
    );
    let (_, c) = d.get(path).await;
    assert_eq!(c["num_ack_pending"], 0, "{c}");
}

/// A daemon whose consumer `consumer` (of `market.{consumer}.>`) may have
/// twice `n` messages unacked, where a fetch may ask for `n` (a multiple of
/// 1000), and `n` messages published to it: the daemon and the consumer's
/// path.
async fn n_pending(consumer: &str, n: usize) -> (Daemon, String) {
    let d = Daemon::builder()
        .nats(&format!(
            "{CONSUMERS}        {consumer}:\n          filter_subject: \"market.{consumer}.>\"\n          max_ack_pending: {}\n",
            2 * n
        ))
        .top(&format!("api:\n  fetch_max_batch: {n}\n"))
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    for _ in 0..n / 1000 {
        publish_many(&d, &format!("market.{consumer}.BTCUSDT.trade"), 1000).await;
    }
    (
        d,
        format!("/api/v1/streams/MARKET_DATA/consumers/{consumer}"),
    )
}

/// An ack request of more tokens than the daemon keeps unanswered at once
/// (half of a subscription's 4096-message buffer) and than that buffer:
/// every token gets its own confirmed answer, in the tokens' order.
#[tokio::test(flavor = "multi_thread")]
async fn an_ack_of_5000_tokens_confirms_each_in_order() {
    let n = 5000;
    let (d, path) = n_pending("wide", n).await;
    let messages = fetch_n(&d, &path, n).await;
    let v = ack(&d, &path, "ack", json!({"tokens": tokens(&messages)})).await;
    assert_eq!(v["processed"], n);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), n);
    for (r, m) in results.iter().zip(&messages) {
        assert_eq!(r["token"], m["ack_token"], "results in the tokens' order");
        assert_eq!(r["ok"], true, "{r}");
    }
    let (_, c) = d.get(&path).await;
    assert_eq!(
        (c["num_ack_pending"].as_u64(), c["num_pending"].as_u64()),
        (Some(0), Some(0)),
        "{c}"
    );
}

/// A fetch of more messages than one subscription of the daemon's client
/// holds (4096): CI once saw 549 of 5000 go missing from the answer, left
/// pending until their ack_wait. Every message comes in one answer, in
/// order, each once, and the consumer has them all pending.
#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_larger_than_a_subscriptions_buffer_brings_every_message_at_once() {
    let n = 20_000;
    let (d, path) = n_pending("huge", n).await;
    let messages = fetch(&d, &path, n as u32, 5000).await;
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["consumer_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs.len(),
        n,
        "one fetch of {n} with {n} in the stream brought {}",
        seqs.len()
    );
    assert!(
        seqs.iter().zip(1..).all(|(&s, i)| s == i),
        "consumer sequences 1..={n} in order"
    );
    let is: Vec<u64> = messages
        .iter()
        .map(|m| m["data"]["i"].as_u64().unwrap())
        .collect();
    assert!(
        is.chunks(1000)
            .all(|c| c.iter().zip(0..).all(|(&a, b)| a == b)),
        "the payloads in publishing order"
    );
    let (_, c) = d.get(&path).await;
    assert_eq!(
        (c["num_ack_pending"].as_u64(), c["num_pending"].as_u64()),
        (Some(n as u64), Some(0)),
        "{c}"
    );
}

/// A fetch brings at most `api.fetch_max_bytes` of messages (2 MiB here,
/// the least it may be with nats-server's 1 MiB max_payload), or the
/// request's smaller `max_bytes`, whatever `batch` says: big messages
/// cannot make one request hold gigabytes in the daemon. What does not fit
/// comes at the next fetch, in order; a next message larger than the
/// request's max_bytes is a 409 that says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_brings_at_most_fetch_max_bytes_and_the_rest_comes_next() {
    let consumer = "bulky";
    let d = Daemon::builder()
        .nats(&format!(
            "{CONSUMERS}        {consumer}:\n          filter_subject: \"market.bulky.>\"\n"
        ))
        .top("api:\n  fetch_max_bytes: 2MiB\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let path = format!("/api/v1/streams/MARKET_DATA/consumers/{consumer}");
    // 30 messages of about 100 KB (the payload; with subject and ack
    // subject some 100.2 KB as nats-server counts).
    let pad = "x".repeat(100_000);
    for i in 1..=30 {
        publish(&d, "market.bulky.BTCUSDT.book", json!({"i": i, "pad": pad})).await;
    }
    let ids = |ms: &[Value]| -> Vec<u64> {
        ms.iter()
            .map(|m| m["data"]["i"].as_u64().unwrap())
            .collect()
    };

    // The request's own max_bytes: three fit in 350 KB.
    let (status, v) = d
        .post(
            &format!("{path}/fetch"),
            json!({"batch": 30, "max_bytes": 350_000}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let first = v["messages"].as_array().unwrap().clone();
    assert_eq!(ids(&first), [1, 2, 3]);

    // api.fetch_max_bytes: 2 MiB holds 20 of them, not the 27 asked for.
    let second = fetch(&d, &path, 30, 2000).await;
    assert_eq!(ids(&second), (4..=23).collect::<Vec<_>>());
    let third = fetch(&d, &path, 30, 2000).await;
    assert_eq!(
        ids(&third),
        (24..=30).collect::<Vec<_>>(),
        "the rest, in order"
    );

    // A next message larger than max_bytes: 409, and it stays for later.
    publish(
        &d,
        "market.bulky.BTCUSDT.book",
        json!({"i": 31, "pad": pad}),
    )
    .await;
    let (status, v) = d
        .post(
            &format!("{path}/fetch"),
            json!({"batch": 1, "max_bytes": 1000}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("message_too_large")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("api.fetch_max_bytes"),
        "{v}"
    );
    assert_eq!(ids(&fetch(&d, &path, 1, 2000).await), [31]);
    let (status, v) = d
        .post(&format!("{path}/fetch"), json!({"max_bytes": 0}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_max_bytes")),
        "{v}"
    );
}
