//! Publishing beyond the seed: headers and msg_id (deduplication) on a
//! single publish, and POST /api/v1/publish/batch (JSON array or NDJSON,
//! answered per entry in order, bounded), against a real nats-server.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn message_stats(d: &Daemon) -> Value {
    d.get("/api/v1/status").await.1["message_stats"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_published_in_order_and_answered_per_entry() {
    let d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let client = d.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let before = message_stats(&d).await;

    let batch = json!([
        {"subject": "market.binance.BTCUSDT.trade", "message": {"price": "1"}},
        {"subject": "market.okx.BTC-USDT.orderbook", "message": {"bids": [[1, 2]]}},
        {"subject": "market.binance.BTCUSDT.trade", "message": "plain text"},
        {"subject": "test.message", "message": "core"},
        {"subject": "bad subject", "message": 1},
        {"subject": "market.binance.ETHUSDT.kline.1m", "message": [1, 2, 3]},
    ]);
    let (status, v) = d.post("/api/v1/publish/batch", batch).await;
    assert_eq!(status, 207, "one entry is bad: a multi-status answer; {v}");
    assert_eq!(
        (&v["success"], &v["count"], &v["succeeded"], &v["failed"]),
        (&json!(false), &json!(6), &json!(5), &json!(1)),
        "{v}"
    );
    let r = v["results"].as_array().unwrap();
    let seqs: Vec<u64> = [0, 1, 2, 5]
        .iter()
        .map(|&i| r[i]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4], "in order, one stream sequence: {v}");
    for i in [0, 1, 2, 5] {
        assert_eq!(r[i]["persisted"], true, "{v}");
        assert_eq!(r[i]["durable"], true, "one sync covers the batch: {v}");
        assert_eq!(r[i]["stream"], "MARKET_DATA", "{v}");
    }
    assert_eq!(
        r[3],
        json!({"success": true, "persisted": false, "durable": false})
    );
    assert_eq!(r[4]["success"], false);
    assert_eq!(r[4]["status"], 400);
    assert_eq!(r[4]["error"]["code"], "invalid_subject");

    // What the stream holds is what was sent, in that order.
    let stream = js.get_stream("MARKET_DATA").await.unwrap();
    let payloads: Vec<String> = futures::future::join_all((1..=4).map(|s| {
        let stream = stream.clone();
        async move {
            String::from_utf8(stream.get_raw_message(s).await.unwrap().payload.to_vec()).unwrap()
        }
    }))
    .await;
    assert_eq!(
        payloads,
        vec![
            r#"{"price": "1"}"#.replace(' ', ""),
            r#"{"bids":[[1,2]]}"#.into(),
            "plain text".into(),
            "[1,2,3]".into()
        ]
    );

    // Counted per entry, like single publishes.
    let after = message_stats(&d).await;
    assert_eq!(
        after["published"].as_u64().unwrap() - before["published"].as_u64().unwrap(),
        5
    );
    assert_eq!(
        after["errors"].as_u64().unwrap() - before["errors"].as_u64().unwrap(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ndjson_batch_of_1000_is_all_acknowledged() {
    let d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let mut body = String::new();
    for i in 0..1000 {
        body.push_str(
            &json!({"subject": format!("system.health.svc-{i}"), "message": {"i": i}}).to_string(),
        );
        body.push_str(if i % 2 == 0 { "\n" } else { "\r\n\n" });
    }
    let (status, v) = d
        .post_raw("/api/v1/publish/batch", "application/x-ndjson", body)
        .await;
    assert_eq!(
        status,
        200,
        "{}",
        &v.to_string()[..300.min(v.to_string().len())]
    );
    assert_eq!(
        (&v["success"], &v["succeeded"]),
        (&json!(true), &json!(1000))
    );
    let seqs: Vec<u64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=1000).collect::<Vec<u64>>());
    let (_, s) = d.get("/api/v1/streams/SYSTEM_EVENTS").await;
    assert_eq!(s["messages"], 1000, "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_past_their_bounds_or_not_batches_are_refused_and_publish_nothing() {
    let d = Daemon::builder()
        .top("api:\n  batch_max_entries: 3\n  batch_max_bytes: 1KB\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let entry = json!({"subject": "market.a.b.trade", "message": 1});
    let path = "/api/v1/publish/batch";

    let four = json!([entry, entry, entry, entry]).to_string();
    let (status, v) = d.post_raw(path, "application/json", four).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (413, &json!("batch_too_large")),
        "{v}"
    );

    let big = json!([{"subject": "market.a.b.trade", "message": "x".repeat(2000)}]).to_string();
    let (status, v) = d.post_raw(path, "application/json", big).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (413, &json!("payload_too_large")),
        "{v}"
    );

    let (status, v) = d
        .post_raw(path, "application/json", entry.to_string())
        .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("not_a_batch")),
        "{v}"
    );
    let (status, v) = d.post_raw(path, "application/json", "[1, 2").await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("not_a_batch")),
        "{v}"
    );
    let (status, v) = d.post_raw(path, "application/json", "[]").await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("empty_batch")),
        "{v}"
    );
    let (status, v) = d.post_raw(path, "application/x-ndjson", "\n\n").await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("empty_batch")),
        "{v}"
    );
    let (status, v) = d.post_raw(path, "text/plain", "[]").await;
    assert_eq!(status, 415, "{v}");
    let (status, _, _) = request(d.http, "GET", path, &[], vec![]).await.unwrap();
    assert_eq!(status, 405);

    // A bad NDJSON line is that entry's error, not the batch's.
    let (status, v) = d
        .post_raw(path, "application/x-ndjson", format!("{entry}\nnot json\n"))
        .await;
    assert_eq!(status, 207, "{v}");
    assert_eq!(v["results"][0]["persisted"], true);
    assert_eq!(v["results"][1]["error"]["code"], "invalid_json");

    let (_, s) = d.get("/api/v1/streams/MARKET_DATA").await;
    assert_eq!(
        s["messages"], 1,
        "only the good NDJSON entry was stored: {s}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn msg_id_deduplicates_a_retried_publish_and_headers_reach_the_stream() {
    let d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let client = d.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let mut live = subscribe_synced(&client, "market.binance.BTCUSDT.trade").await;
    let body = json!({
        "subject": "market.binance.BTCUSDT.trade",
        "message": {"price": "1"},
        "msg_id": "order-42",
        "headers": {"X-Trace": "t1", "X-Tag": ["a", "b"]},
    })
    .to_string();
    let (status, first) = d
        .post_raw("/api/v1/publish", "application/json", body.clone())
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["duplicate"], false);
    let (status, retry) = d
        .post_raw("/api/v1/publish", "application/json", body)
        .await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry["duplicate"], true, "{retry}");
    assert_eq!(retry["seq"], first["seq"], "the retry is the same message");

    let stream = js.get_stream("MARKET_DATA").await.unwrap();
    assert_eq!(stream.cached_info().state.messages, 1);
    let msg = stream.get_raw_message(1).await.unwrap();
    let h = msg.headers;
    assert_eq!(h.get("X-Trace").map(|v| v.as_str()), Some("t1"));
    // Repeated values, as delivered to a subscriber (the client's reader of
    // stored messages keeps only the last of a repeated header).
    use futures::StreamExt;
    let delivered = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .unwrap()
        .unwrap();
    let dh = delivered.headers.unwrap();
    assert_eq!(
        dh.get_all("X-Tag")
            .map(|v| v.as_str().to_string())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(h.get("Nats-Msg-Id").map(|v| v.as_str()), Some("order-42"));

    // A batch deduplicates the same way.
    let batch = json!([
        {"subject": "market.binance.BTCUSDT.trade", "message": 1, "msg_id": "order-42"},
        {"subject": "market.binance.BTCUSDT.trade", "message": 2, "msg_id": "order-43"},
    ]);
    let (status, v) = d.post("/api/v1/publish/batch", batch).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["duplicate"], true, "{v}");
    assert_eq!(v["results"][1]["duplicate"], false, "{v}");

    for bad in [
        json!({"subject": "a.b", "message": 1, "headers": {"bad name": "x"}}),
        json!({"subject": "a.b", "message": 1, "headers": {"X": "a\r\nb"}}),
        json!({"subject": "a.b", "message": 1, "msg_id": ""}),
        json!({"subject": "a.b", "message": 1, "headers": {"X": 5}}),
    ] {
        let (status, v) = d.post("/api/v1/publish", bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {v}");
    }
}
