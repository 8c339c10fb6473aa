//! fetch+ack over HTTP next to direct async-nats pull fetch+ack.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;

use super::{consumer_config, run_of, PULL_SUBJECT, STREAM};
use crate::support::{connect, cpu_secs, Daemon, Samples, Sender};
use crate::{Run, TRADE};

/// How long a fetch may wait for its first message (the stream is full, so
/// it never does).
const EXPIRES: Duration = Duration::from_secs(1);

pub struct Fetches {
    /// Per batch and client count: direct, direct with double acks, HTTP
    /// with `confirm: false`, HTTP with confirmed acks.
    pub runs: Vec<Run>,
    keys: Vec<(usize, usize)>,
}

/// The loads of one batch size and client count.
pub struct Loads<'a> {
    pub batch: usize,
    pub clients: usize,
    /// Acks as a plain `ack()`: `+ACK` published, no answer awaited.
    pub direct: &'a Run,
    /// `confirm: false`: answered once nats-server received the acks.
    pub http: &'a Run,
    /// Acks as requests, each answered once processed.
    pub double: &'a Run,
    /// The daemon's default: each ack confirmed.
    pub http_confirmed: &'a Run,
}

impl Fetches {
    pub fn loads(&self) -> impl Iterator<Item = Loads<'_>> {
        self.keys
            .iter()
            .zip(self.runs.chunks(4))
            .map(|(&(batch, clients), r)| Loads {
                batch,
                clients,
                direct: &r[0],
                double: &r[1],
                http: &r[2],
                http_confirmed: &r[3],
            })
    }
}

/// Fills the stream, then measures each batch and client count, direct
/// first, each on a fresh consumer reading the stream from its start. A
/// load that reads the stream to its end is measured again after the
/// stream got three times as many messages.
pub async fn all(
    d: &Daemon,
    js: &jetstream::Context,
    url: &str,
    pids: (u32, u32),
    secs: f64,
    warm: f64,
) -> Fetches {
    let mut stored = fill(js, 0, 100_000 + (150_000.0 * secs) as u64).await;
    let mut runs = Vec::new();
    let mut keys = Vec::new();
    for batch in [100, 1000] {
        for clients in [1, 4] {
            for side in [
                Side::Direct(Ack::Plain),
                Side::Direct(Ack::Double),
                Side::Http(Ack::Plain),
                Side::Http(Ack::Double),
            ] {
                let name = format!("{}-b{batch}-c{clients}", side.name());
                let l = Load {
                    js,
                    url,
                    http: d.http,
                    batch,
                    clients,
                };
                l.run(side, &format!("warm-{name}"), warm).await;
                let mut tries = 0;
                let run = loop {
                    let cpu0 = cpu_now(pids);
                    let (mut run, dry) = l.run(side, &name, secs).await;
                    run.cpu = Some(cpu_per_100k(pids, cpu0, run.ok));
                    tries += 1;
                    if !dry || tries == 4 {
                        if dry {
                            eprintln!("{}: the stream ran dry, the rate is low", run.label);
                        }
                        break run;
                    }
                    stored = fill(js, stored, stored * 3).await;
                };
                runs.push(run);
            }
            keys.push((batch, clients));
        }
    }
    println!("consume: {STREAM} held {stored} messages for the fetch loads");
    Fetches { runs, keys }
}

/// CPU seconds so far of the daemon and nats-server.
fn cpu_now(pids: (u32, u32)) -> (f64, f64) {
    (cpu_secs(pids.0), cpu_secs(pids.1))
}

/// CPU seconds per 100k messages since `from`.
fn cpu_per_100k(pids: (u32, u32), from: (f64, f64), n: u64) -> (f64, f64) {
    let (d, ns) = cpu_now(pids);
    let per = |s: f64| s / n.max(1) as f64 * 100_000.0;
    (per(d - from.0), per(ns - from.1))
}

