//! Latency at light load: a direct publisher at 200 messages a second,
//! each payload carrying its send time, received by one client; direct and
//! through the daemon one after the other.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;

use super::fetch::{fetch_and_ack_with, paths};
use super::sse::Events;
use super::{consumer_config, paced_publish, run_of, LAT_PULL_SUBJECT, LAT_SSE_SUBJECT, STREAM};
use crate::support::{connect, Daemon, Samples};
use crate::Run;

/// Light load.
const RATE: f64 = 200.0;

pub struct Latencies {
    /// publish to a direct core subscriber, and to an SSE client.
    pub sub: Run,
    pub sse: Run,
    /// publish (to the stream) to a direct long-polling pull, and to a
    /// long-polling HTTP fetch.
    pub pull: Run,
    pub fetch: Run,
}

pub async fn all(d: &Daemon, js: &jetstream::Context, url: &str, secs: f64) -> Latencies {
    let publisher = async_nats::connect(url).await.expect("connect");
    let base = Instant::now();
    let sub = direct_sub(url, &publisher, base, secs).await;
    let sse = sse(d.http, &publisher, base, secs).await;
    let pull = direct_pull(js, url, &publisher, base, secs).await;
    let fetch = http_fetch(js, d.http, &publisher, base, secs).await;
    Latencies {
        sub,
        sse,
        pull,
        fetch,
    }
}

/// The payload: the send time in ns since `base`, and a trade.
fn stamped(base: Instant) -> Bytes {
    Bytes::from(format!(
        r#"{{"t":{},"symbol":"BTCUSDT","price":"50000.00","quantity":"0.1"}}"#,
        base.elapsed().as_nanos()
    ))
}

#[derive(Deserialize)]
struct Stamp {
    t: u64,
}

/// An event's or a fetched message's `data`.
#[derive(Deserialize)]
struct Out {
    data: Stamp,
}

fn since(base: Instant, sent_ns: u64) -> Duration {
    base.elapsed().saturating_sub(Duration::from_nanos(sent_ns))
}

/// Publishes at RATE for `secs` while the receiver task collects samples,
/// then lets the last ones arrive.
async fn publish_while(
    publisher: &async_nats::Client,
    subject: &'static str,
    base: Instant,
    secs: f64,
    samples: Arc<Mutex<Samples>>,
    receiver: tokio::task::JoinHandle<()>,
    label: &str,
) -> Run {
    let (sent, took) = paced_publish(publisher, subject, RATE, secs, |_| stamped(base)).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while (samples.lock().unwrap().0.len() as u64) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    receiver.abort();
    let s = std::mem::take(&mut *samples.lock().unwrap());
    let got = s.0.len() as u64;
    run_of(
        format!("latency: {label}, {RATE:.0}/s"),
        got,
        sent.saturating_sub(got),
        took,
        s,
    )
}

async fn direct_sub(url: &str, publisher: &async_nats::Client, base: Instant, secs: f64) -> Run {
    let client = async_nats::connect(url).await.expect("connect");
    let mut sub = client.subscribe(LAT_SSE_SUBJECT).await.expect("subscribe");
    client.flush().await.expect("flush");
    let samples = Arc::new(Mutex::new(Samples::default()));
    let receiver = {
        let samples = samples.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Ok(s) = serde_json::from_slice::<Stamp>(&m.payload) {
                    samples.lock().unwrap().add(since(base, s.t));
                }
            }
        })
    };
    let label = "direct subscriber";
    publish_while(
        publisher,
        LAT_SSE_SUBJECT,
        base,
        secs,
        samples,
        receiver,
        label,
    )
    .await
}

