//! Subject mappings against a real nats-server: a message published to a
//! mapped source arrives on its destination, is stored by the stream that
//! captures the destination, and the HTTP answer says so; weighted
//! destinations share the messages; a reload adds a mapping without
//! restarting nats-server.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::json;

const MAPPINGS: &str = r#"  mappings:
    "legacy.*.*": "market.$2.$1.trade"
    "split.*":
      - {destination: "market.a.{{wildcard(1)}}", weight: 50}
      - {destination: "market.b.$1", weight: "50%"}
"#;

async fn subject_of(js: &async_nats::jetstream::Context, seq: u64) -> String {
    let stream = js.get_stream("MARKET_DATA").await.unwrap();
    stream
        .get_raw_message(seq)
        .await
        .unwrap()
        .subject
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mapped_publish_is_stored_under_its_destination() {
    let d = Daemon::builder().nats(MAPPINGS).start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let client = d.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let mut sub = subscribe_synced(&client, "market.binance.>").await;

    let (status, v) = d
        .publish("legacy.BTCUSDT.binance", json!({"price": "50000.00"}))
        .await;
    assert_eq!(status, 200, "{v}");
    // The daemon knew the stream that would store it, so it waited for the
    // stream's ack instead of answering a fire-and-forget publish.
    assert_eq!(
        (&v["persisted"], &v["stream"]),
        (&json!(true), &json!("MARKET_DATA")),
        "{v}"
    );
    let seq = v["seq"].as_u64().unwrap();
    assert_eq!(subject_of(&js, seq).await, "market.binance.BTCUSDT.trade");
    let live = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut sub))
        .await
        .expect("a subscriber of the destination gets the message")
        .unwrap();
    assert_eq!(live.subject.as_str(), "market.binance.BTCUSDT.trade");
    assert_eq!(live.payload.as_ref(), br#"{"price":"50000.00"}"#);

    // Weighted: every message lands on one of the two destinations, and
    // both get some (each of 60 messages is a coin flip).
    let mut seen = BTreeMap::new();
    for i in 0..60 {
        let (status, v) = d.publish("split.x", json!({ "i": i })).await;
        assert_eq!((status, &v["persisted"]), (200, &json!(true)), "{v}");
        let subject = subject_of(&js, v["seq"].as_u64().unwrap()).await;
        *seen.entry(subject).or_insert(0) += 1;
    }
    let subjects: Vec<&String> = seen.keys().collect();
    assert_eq!(subjects, ["market.a.x", "market.b.x"], "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_adds_a_mapping_without_restarting_nats_server() {
    let d = Daemon::builder().nats("  max_connections: 100\n").start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let pid = d.child_pid().unwrap();
    let js = async_nats::jetstream::new(d.client().await);

    // No mapping yet: no stream captures legacy.*, a plain core publish.
    let (status, v) = d.publish("legacy.ETHUSDT.okx", json!(1)).await;
    assert_eq!((status, &v["persisted"]), (200, &json!(false)), "{v}");

    d.edit_config(|c| c.replace("  max_connections: 100\n", MAPPINGS));
    d.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(10), "the reload to finish", || async {
        d.log().contains("reload done").then_some(())
    })
    .await;
    assert_eq!(d.child_pid(), Some(pid), "mappings are hot in nats-server");

    let (status, v) = d.publish("legacy.ETHUSDT.okx", json!(2)).await;
    assert_eq!((status, &v["persisted"]), (200, &json!(true)), "{v}");
    assert_eq!(
        subject_of(&js, v["seq"].as_u64().unwrap()).await,
        "market.okx.ETHUSDT.trade"
    );
}