/// Who fetches, and how it acks.
#[derive(Clone, Copy)]
enum Side {
    Direct(Ack),
    Http(Ack),
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Direct(Ack::Plain) => "direct",
            Side::Direct(Ack::Double) => "direct-double",
            Side::Http(Ack::Plain) => "http",
            Side::Http(Ack::Double) => "http-confirmed",
        }
    }
}

/// A fetch load's shape.
struct Load<'a> {
    js: &'a jetstream::Context,
    url: &'a str,
    http: u16,
    batch: usize,
    clients: usize,
}

impl Load<'_> {
    /// The load on a fresh consumer `name`: its run, and whether it read
    /// the stream to its end.
    async fn run(&self, side: Side, name: &str, secs: f64) -> (Run, bool) {
        let (js, batch, clients) = (self.js, self.batch, self.clients);
        match side {
            Side::Direct(ack) => direct_load(js, self.url, name, batch, clients, ack, secs).await,
            Side::Http(ack) => http_load(js, self.http, name, batch, clients, ack, secs).await,
        }
    }
}

/// Publishes the trade message until the stream holds `to` messages, 4096
/// acks in flight; returns the count.
async fn fill(js: &jetstream::Context, from: u64, to: u64) -> u64 {
    let payload = Bytes::from_static(TRADE.as_bytes());
    let mut inflight = FuturesUnordered::new();
    type Acked = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>;
    let check = |a: Option<Acked>| {
        a.unwrap().expect("a fill publish acked");
    };
    for _ in from..to {
        if inflight.len() >= 4096 {
            check(inflight.next().await);
        }
        let ack = js
            .publish(PULL_SUBJECT, payload.clone())
            .await
            .expect("publish the fill");
        inflight.push(async move { ack.await });
    }
    while !inflight.is_empty() {
        check(inflight.next().await);
    }
    to
}

/// A fresh consumer `name` reading the whole stream.
async fn fresh_consumer(js: &jetstream::Context, name: &str) {
    let stream = js.get_stream(STREAM).await.expect("the stream");
    let _ = stream.delete_consumer(name).await;
    stream
        .create_consumer(consumer_config(name, PULL_SUBJECT, DeliverPolicy::All))
        .await
        .expect("create the consumer");
}

