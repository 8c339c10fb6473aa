//! SSE delivery of a core subject next to direct core subscribers, under a
//! direct publisher at a fixed rate; and the event stream reader the
//! latency loads share.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{paced_publish, run_of, SSE_SUBJECT};
use crate::support::{get, Daemon, Samples};
use crate::{with_cpu, Run, TRADE};

/// Messages a second the publisher sends, whatever the client count: the
/// rate of a busy market feed on one subject. With 50 clients that is 50
/// times as many deliveries.
pub const RATE: f64 = 10_000.0;

pub struct Sses {
    /// Per client count: direct, then SSE.
    pub runs: Vec<Run>,
    counts: Vec<usize>,
    /// The daemon's sse_dropped during each SSE load.
    pub dropped: Vec<u64>,
    /// What the `dropped` events the clients got during each SSE load
    /// count, summed over the clients.
    pub announced: Vec<u64>,
    pub rate: f64,
}

impl Sses {
    /// (clients, SSE run, direct run, sse_dropped, announced).
    pub fn pairs(&self) -> impl Iterator<Item = (usize, &Run, &Run, u64, u64)> {
        self.counts
            .iter()
            .zip(self.runs.chunks(2))
            .zip(self.dropped.iter().zip(&self.announced))
            .map(|((&n, r), (&dr, &an))| (n, &r[1], &r[0], dr, an))
    }
}

pub async fn all(d: &Daemon, url: &str, pids: (u32, u32), secs: f64, warm: f64) -> Sses {
    let publisher = async_nats::connect(url).await.expect("connect");
    let mut runs = Vec::new();
    let mut dropped = Vec::new();
    let mut announced = Vec::new();
    let counts = vec![1, 50];
    for &n in &counts {
        direct_load(url, &publisher, n, warm).await;
        runs.push(with_cpu(pids, direct_load(url, &publisher, n, secs)).await);
        sse_load(d.http, &publisher, n, warm).await;
        let before = sse_dropped(d.http).await;
        let told = AtomicU64::new(0);
        let run = with_cpu(pids, async {
            let (run, t) = sse_load(d.http, &publisher, n, secs).await;
            told.store(t, Relaxed);
            run
        })
        .await;
        runs.push(run);
        dropped.push(sse_dropped(d.http).await - before);
        announced.push(told.into_inner());
    }
    Sses {
        runs,
        counts,
        dropped,
        announced,
        rate: RATE,
    }
}

