//! Streaming ingest, POST /api/v1/publish/stream, against a real daemon and
//! nats-server: a chunked NDJSON body sent as the test chooses (slowly, in
//! pieces that split lines anywhere, 100k lines, never finished) and the
//! chunked NDJSON answer read as it comes (or not at all).

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use common::*;

const PATH: &str = "/api/v1/publish/stream";

/// A request body fed by the test through a channel: each piece becomes
/// one chunk, sent when the test sends it; dropping the sender ends it.
struct Feed(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Feed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// One open streaming ingest: the body's sender and the answer as it
/// comes.
struct Ingest {
    feed: Option<mpsc::Sender<Bytes>>,
    status: u16,
    content_type: String,
    body: Incoming,
    buf: Vec<u8>,
    _sender: hyper::client::conn::http1::SendRequest<Feed>,
    conn: tokio::task::JoinHandle<()>,
}

impl Ingest {
    async fn open(d: &Daemon) -> Ingest {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", d.http))
            .await
            .unwrap();
        Self::open_on(d, stream, "application/x-ndjson").await
    }

    async fn open_on(d: &Daemon, stream: tokio::net::TcpStream, content_type: &str) -> Ingest {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let (tx, rx) = mpsc::channel(1);
        let req = hyper::Request::post(PATH)
            .header("host", format!("127.0.0.1:{}", d.http))
            .header("content-type", content_type)
            .body(Feed(rx))
            .unwrap();
        // The answer's head comes before any line is sent.
        let resp = tokio::time::timeout(Duration::from_secs(15), sender.send_request(req))
            .await
            .expect("no answer head within 15 s")
            .unwrap();
        Ingest {
            feed: Some(tx),
            status: resp.status().as_u16(),
            content_type: resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default(),
            body: resp.into_body(),
            buf: Vec::new(),
            _sender: sender,
            conn,
        }
    }

    async fn send(&self, piece: impl Into<Bytes>) {
        self.feed
            .as_ref()
            .expect("the body is still open")
            .send(piece.into())
            .await
            .expect("the daemon stopped reading the body");
    }

    /// Ends the body.
    fn finish(&mut self) {
        self.feed = None;
    }

    /// The next answer line; None at the (clean) end of the answer.
    async fn line(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!("not a JSON line: {:?}: {e}", String::from_utf8_lossy(&line))
                }));
            }
            let frame = tokio::time::timeout(Duration::from_secs(30), self.body.frame())
                .await
                .expect("no answer line within 30 s");
            match frame {
                None => {
                    assert!(
                        self.buf.is_empty(),
                        "the answer ended inside a line: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                    return None;
                }
                Some(Err(e)) => panic!("the answer was cut short: {e}"),
                Some(Ok(f)) => self.buf.extend_from_slice(f.data_ref().unwrap()),
            }
        }
    }

    /// Every line until the end of the answer.
    async fn rest(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(v) = self.line().await {
            out.push(v);
        }
        out
    }
}

fn publish_line(subject: &str, message: Value) -> String {
    format!("{}\n", json!({"subject": subject, "message": message}))
}

/// `body` cut into pieces of 1 to 37 bytes (a fixed pseudo-random walk),
/// so lines and even JSON tokens are split everywhere.
fn odd_pieces(body: &[u8]) -> Vec<Bytes> {
    let (mut out, mut at, mut x) = (Vec::new(), 0, 7u32);
    while at < body.len() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (1 + (x >> 16) % 37) as usize;
        let end = (at + n).min(body.len());
        out.push(Bytes::copy_from_slice(&body[at..end]));
        at = end;
    }
    out
}

async fn metrics(d: &Daemon) -> String {
    let (status, _, body) = d
        .request(None, "GET", "/metrics", &[], vec![])
        .await
        .unwrap();
    assert_eq!(status, 200);
    String::from_utf8(body.to_vec()).unwrap()
}

fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