/// Deletes consumer `name` once its ack pending is back to 0 (every ack
/// sent was processed): whether that happened within 10 s, and whether it
/// had read the stream to its end. Its time counts in the load: a message
/// is consumed when acked.
async fn settle(js: &jetstream::Context, name: &str) -> (bool, bool) {
    let stream = js.get_stream(STREAM).await.expect("the stream");
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer(name).await.expect("the consumer");
    let deadline = Instant::now() + Duration::from_secs(10);
    let settled = loop {
        let info = consumer.info().await.expect("consumer info");
        if info.num_ack_pending == 0 {
            break (true, info.num_pending == 0);
        }
        if Instant::now() > deadline {
            break (false, info.num_pending == 0);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let _ = stream.delete_consumer(name).await;
    settled
}

/// Per client: cycle latencies (fetch to the ack's answer), messages
/// acked, errors.
type ClientResult = (Samples, u64, u64);

/// Runs `clients` tasks for `secs` and merges what they counted, the
/// consumer settled and deleted before the clock stops.
async fn measure(
    js: &jetstream::Context,
    name: &str,
    label: String,
    secs: f64,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<ClientResult>>,
) -> (Run, bool) {
    let (t0, (all, ok, mut errors)) = crate::run_tasks(secs, stop, tasks).await;
    let (settled, dry) = settle(js, name).await;
    if !settled {
        eprintln!("{label}: acks still pending 10 s after the load");
        errors += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    (run_of(label, ok, errors, secs, all), dry)
}

fn label(kind: &str, batch: usize, clients: usize) -> String {
    format!(
        "{kind} {batch}, {clients} client{}",
        if clients == 1 { "" } else { "s" }
    )
}

/// async-nats pull fetches of `batch` (no_wait with an expiry, as the
/// daemon sends them), every message acked (`+ACK` with no reply, or all
/// of a batch at once as requests, `Ack::Double`), from `clients`
/// connections on one consumer.
async fn direct_load(
    js: &jetstream::Context,
    url: &str,
    name: &str,
    batch: usize,
    clients: usize,
    ack: Ack,
    secs: f64,
) -> (Run, bool) {
    fresh_consumer(js, name).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = async_nats::connect(url).await.expect("connect");
        let js = jetstream::new(client.clone());
        let consumer: jetstream::consumer::PullConsumer = js
            .get_stream(STREAM)
            .await
            .expect("the stream")
            .get_consumer(name)
            .await
            .expect("the consumer");
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::default();
            let (mut ok, mut errors) = (0u64, 0u64);
            while !stop.load(Relaxed) {
                let t = Instant::now();
                let mut msgs = match consumer
                    .fetch()
                    .max_messages(batch)
                    .expires(EXPIRES)
                    .messages()
                    .await
                {
                    Ok(m) => m,
                    Err(_) => {
                        errors += 1;
                        continue;
                    }
                };
                let mut n = 0;
                let mut replies = Vec::new();
                while let Some(m) = msgs.next().await {
                    match m {
                        Ok(m) if ack == Ack::Double => replies.extend(m.message.reply),
                        Ok(m) => match m.ack().await {
                            Ok(()) => n += 1,
                            Err(_) => errors += 1,
                        },
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    }
                }
                let mut answers: FuturesUnordered<_> = replies
                    .into_iter()
                    .map(|r| client.request(r, Bytes::new()))
                    .collect();
                while let Some(a) = answers.next().await {
                    match a {
                        Ok(_) => n += 1,
                        Err(_) => errors += 1,
                    }
                }
                ok += n;
                s.add(t.elapsed());
            }
            let _ = client.flush().await;
            (s, ok, errors)
        }));
    }
    let kind = match ack {
        Ack::Plain => "direct pull+ack",
        Ack::Double => "direct pull+double ack",
    };
    measure(js, name, label(kind, batch, clients), secs, stop, tasks).await
}

/// How a client acks: `+ACK` published (HTTP: `confirm: false`, answered
/// once nats-server received them), or sent as a request whose answer says
/// nats-server processed it (HTTP: the default).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ack {
    Plain,
    Double,
}

#[derive(Deserialize)]
struct Fetched<'a> {
    #[serde(borrow)]
    messages: Vec<Token<'a>>,
}

#[derive(Deserialize)]
struct Token<'a> {
    ack_token: &'a str,
}

/// An ack's answer: `processed` (confirmed) or `received` (`confirm: false`).
#[derive(Deserialize)]
struct Acked {
    processed: Option<u64>,
    received: Option<u64>,
}

