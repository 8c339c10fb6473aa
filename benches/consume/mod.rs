//! The consume side of the benchmark, in the same run as the publish side
//! (a daemon of its own, started the same way, with a stream for it):
//! 1. fetch+ack: HTTP POST .../consumers/{c}/fetch then one POST .../ack
//!    with every token, at batches of 100 and 1000, from 1 and 4 clients
//!    (keep-alive connections) on one durable pull consumer, next to direct
//!    async-nats pull fetches of the same batches, acking every message,
//!    from as many connections on a consumer of the same settings on the
//!    same stream; and, as the daemon confirms each ack (a request that
//!    nats-server answers once it processed it), direct pulls whose acks
//!    are such requests too, a batch's all at once. The stream is filled
//!    beforehand, directly; each load reads it from the start with a fresh
//!    consumer. Counted: messages acknowledged (HTTP: answered `ok` by the
//!    ack; direct: acks flushed and the consumer's ack pending back to 0
//!    before the clock stops);
//! 2. SSE: GET /api/v1/subscribe of a core subject by 1 and 50 clients,
//!    next to 1 and 50 direct async-nats subscribers (a connection each),
//!    while a direct publisher sends at a fixed rate: messages delivered
//!    per second summed over the clients, and those never delivered, next
//!    to what the clients' `dropped` events announced and the daemon's own
//!    count (`sse_dropped`);
//! 3. latency at light load (200 messages/s, the send time in the
//!    payload): publish to an SSE client next to publish to a direct
//!    subscriber; publish to a long-polling HTTP fetch next to a direct
//!    long-polling pull.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use serde_json::{json, Value};

use crate::support::{Daemon, Spec};
use crate::Run;

mod fetch;
mod latency;
mod sse;

/// The stream the fetch loads read; declared in the daemon's config.
pub const STREAM: &str = "BENCH_CONSUME";
/// What the fetch loads read (the stream is filled with it).
const PULL_SUBJECT: &str = "bench.pull.trade";
/// Publish-to-fetch latency: stored in the same stream.
const LAT_PULL_SUBJECT: &str = "bench.pull.latency";
/// Core subjects, in no stream.
const SSE_SUBJECT: &str = "bench.sse.trade";
const LAT_SSE_SUBJECT: &str = "bench.sse.latency";

/// The daemon's `nats:` keys for this side: its stream, file storage as the
/// seed's MARKET_DATA, no limits (the loads fill it once).
const NATS_EXTRA: &str = "  streams:\n    BENCH_CONSUME:\n      subjects: [\"bench.pull.>\"]\n";