async fn sse(port: u16, publisher: &async_nats::Client, base: Instant, secs: f64) -> Run {
    let mut events = Events::open(port, LAT_SSE_SUBJECT).await;
    let samples = Arc::new(Mutex::new(Samples::default()));
    let receiver = {
        let samples = samples.clone();
        tokio::spawn(async move {
            while let Some(e) = events.next().await {
                if e.name != "message" {
                    continue;
                }
                if let Ok(o) = serde_json::from_slice::<Out>(&e.data) {
                    samples.lock().unwrap().add(since(base, o.data.t));
                }
            }
        })
    };
    let label = "SSE client";
    publish_while(
        publisher,
        LAT_SSE_SUBJECT,
        base,
        secs,
        samples,
        receiver,
        label,
    )
    .await
}

/// A consumer of the latency subject, new messages only.
async fn new_consumer(js: &jetstream::Context, name: &str) -> jetstream::consumer::PullConsumer {
    let stream = js.get_stream(STREAM).await.expect("the stream");
    let _ = stream.delete_consumer(name).await;
    stream
        .create_consumer(consumer_config(name, LAT_PULL_SUBJECT, DeliverPolicy::New))
        .await
        .expect("create the consumer")
}

/// Long-polling pulls (batch 100, 1 s expiry) on a connection of its own,
/// each message acked.
async fn direct_pull(
    js: &jetstream::Context,
    url: &str,
    publisher: &async_nats::Client,
    base: Instant,
    secs: f64,
) -> Run {
    new_consumer(js, "latency-direct").await;
    let client = async_nats::connect(url).await.expect("connect");
    let consumer: jetstream::consumer::PullConsumer = jetstream::new(client.clone())
        .get_stream(STREAM)
        .await
        .expect("the stream")
        .get_consumer("latency-direct")
        .await
        .expect("the consumer");
    let samples = Arc::new(Mutex::new(Samples::default()));
    let receiver = {
        let samples = samples.clone();
        tokio::spawn(async move {
            loop {
                let Ok(mut msgs) = consumer
                    .fetch()
                    .max_messages(100)
                    .expires(Duration::from_secs(1))
                    .messages()
                    .await
                else {
                    continue;
                };
                while let Some(Ok(m)) = msgs.next().await {
                    if let Ok(s) = serde_json::from_slice::<Stamp>(&m.payload) {
                        samples.lock().unwrap().add(since(base, s.t));
                    }
                    let _ = m.ack().await;
                }
            }
        })
    };
    let label = "direct pull";
    let run = publish_while(
        publisher,
        LAT_PULL_SUBJECT,
        base,
        secs,
        samples,
        receiver,
        label,
    )
    .await;
    drop(client);
    run
}

/// Long-polling HTTP fetches (batch 100, expires_ms 1000); the acks go on a
/// second connection, so the next fetch does not wait for them.
async fn http_fetch(
    js: &jetstream::Context,
    port: u16,
    publisher: &async_nats::Client,
    base: Instant,
    secs: f64,
) -> Run {
    new_consumer(js, "latency-http").await;
    let (fetch_path, ack_path) = paths("latency-http");
    let samples = Arc::new(Mutex::new(Samples::default()));
    let mut fetcher = connect(port).await.expect("connect to the HTTP API");
    let mut acker = connect(port).await.expect("connect to the HTTP API");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let acks = tokio::spawn(async move {
        while let Some(body) = rx.recv().await {
            let _ = super::fetch::post(&mut acker, &ack_path, body).await;
        }
    });
    let receiver = {
        let samples = samples.clone();
        tokio::spawn(async move {
            let body = Bytes::from_static(br#"{"batch":100,"expires_ms":1000}"#);
            loop {
                let got = fetch_and_ack_with(&mut fetcher, &fetch_path, &body, |data| {
                    if let Ok(s) = serde_json::from_slice::<Stamp>(data) {
                        samples.lock().unwrap().add(since(base, s.t));
                    }
                })
                .await;
                match got {
                    Ok(Some(ack)) => {
                        let _ = tx.send(ack);
                    }
                    Ok(None) => {}
                    Err(_) => return,
                }
            }
        })
    };
    let label = "HTTP fetch";
    let run = publish_while(
        publisher,
        LAT_PULL_SUBJECT,
        base,
        secs,
        samples,
        receiver,
        label,
    )
    .await;
    acks.abort();
    run
}