pub async fn post(
    sender: &mut Sender,
    path: &str,
    body: Bytes,
) -> Result<(u16, Bytes), hyper::Error> {
    let req = hyper::Request::post(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// One HTTP fetch of up to `batch` and one ack of every token it handed
/// out, confirmed or not: (fetched, acknowledged), or None on an error.
pub async fn fetch_and_ack(
    sender: &mut Sender,
    fetch_path: &str,
    ack_path: &str,
    fetch_body: &Bytes,
    confirm: bool,
) -> Result<Option<(u64, u64)>, hyper::Error> {
    let (status, body) = post(sender, fetch_path, fetch_body.clone()).await?;
    if status != 200 {
        return Ok(None);
    }
    let Ok(f) = serde_json::from_slice::<Fetched>(&body) else {
        return Ok(None);
    };
    if f.messages.is_empty() {
        return Ok(Some((0, 0)));
    }
    let tokens: Vec<&str> = f.messages.iter().map(|m| m.ack_token).collect();
    let ack =
        serde_json::to_vec(&serde_json::json!({ "tokens": tokens, "confirm": confirm })).unwrap();
    let (status, body) = post(sender, ack_path, ack.into()).await?;
    let processed = match (status, serde_json::from_slice::<Acked>(&body)) {
        (
            200 | 207,
            Ok(Acked {
                processed: Some(n), ..
            }),
        ) if confirm => n,
        (
            202,
            Ok(Acked {
                received: Some(n), ..
            }),
        ) if !confirm => n,
        _ => return Ok(None),
    };
    Ok(Some((tokens.len() as u64, processed)))
}

#[derive(Deserialize)]
struct FetchedData<'a> {
    #[serde(borrow)]
    messages: Vec<WithData<'a>>,
}

#[derive(Deserialize)]
struct WithData<'a> {
    ack_token: &'a str,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

/// One HTTP fetch; `on_data` sees each message's `data` as it comes.
/// Returns the body of the ack of all its tokens, None when it brought
/// nothing (or failed).
pub async fn fetch_and_ack_with(
    sender: &mut Sender,
    fetch_path: &str,
    fetch_body: &Bytes,
    mut on_data: impl FnMut(&[u8]),
) -> Result<Option<Bytes>, hyper::Error> {
    let (status, body) = post(sender, fetch_path, fetch_body.clone()).await?;
    if status != 200 {
        return Ok(None);
    }
    let Ok(f) = serde_json::from_slice::<FetchedData>(&body) else {
        return Ok(None);
    };
    for m in &f.messages {
        on_data(m.data.get().as_bytes());
    }
    if f.messages.is_empty() {
        return Ok(None);
    }
    let tokens: Vec<&str> = f.messages.iter().map(|m| m.ack_token).collect();
    Ok(Some(
        serde_json::to_vec(&serde_json::json!({ "tokens": tokens }))
            .unwrap()
            .into(),
    ))
}

pub fn paths(consumer: &str) -> (String, String) {
    let base = format!("/api/v1/streams/{STREAM}/consumers/{consumer}");
    (format!("{base}/fetch"), format!("{base}/ack"))
}

/// POST .../fetch of `batch` then POST .../ack of all its tokens
/// (`confirm: false` for `Ack::Plain`), one after the other on each of
/// `clients` keep-alive connections, on one consumer.
async fn http_load(
    js: &jetstream::Context,
    port: u16,
    name: &str,
    batch: usize,
    clients: usize,
    ack: Ack,
    secs: f64,
) -> (Run, bool) {
    let confirm = ack == Ack::Double;
    fresh_consumer(js, name).await;
    let (fetch_path, ack_path) = paths(name);
    let fetch_body = Bytes::from(format!(
        r#"{{"batch":{batch},"expires_ms":{}}}"#,
        EXPIRES.as_millis()
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (fetch_path, ack_path, fetch_body) =
            (fetch_path.clone(), ack_path.clone(), fetch_body.clone());
        let stop = stop.clone();
        let mut sender = connect(port).await.expect("connect to the HTTP API");
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::default();
            let (mut ok, mut errors) = (0u64, 0u64);
            while !stop.load(Relaxed) {
                let t = Instant::now();
                match fetch_and_ack(&mut sender, &fetch_path, &ack_path, &fetch_body, confirm).await
                {
                    Ok(Some((fetched, acked))) => {
                        ok += acked;
                        errors += fetched - acked;
                        s.add(t.elapsed());
                    }
                    Ok(None) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        sender = connect(port).await.expect("reconnect to the HTTP API");
                    }
                }
            }
            (s, ok, errors)
        }));
    }
    measure(
        js,
        name,
        label(
            if confirm {
                "HTTP fetch+confirmed ack"
            } else {
                "HTTP fetch+ack"
            },
            batch,
            clients,
        ),
        secs,
        stop,
        tasks,
    )
    .await
}