/// The daemon's sse_dropped_total, from /metrics.
async fn sse_dropped(port: u16) -> u64 {
    let (status, body) = get(port, "/metrics").await.expect("GET /metrics");
    assert_eq!(status, 200, "GET /metrics");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("marketprism_broker_sse_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("sse_dropped_total in /metrics")
}

/// One event of a stream: its name (`message` when it has none) and data.
pub struct Event {
    pub name: String,
    pub data: Bytes,
}

/// An open GET /api/v1/subscribe.
pub struct Events {
    body: Incoming,
    buf: BytesMut,
}

impl Events {
    /// Opens the stream and waits for its `subscribed` event: from then on
    /// nothing published is missed.
    pub async fn open(port: u16, subject: &str) -> Events {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the HTTP API");
        tcp.set_nodelay(true).unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(format!("/api/v1/subscribe?subject={subject}"))
            .header("host", "127.0.0.1")
            .header("accept", "text/event-stream")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender
            .send_request(req)
            .await
            .expect("GET /api/v1/subscribe");
        assert_eq!(resp.status(), 200, "GET /api/v1/subscribe");
        let mut ev = Events {
            body: resp.into_body(),
            buf: BytesMut::new(),
        };
        let first = ev.next().await.expect("the subscribed event");
        assert_eq!(first.name, "subscribed");
        ev
    }

    /// The next event (comments skipped); None when the stream ends.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.parse() {
                return Some(e);
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// The first complete event in the buffer, if any.
    fn parse(&mut self) -> Option<Event> {
        loop {
            let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
            let block = self.buf.split_to(end + 2).freeze();
            let mut name = None;
            let mut data = None;
            for line in block[..end].split(|&b| b == b'\n') {
                if let Some(v) = line.strip_prefix(b"event: ") {
                    name = Some(String::from_utf8_lossy(v).into_owned());
                } else if line.starts_with(b"data: ") {
                    let at = line.as_ptr() as usize - block.as_ptr() as usize + 6;
                    data = Some(block.slice(at..at + line.len() - 6));
                }
            }
            if name.is_none() && data.is_none() {
                continue; // a comment (heartbeat)
            }
            return Some(Event {
                name: name.unwrap_or_else(|| "message".into()),
                data: data.unwrap_or_default(),
            });
        }
    }
}

/// Waits until `count` has not moved for 200 ms (the last deliveries are
/// in), at most 5 s; returns when it last moved.
async fn drained(count: &AtomicU64, since: Instant) -> Instant {
    let mut last = (count.load(Relaxed), Instant::now().max(since));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = count.load(Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= Duration::from_millis(200) || Instant::now() > deadline {
            return last.1;
        }
    }
}

/// The publisher at RATE for `secs` while `received` counts deliveries;
/// the rate is deliveries over the time from the first publish to the
/// last delivery; errors are the deliveries that never came.
async fn publish_and_count(
    publisher: &async_nats::Client,
    clients: usize,
    secs: f64,
    received: &AtomicU64,
    label: String,
) -> Run {
    let payload = Bytes::from_static(TRADE.as_bytes());
    let t0 = Instant::now();
    let (sent, _) = paced_publish(publisher, SSE_SUBJECT, RATE, secs, |_| payload.clone()).await;
    let last = drained(received, t0).await;
    let got = received.load(Relaxed);
    let expected = sent * clients as u64;
    run_of(
        label,
        got,
        expected.saturating_sub(got),
        (last - t0).as_secs_f64().max(secs),
        Samples::default(),
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `clients` async-nats connections, each subscribed to the subject.
async fn direct_load(url: &str, publisher: &async_nats::Client, clients: usize, secs: f64) -> Run {
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = async_nats::connect(url).await.expect("connect");
        let mut sub = client.subscribe(SSE_SUBJECT).await.expect("subscribe");
        client.flush().await.expect("flush");
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            while sub.next().await.is_some() {
                received.fetch_add(1, Relaxed);
            }
            drop(client);
        }));
    }
    let label = format!(
        "direct {clients} subscriber{}, {RATE:.0}/s",
        plural(clients)
    );
    let run = publish_and_count(publisher, clients, secs, &received, label).await;
    for t in tasks {
        t.abort();
    }
    run
}

/// The payload of the message that ends an SSE load: no trade has it.
const END: &[u8] = b"{\"end\":true}";

/// `clients` GET /api/v1/subscribe streams, each counting message events
/// and what its `dropped` events announce; the run and the announced sum.
/// After the run one more message (END) goes out: each client's last
/// losses are announced before it (or they would wait for a heartbeat).
async fn sse_load(
    port: u16,
    publisher: &async_nats::Client,
    clients: usize,
    secs: f64,
) -> (Run, u64) {
    let received = Arc::new(AtomicU64::new(0));
    let announced = Arc::new(AtomicU64::new(0));
    let ending = Arc::new(AtomicBool::new(false));
    let ended = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut events = Events::open(port, SSE_SUBJECT).await;
        let (received, announced) = (received.clone(), announced.clone());
        let (ending, ended) = (ending.clone(), ended.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(e) = events.next().await {
                match e.name.as_str() {
                    "message" => {
                        // Only looked at once the run is over.
                        if ending.load(Relaxed) && e.data.windows(END.len()).any(|w| w == END) {
                            ended.fetch_add(1, Relaxed);
                            break;
                        }
                        received.fetch_add(1, Relaxed);
                    }
                    "dropped" => {
                        let v: serde_json::Value =
                            serde_json::from_slice(&e.data).expect("a dropped event's JSON");
                        announced.fetch_add(v["dropped"].as_u64().expect("its count"), Relaxed);
                    }
                    _ => {}
                }
            }
        }));
    }
    let label = format!("SSE {clients} client{}, {RATE:.0}/s", plural(clients));
    let run = publish_and_count(publisher, clients, secs, &received, label).await;
    ending.store(true, Relaxed);
    publisher
        .publish(SSE_SUBJECT, Bytes::from_static(END))
        .await
        .expect("publish");
    publisher.flush().await.expect("flush");
    let deadline = Instant::now() + Duration::from_secs(5);
    while ended.load(Relaxed) < clients as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in tasks {
        t.abort();
    }
    // The daemon frees a client's slot when it notices the stream closed.
    tokio::time::sleep(Duration::from_millis(50)).await;
    (run, announced.load(Relaxed))
}
