//! The seed's clients keep working unchanged against the daemon's NATS.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn the_seeds_nats_py_producer_and_durable_consumer_work() {
    let d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    // Two messages through the HTTP API first: the Python consumer must
    // see them too, in the same stream.
    for i in 0..2 {
        let (status, resp) = d
            .publish("market.okx.BTC-USDT.orderbook", json!({"http": i}))
            .await;
        assert_eq!(status, 200, "{resp}");
    }
    let v = python_client("seed_clients.py", &[&d.nats_url(), "5", "2"]).await;
    assert_eq!(v["acked_seqs"], json!([3, 4, 5, 6, 7]));
    let received = v["received"].as_array().unwrap();
    assert_eq!(received.len(), 7);
    assert_eq!(
        received[0],
        json!(["market.okx.BTC-USDT.orderbook", "{\"http\":0}"])
    );
    assert_eq!(received[2][0], "market.binance.BTCUSDT.trade");
    assert_eq!(v["ack_pending"], 0);
    assert_eq!(v["pending"], 0);
    // The daemon reports the consumer the client created.
    let (_, md) = d.get("/api/v1/streams/MARKET_DATA").await;
    assert_eq!(md["consumer_count"], 1);
    assert_eq!(md["messages"], 7);
}

fn node() -> PathBuf {
    std::env::var_os("MPB_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("node"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seeds_node_producer_and_durable_consumer_work() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/node");
    assert!(
        std::path::Path::new(dir).join("node_modules/nats").exists(),
        "{dir}/node_modules/nats is missing: run scripts/test (it runs npm ci there)"
    );
    let d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let (status, resp) = d
        .publish("market.deribit.BTC-PERPETUAL.ticker", json!({"http": true}))
        .await;
    assert_eq!(status, 200, "{resp}");
    let out = tokio::process::Command::new(node())
        .arg("seed_client.js")
        .arg(d.nats_url())
        .arg("4")
        .arg("1")
        .current_dir(dir)
        .output()
        .await
        .unwrap();
    out.expect_code_for(0, "node client");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["acked_seqs"], json!([2, 3, 4, 5]));
    let received = v["received"].as_array().unwrap();
    assert_eq!(received.len(), 5);
    assert_eq!(
        received[0],
        json!(["market.deribit.BTC-PERPETUAL.ticker", "{\"http\":true}"])
    );
    assert_eq!(received[1][0], "market.binance.ETHUSDT.trade");
    assert_eq!(
        (v["ack_pending"].as_u64(), v["pending"].as_u64()),
        (Some(0), Some(0))
    );
}