/// What the consume side measured: the loads (for the load table), the
/// ratio lines and the JSON.
pub struct Report {
    pub runs: Vec<Run>,
    pub lines: Vec<(String, String, &'static str, Option<bool>)>,
    pub json: Value,
}

/// The settings every consumer of the fetch loads gets, HTTP and direct
/// alike: explicit acks, enough ack pending for 4 clients' batches of 1000.
fn consumer_config(
    name: &str,
    filter: &str,
    deliver: jetstream::consumer::DeliverPolicy,
) -> pull::Config {
    pull::Config {
        durable_name: Some(name.into()),
        filter_subject: filter.into(),
        deliver_policy: deliver,
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 20_000,
        ..Default::default()
    }
}

/// A Run from a count over a time, with latency samples.
fn run_of(label: String, ok: u64, errors: u64, secs: f64, mut s: crate::support::Samples) -> Run {
    Run {
        label,
        ok,
        errors,
        secs,
        p50_ms: s.pct(0.50),
        p99_ms: s.pct(0.99),
        cpu: None,
    }
}

/// The whole consume side on a daemon of its own.
pub async fn run(base: &Spec, secs: f64) -> Report {
    let spec = Spec {
        nats_server: base.nats_server.clone(),
        workers: base.workers.clone(),
        nats_extra: NATS_EXTRA.into(),
    };
    let (d, _) = Daemon::start(&spec);
    let url = format!("nats://127.0.0.1:{}", d.nats);
    let client = async_nats::connect(&url)
        .await
        .expect("connect to nats-server");
    let js = jetstream::new(client.clone());
    wait_for_stream(&js, &d).await;
    let pids = (d.pid(), d.child_pid().expect("nats-server pid"));
    let warm = secs.min(1.0) / 2.0;

    // 1. fetch+ack.
    let fetches = fetch::all(&d, &js, &url, pids, secs, warm).await;
    // 2. SSE fan-out.
    let sses = sse::all(&d, &url, pids, secs, warm).await;
    // 3. Latency at light load.
    let lat = latency::all(&d, &js, &url, secs).await;
    d.stop();

    let mut lines = Vec::new();
    let mut json_ratios = serde_json::Map::new();
    for t in fetches.loads() {
        let (b, c) = (t.batch, t.clients);
        let clients = format!("{c} client{}", if c == 1 { "" } else { "s" });
        let target = b == 1000;
        // Like for like: acks as a plain ack() on both sides, then acks
        // each confirmed by nats-server on both sides.
        let r = t.http.rate() / t.direct.rate();
        lines.push((
            format!("HTTP fetch+ack {b}, {clients} / direct pull"),
            format!("{r:.2}"),
            if target { ">= 0.50" } else { "" },
            target.then_some(r >= 0.5),
        ));
        let rd = t.http_confirmed.rate() / t.double.rate();
        lines.push((
            format!("HTTP fetch+confirmed ack {b}, {clients} / direct double ack"),
            format!("{rd:.2}"),
            if target { ">= 0.50" } else { "" },
            target.then_some(rd >= 0.5),
        ));
        let rc = t.http_confirmed.rate() / t.direct.rate();
        lines.push((
            format!("HTTP fetch+confirmed ack {b}, {clients} / direct pull"),
            format!("{rc:.2}"),
            "",
            None,
        ));
        json_ratios.insert(format!("fetch{b}_c{c}_direct"), json!(r));
        json_ratios.insert(
            format!("fetch{b}_c{c}_confirmed_direct_double_ack"),
            json!(rd),
        );
        json_ratios.insert(format!("fetch{b}_c{c}_confirmed_direct"), json!(rc));
    }
    for (n, h, direct, dropped, announced) in sses.pairs() {
        let r = h.rate() / direct.rate();
        let target = n == 50;
        lines.push((
            format!(
                "SSE {n} client{} / direct {n} subscriber{}",
                if n == 1 { "" } else { "s" },
                if n == 1 { "" } else { "s" }
            ),
            format!("{r:.2}"),
            if target { ">= 0.50" } else { "" },
            target.then_some(r >= 0.5),
        ));
        // Every message a client did not get is announced to it in a
        // `dropped` event and counted in sse_dropped: the three agree
        // unless the daemon's NATS library dropped some unannounced
        // (sse_lost) or a client's last notice did not come in time.
        lines.push((
            format!(
                "SSE {n} client{}: not delivered / announced / sse_dropped",
                if n == 1 { "" } else { "s" }
            ),
            format!("{}/{announced}/{dropped}", h.errors),
            "",
            None,
        ));
        json_ratios.insert(format!("sse{n}_direct"), json!(r));
    }
    let over = lat.sse.p99_ms - lat.sub.p99_ms;
    lines.push((
        "publish-to-SSE p50 / direct subscriber p50 (ms)".into(),
        format!("{:.2}/{:.2}", lat.sse.p50_ms, lat.sub.p50_ms),
        "",
        None,
    ));
    lines.push((
        "publish-to-SSE p99 over direct subscriber p99 (ms)".into(),
        format!("{over:+.2}"),
        "<= +1.00",
        Some(over <= 1.0),
    ));
    lines.push((
        "publish-to-fetch p50 / direct pull p50 (ms)".into(),
        format!("{:.2}/{:.2}", lat.fetch.p50_ms, lat.pull.p50_ms),
        "",
        None,
    ));
    lines.push((
        "publish-to-fetch p99 / direct pull p99 (ms)".into(),
        format!("{:.2}/{:.2}", lat.fetch.p99_ms, lat.pull.p99_ms),
        "",
        None,
    ));
    let json = json!({
        "fetch": fetches.runs.iter().map(Run::json).collect::<Vec<_>>(),
        "sse": sses.runs.iter().map(Run::json).collect::<Vec<_>>(),
        "sse_rate_per_s": sses.rate,
        "sse_dropped": sses.dropped,
        "sse_announced": sses.announced,
        "latency": [lat.sub.json(), lat.sse.json(), lat.pull.json(), lat.fetch.json()],
        "ratios": json_ratios,
        "sse_p99_over_direct_ms": over,
    });
    let runs = fetches
        .runs
        .into_iter()
        .chain(sses.runs)
        .chain([lat.sub, lat.sse, lat.pull, lat.fetch])
        .collect();
    Report { runs, lines, json }
}

/// The daemon creates its declared stream once nats-server is up; READY=1
/// may come first.
async fn wait_for_stream(js: &jetstream::Context, d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while js.get_stream(STREAM).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not create {STREAM}:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes at `rate` messages a second on `client` for `secs`, each
/// payload made by `payload(n)`; returns how many it sent and for how long.
async fn paced_publish(
    client: &async_nats::Client,
    subject: &'static str,
    rate: f64,
    secs: f64,
    mut payload: impl FnMut(u64) -> bytes::Bytes,
) -> (u64, f64) {
    let t0 = Instant::now();
    let until = Duration::from_secs_f64(secs);
    let mut sent = 0u64;
    loop {
        let elapsed = t0.elapsed();
        if elapsed >= until {
            break;
        }
        let due = (elapsed.as_secs_f64() * rate) as u64;
        while sent < due {
            client
                .publish(subject, payload(sent))
                .await
                .expect("publish");
            sent += 1;
        }
        client.flush().await.expect("flush");
        // The next message is due in 1/rate s; at high rates a tick of
        // 1 ms sends them in small bursts.
        let next = Duration::from_secs_f64((sent + 1) as f64 / rate);
        let wait = next
            .saturating_sub(t0.elapsed())
            .max(Duration::from_micros(50));
        tokio::time::sleep(wait.min(Duration::from_millis(1))).await;
    }
    (sent, t0.elapsed().as_secs_f64())
}