async fn stream_payload(d: &Daemon, stream: &str, seq: u64) -> Value {
    let js = async_nats::jetstream::new(d.client().await);
    let m = js
        .get_stream(stream)
        .await
        .unwrap()
        .get_raw_message(seq)
        .await
        .unwrap_or_else(|e| panic!("{stream} seq {seq}: {e}"));
    serde_json::from_slice(&m.payload)
        .unwrap_or_else(|_| json!(String::from_utf8_lossy(&m.payload)))
}

async fn messages_in(d: &Daemon, stream: &str) -> u64 {
    let (status, v) = d.get(&format!("/api/v1/streams/{stream}")).await;
    assert_eq!(status, 200, "{v}");
    v["messages"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_sent_slowly_in_odd_pieces_is_answered_line_by_line_in_order() {
    let d = Daemon::builder().nats("  max_payload: 4KB\n").start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let before = metrics(&d).await;
    let mut s = Ingest::open(&d).await;
    assert_eq!(
        (s.status, s.content_type.as_str()),
        (200, "application/x-ndjson")
    );

    // The first line's result comes while the body is still open.
    s.send(publish_line(
        "market.binance.BTCUSDT.trade",
        json!({"price": "1"}),
    ))
    .await;
    let first = s.line().await.unwrap();
    assert_eq!(
        first,
        json!({"line": 1, "success": true, "persisted": true, "durable": true,
               "stream": "MARKET_DATA", "seq": 1, "duplicate": false})
    );

    // The rest in odd pieces, a little apart.
    let big = "x".repeat(100 << 10);
    let mut rest = String::new();
    rest.push_str("\r\n"); // 2: blank
    rest.push_str(
        &publish_line("market.okx.BTC-USDT.orderbook", json!("plain é text")).replace('\n', "\r\n"),
    ); // 3
    rest.push_str("not json\n"); // 4
    rest.push_str(&publish_line("test.message", json!("core"))); // 5
    rest.push_str(&publish_line("market.*", json!(1))); // 6
    rest.push_str(&publish_line("market.big.trade", json!(big))); // 7: longer than a publish body
    rest.push_str(&publish_line("market.big.trade", json!("y".repeat(5000)))); // 8: past max_payload
    let dup =
        json!({"subject": "market.binance.ETHUSDT.trade", "message": [1, 2, 3], "msg_id": "m9"});
    rest.push_str(&format!("{dup}\n{dup}\n")); // 9, 10
    rest.push_str(&json!({"subject": "system.health.a", "message": {"ok": true}}).to_string()); // 11, no line break
    for piece in odd_pieces(rest.as_bytes()) {
        // The long line goes faster.
        if piece.len() > 30 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        s.send(piece).await;
    }
    s.finish();
    let lines = s.rest().await;
    let by_line: BTreeMap<u64, &Value> = lines
        .iter()
        .filter_map(|v| Some((v["line"].as_u64()?, v)))
        .collect();
    let numbers: Vec<u64> = lines.iter().filter_map(|v| v["line"].as_u64()).collect();
    assert_eq!(
        numbers,
        vec![3, 4, 5, 6, 7, 8, 9, 10, 11],
        "in order, the blank line skipped: {lines:?}"
    );
    let code = |n: u64| {
        (
            by_line[&n]["status"].as_u64(),
            by_line[&n]["error"]["code"].as_str(),
        )
    };
    assert_eq!(by_line[&3]["seq"], 2);
    assert_eq!(code(4), (Some(400), Some("invalid_json")));
    assert_eq!(
        *by_line[&5],
        json!({"line": 5, "success": true, "persisted": false, "durable": false})
    );
    assert_eq!(code(6), (Some(400), Some("wildcard_subject")));
    assert_eq!(code(7), (Some(413), Some("payload_too_large")));
    assert_eq!(code(8), (Some(413), Some("payload_too_large")));
    assert_eq!(
        (&by_line[&9]["seq"], &by_line[&9]["duplicate"]),
        (&json!(3), &json!(false))
    );
    assert_eq!(
        (&by_line[&10]["seq"], &by_line[&10]["duplicate"]),
        (&json!(3), &json!(true))
    );
    assert_eq!(
        (&by_line[&11]["stream"], &by_line[&11]["durable"]),
        (&json!("SYSTEM_EVENTS"), &json!(true))
    );
    let summary = lines.last().unwrap();
    assert_eq!(
        *summary,
        json!({"summary": true, "success": false, "count": 10, "succeeded": 6, "failed": 4}),
        "the summary counts every line answered"
    );

    // The stream holds what the results say, as sent.
    assert_eq!(
        stream_payload(&d, "MARKET_DATA", 2).await,
        json!("plain é text")
    );
    assert_eq!(stream_payload(&d, "MARKET_DATA", 3).await, json!([1, 2, 3]));
    assert_eq!(messages_in(&d, "MARKET_DATA").await, 3);

    // Counted like other publishes.
    let after = metrics(&d).await;
    let delta = |outcome: &str| {
        let series = format!(
            "marketprism_broker_publishes_total{{endpoint=\"stream\",outcome=\"{outcome}\"}}"
        );
        counter(&after, &series) - counter(&before, &series)
    };
    assert_eq!(
        (
            delta("persisted"),
            delta("core"),
            delta("rejected"),
            delta("failed")
        ),
        (5, 1, 4, 0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100k_line_body_is_all_acknowledged_in_order() {
    let d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    const N: u64 = 100_000;
    let mut s = Ingest::open(&d).await;
    let feed = s.feed.take().unwrap();
    // Sent in 64 KiB pieces that cut lines anywhere, while the answer is
    // read: neither side waits for the other to finish.
    let writer = tokio::spawn(async move {
        let mut body = Vec::new();
        for i in 0..N {
            body.extend_from_slice(
                publish_line("market.bulk.BTCUSDT.trade", json!({"i": i})).as_bytes(),
            );
        }
        for piece in body.chunks(64 << 10) {
            feed.send(Bytes::copy_from_slice(piece)).await.unwrap();
        }
    });
    let mut n = 0;
    while let Some(v) = s.line().await {
        if v["summary"] == true {
            assert_eq!(
                v,
                json!({"summary": true, "success": true, "count": N, "succeeded": N, "failed": 0})
            );
            break;
        }
        n += 1;
        assert_eq!(
            (v["line"].as_u64(), v["seq"].as_u64()),
            (Some(n), Some(n)),
            "{v}"
        );
        assert_eq!(v["durable"], true, "{v}");
    }
    assert_eq!(n, N);
    assert!(s.line().await.is_none(), "nothing after the summary");
    writer.await.unwrap();
    assert_eq!(messages_in(&d, "MARKET_DATA").await, N);
    assert_eq!(
        stream_payload(&d, "MARKET_DATA", N).await,
        json!({"i": N - 1})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_midway_loses_nothing_it_was_told_is_stored() {
    let d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let mut s = Ingest::open(&d).await;
    let feed = s.feed.take().unwrap();
    let writer = tokio::spawn(async move {
        for i in 0..50_000u64 {
            let line = publish_line("market.cut.BTCUSDT.trade", json!({"i": i}));
            if feed.send(Bytes::from(line)).await.is_err() {
                break;
            }
        }
    });
    // Read results until 2000 are in, then vanish: the connection drops
    // with lines in flight and more in the body.
    let mut acked = Vec::new();
    while acked.len() < 2000 {
        let v = s.line().await.expect("results before the disconnect");
        assert_eq!(v["success"], true, "{v}");
        acked.push((v["line"].as_u64().unwrap(), v["seq"].as_u64().unwrap()));
    }
    s.conn.abort();
    drop(s);
    writer.abort();

    // Every acknowledged line is in the stream, under its sequence.
    for &(line, seq) in &acked {
        assert_eq!(
            stream_payload(&d, "MARKET_DATA", seq).await,
            json!({"i": line - 1}),
            "line {line}, acked as seq {seq}"
        );
    }
    assert!(messages_in(&d, "MARKET_DATA").await >= acked.len() as u64);

    // The daemon is fine: healthy, and the next stream works.
    d.wait_health(200, Duration::from_secs(10)).await;
    let mut again = Ingest::open(&d).await;
    again
        .send(publish_line("market.cut.BTCUSDT.trade", json!("after")))
        .await;
    again.finish();
    let lines = again.rest().await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["success"], true);
    assert_eq!(lines[1]["summary"], true);
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

/// Lines a stalled client offers: 2M (about 120 MB).
const OFFERED: u64 = 2_000_000;

/// A client that offers [`OFFERED`] lines and never reads an answer line,
/// with small socket buffers on its side (what the kernel holds for it is
/// small next to what it offers); its count of bytes taken, and whether
/// all were.
async fn stalled_client(d: &Daemon) -> (Ingest, Arc<AtomicU64>, Arc<AtomicBool>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    let stream = socket
        .connect(([127, 0, 0, 1], d.http).into())
        .await
        .unwrap();
    let mut s = Ingest::open_on(d, stream, "application/x-ndjson").await;
    assert_eq!(s.status, 200);
    let feed = s.feed.take().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (sent2, done2) = (sent.clone(), done.clone());
    tokio::spawn(async move {
        let line = publish_line("market.stall.BTCUSDT.trade", json!({"price": "50000.00"}));
        let chunk = Bytes::from(line.repeat(100));
        for _ in 0..OFFERED / 100 {
            if feed.send(chunk.clone()).await.is_err() {
                return;
            }
            sent2.fetch_add(chunk.len() as u64, Relaxed);
        }
        done2.store(true, Relaxed);
    });
    (s, sent, done)
}

/// Clients that stop reading their answers: each one's body stops being
/// read once its results fill the answer's path and the window (the
/// daemon does not take, or publish, all it is offered), the daemon keeps
/// serving others (eight stalled windows would hold more acks than the
/// NATS client allows in flight, 5000, if their acks were left waiting:
/// they must not starve other publishes),
/// and every line they got stored is counted.
#[tokio::test(flavor = "multi_thread")]
async fn clients_that_stop_reading_the_answer_stop_the_reading_of_their_bodies() {
    // Lazy durability, so the daemon could take lines fast if it did not
    // hold back; the default header_read_timeout (10 s) before it gives up
    // on a client.
    let d = Daemon::builder().nats("  durability: lazy\n").start();
    d.wait_healthy(Duration::from_secs(20)).await;
    const CLIENTS: u64 = 8;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(stalled_client(&d).await);
    }
    let total = || clients.iter().map(|c| c.1.load(Relaxed)).sum::<u64>();
    // The writers stall: nothing more is taken for 3 s.
    let t = Instant::now();
    let mut last = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(
            clients.iter().all(|c| !c.2.load(Relaxed)),
            "the daemon read all {OFFERED} lines of a client that reads nothing"
        );
        let now = total();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the writers never stalled"
        );
    }
    // Stalled, not dead: the daemon serves others meanwhile, at once.
    let asked = Instant::now();
    let (status, v) = d.publish("market.other.BTCUSDT.trade", json!(1)).await;
    eprintln!("a publish while they stall took {:?}", asked.elapsed());
    assert_eq!(status, 200, "{v}");
    d.wait_health(200, Duration::from_secs(5)).await;

    let stored = messages_in(&d, "MARKET_DATA").await - 1;
    eprintln!(
        "{CLIENTS} clients sent {} bytes before stalling; the stream holds {stored} of their lines",
        total()
    );
    // What each answer's path holds (the daemon's buffers and the kernel's
    // socket buffers, about 3 MB of results) plus the window: tens of
    // thousands a client, not the millions offered.
    assert!(
        stored < CLIENTS * 100_000,
        "the daemon published {stored} of {} lines for clients that read nothing",
        CLIENTS * OFFERED
    );
    assert!(
        total() < CLIENTS * (60 << 20),
        "{} bytes were taken",
        total()
    );
    // Once the daemon gives up on the clients (no results taken for
    // header_read_timeout), the lines they had in flight are counted too.
    eventually(
        Duration::from_secs(20),
        "every stored line counted",
        || async {
            let published = d.get("/api/v1/status").await.1["message_stats"]["published"].as_u64();
            (published == Some(stored + 1)).then_some(())
        },
    )
    .await;
    for (s, _, _) in clients {
        s.conn.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_body_ends_the_stream_with_a_summary_that_says_so() {
    let d = Daemon::builder()
        .top("api:\n  header_read_timeout: 1s\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let mut s = Ingest::open(&d).await;
    s.send(format!(
        "{}{}{{\"subject\": \"market.idle",
        publish_line("market.idle.a", json!(1)),
        publish_line("test.message", json!(2))
    ))
    .await;
    // Nothing more is sent, and the body is not ended.
    let lines = s.rest().await;
    let numbers: Vec<&Value> = lines.iter().map(|v| &v["line"]).collect();
    assert_eq!(
        numbers,
        vec![&json!(1), &json!(2), &json!(3), &Value::Null],
        "{lines:?}"
    );
    assert_eq!(
        (&lines[0]["success"], &lines[1]["success"]),
        (&json!(true), &json!(true))
    );
    assert_eq!(
        (&lines[2]["status"], &lines[2]["error"]["code"]),
        (&json!(408), &json!("request_timeout")),
        "the unfinished line is answered"
    );
    let summary = &lines[3];
    assert_eq!(
        (
            &summary["summary"],
            &summary["success"],
            &summary["count"],
            &summary["succeeded"],
            &summary["failed"]
        ),
        (&json!(true), &json!(false), &json!(3), &json!(2), &json!(1))
    );
    assert_eq!(summary["error"]["code"], "request_timeout", "{summary}");
    assert_eq!(messages_in(&d, "MARKET_DATA").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn what_is_not_a_stream_of_publishes_is_refused_as_a_whole() {
    let d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let (status, v) = d
        .post_raw(
            PATH,
            "application/json",
            publish_line("market.a.b", json!(1)),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (415, Some("unsupported_media_type")),
        "{v}"
    );
    let (status, _, body) = d.request(None, "GET", PATH, &[], vec![]).await.unwrap();
    assert_eq!(status, 405, "{body:?}");
    // An empty body: nothing to answer but the summary.
    let mut s = Ingest::open(&d).await;
    s.send("\n\r\n").await;
    s.finish();
    assert_eq!(
        s.rest().await,
        vec![json!({"summary": true, "success": true, "count": 0, "succeeded": 0, "failed": 0})]
    );
    assert_eq!(messages_in(&d, "MARKET_DATA").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_daemon_ends_the_stream_with_a_summary_that_says_so() {
    let mut d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let mut s = Ingest::open(&d).await;
    for i in 0..3 {
        s.send(publish_line("market.stop.BTCUSDT.trade", json!(i)))
            .await;
    }
    for i in 1..=3 {
        let v = s.line().await.unwrap();
        assert_eq!(
            (v["line"].as_u64(), &v["success"]),
            (Some(i), &json!(true)),
            "{v}"
        );
    }
    // The body stays open; the daemon is told to stop.
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let rest = s.rest().await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    let summary = &rest[0];
    assert_eq!(
        (
            &summary["summary"],
            &summary["success"],
            &summary["count"],
            &summary["succeeded"]
        ),
        (&json!(true), &json!(false), &json!(3), &json!(3)),
        "{summary}"
    );
    assert_eq!(summary["error"]["code"], "nats_unavailable", "{summary}");
    assert!(
        summary["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stopping"),
        "{summary}"
    );
    d.expect_exit(0, Duration::from_secs(20));
}
