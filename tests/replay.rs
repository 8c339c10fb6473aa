//! Reading a stream without a consumer of one's own: replay in pages from a
//! sequence, a time, the last N or the last per subject; the last message
//! of a subject; a message by sequence; the latest value of every subject
//! matching a wildcard. Against real nats-servers (Debian's 2.9.10 or
//! $MPB_NATS_SERVER, and a current one), through the real daemon.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const STREAM: &str = r#"  streams:
    MARKET_DATA:
      subjects: ["market.>"]
      max_age: 3600
    OTHER:
      subjects: ["other.>"]
"#;

const S: &str = "/api/v1/streams/MARKET_DATA";

async fn daemon_on(bin: PathBuf) -> Daemon {
    let d = Daemon::builder()
        .bin(bin)
        .nats(STREAM)
        .top("api:\n  fetch_max_batch: 50\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    d
}

async fn publish(d: &Daemon, subject: &str, message: Value) -> u64 {
    let (status, v) = d.publish(subject, message).await;
    assert_eq!(status, 200, "{v}");
    v["seq"].as_u64().unwrap()
}

/// GET that must answer 200; also checks that no replay consumer is left
/// on the stream once the answer is there.
async fn ok(d: &Daemon, path: &str) -> Value {
    let (status, v) = d.get(path).await;
    assert_eq!(status, 200, "GET {path}: {v}");
    no_consumers_left(d).await;
    v
}

/// The stream's consumer count, right now (no waiting: a replay deletes
/// its consumer before it answers).
async fn no_consumers_left(d: &Daemon) {
    for s in ["MARKET_DATA", "OTHER"] {
        let (status, v) = d.get(&format!("/api/v1/streams/{s}")).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["consumer_count"], 0,
            "a replay consumer was left on {s}: {v}"
        );
    }
}

/// A 4xx JSON error with this status and code.
async fn refused(d: &Daemon, path: &str, status: u16, code: &str) -> String {
    let (got, v) = d.get(path).await;
    assert_eq!(got, status, "GET {path}: {v}");
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["error"]["code"], code, "GET {path}: {v}");
    v["error"]["message"].as_str().unwrap().to_string()
}

fn seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["stream_seq"].as_u64().unwrap())
        .collect()
}

/// Follows `next_cursor` from `first` until a page says the end was
/// reached; returns every page.
async fn all_pages(d: &Daemon, first: &str, limit: u32) -> Vec<Value> {
    let mut pages = vec![ok(d, &format!("{first}&limit={limit}")).await];
    while pages.last().unwrap()["end_reached"] == false {
        assert!(pages.len() < 100, "no end: {pages:?}");
        let cursor = pages.last().unwrap()["next_cursor"]
            .as_str()
            .unwrap()
            .to_string();
        let page = ok(d, &format!("{S}/replay?cursor={cursor}&limit={limit}")).await;
        pages.push(page);
    }
    for p in &pages {
        assert_eq!(p["count"], p["messages"].as_array().unwrap().len());
        assert!(p["count"].as_u64().unwrap() <= limit as u64, "{p}");
    }
    pages
}

fn concat(pages: &[Value]) -> Vec<u64> {
    pages.iter().flat_map(seqs).collect()
}

/// Three ticker subjects and a trade subject, interleaved: seq i (from 1)
/// goes to SUBJECTS[(i-1) % 4] with {"i": i}.
const SUBJECTS: [&str; 4] = [
    "market.ticker.btc",
    "market.trade.btc",
    "market.ticker.eth",
    "market.ticker.sol",
];

async fn fill(d: &Daemon, n: u64) {
    for i in 1..=n {
        let seq = publish(d, SUBJECTS[((i - 1) % 4) as usize], json!({"i": i})).await;
        assert_eq!(seq, i);
    }
}

async fn pages_from_a_sequence_and_a_filter_have_no_gap_and_no_duplicate(bin: PathBuf) {
    let d = daemon_on(bin).await;
    fill(&d, 30).await;

    // The whole stream in pages of 7: 7+7+7+7+2, each message once, in order.
    let pages = all_pages(&d, &format!("{S}/replay?start_seq=1"), 7).await;
    assert_eq!(concat(&pages), (1..=30).collect::<Vec<_>>());
    assert_eq!(pages.len(), 5);
    assert!(pages[..4].iter().all(|p| p["end_reached"] == false));
    assert_eq!(pages[3]["pending"], 2);
    assert_eq!(pages[4]["pending"], 0);
    // The message as a fetch shows it, plus its place in the stream.
    let m = &pages[0]["messages"][2];
    assert_eq!(m["subject"], "market.ticker.eth");
    assert_eq!(m["data"], json!({"i": 3}));
    assert_eq!(m["stream_seq"], 3);
    assert!(m["timestamp"].as_str().unwrap().ends_with('Z'), "{m}");
    assert!(m.get("data_encoding").is_none(), "{m}");

    // No start: from the first message, same pages.
    let from_start = all_pages(&d, &format!("{S}/replay?subject=market.%3E"), 7).await;
    assert_eq!(concat(&from_start), (1..=30).collect::<Vec<_>>());

    // A filter: the ticker messages only (3 of every 4), pages of 4.
    let ticker: Vec<u64> = (1..=30).filter(|i| (i - 1) % 4 != 1).collect();
    let pages = all_pages(
        &d,
        &format!("{S}/replay?start_seq=1&subject=market.ticker.*"),
        4,
    )
    .await;
    assert_eq!(concat(&pages), ticker);
    assert_eq!(pages[0]["subject"], "market.ticker.*");
    for p in &pages {
        for m in p["messages"].as_array().unwrap() {
            assert!(
                m["subject"].as_str().unwrap().starts_with("market.ticker."),
                "{m}"
            );
        }
    }
    // Starting in the middle, on a message the filter skips.
    let mid = all_pages(
        &d,
        &format!("{S}/replay?start_seq=14&subject=market.ticker.*"),
        3,
    )
    .await;
    assert_eq!(
        concat(&mid),
        ticker
            .iter()
            .copied()
            .filter(|s| *s >= 14)
            .collect::<Vec<_>>()
    );

    // The last page's cursor waits where the stream ended: what comes
    // later is the next page, and only that.
    let tail = pages.last().unwrap()["next_cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let empty = ok(&d, &format!("{S}/replay?cursor={tail}")).await;
    assert_eq!(
        (empty["count"].as_u64(), empty["end_reached"].as_bool()),
        (Some(0), Some(true))
    );
    publish(&d, "market.trade.btc", json!({"i": 31})).await;
    publish(&d, "market.ticker.btc", json!({"i": 32})).await;
    let later = ok(&d, &format!("{S}/replay?cursor={tail}")).await;
    assert_eq!(seqs(&later), vec![32]);
    assert_eq!(later["end_reached"], true);

    // A start past the end: empty now, and the cursor does not hand out
    // what lies between the end and that start later.
    let far = ok(&d, &format!("{S}/replay?start_seq=40")).await;
    assert_eq!(far["count"], 0);
    let far_cursor = far["next_cursor"].as_str().unwrap().to_string();
    for i in 33..=41 {
        publish(&d, "market.trade.btc", json!({"i": i})).await;
    }
    let after = ok(&d, &format!("{S}/replay?cursor={far_cursor}")).await;
    assert_eq!(seqs(&after), vec![40, 41]);
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_have_no_gap_and_no_duplicate() {
    for bin in nats_servers() {
        pages_from_a_sequence_and_a_filter_have_no_gap_and_no_duplicate(bin).await;
    }
}

async fn start_time_last_n_and_last_per_subject(bin: PathBuf) {
    let d = daemon_on(bin).await;
    fill(&d, 10).await;
    // A time strictly between message 10 and message 11.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let between = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    tokio::time::sleep(Duration::from_millis(30)).await;
    for i in 11..=20 {
        publish(&d, SUBJECTS[((i - 1) % 4) as usize], json!({"i": i})).await;
    }
    let pages = all_pages(&d, &format!("{S}/replay?start_time={between}"), 3).await;
    assert_eq!(concat(&pages), (11..=20).collect::<Vec<_>>());
    // The same time with a numeric offset (`+` as is, and as %2B).
    let offset = between.replace('Z', "+00:00");
    let p = ok(&d, &format!("{S}/replay?start_time={offset}&limit=1")).await;
    assert_eq!(seqs(&p), vec![11]);
    let p = ok(
        &d,
        &format!(
            "{S}/replay?start_time={}&limit=1",
            offset.replace('+', "%2B")
        ),
    )
    .await;
    assert_eq!(seqs(&p), vec![11]);
    // Filtered from that time: the ticker ones after it.
    let p = all_pages(
        &d,
        &format!("{S}/replay?start_time={between}&subject=market.ticker.btc"),
        50,
    )
    .await;
    assert_eq!(concat(&p), vec![13, 17]);
    // A time after everything: nothing, at once.
    let future = ok(&d, &format!("{S}/replay?start_time=2200-01-01T00:00:00Z")).await;
    assert_eq!(
        (future["count"].as_u64(), future["end_reached"].as_bool()),
        (Some(0), Some(true))
    );

    // last=N: the last N of the stream, and the last N matching a filter
    // that skips most of the stream, in pages.
    let p = all_pages(&d, &format!("{S}/replay?last=5"), 50).await;
    assert_eq!(concat(&p), (16..=20).collect::<Vec<_>>());
    let p = all_pages(
        &d,
        &format!("{S}/replay?last=3&subject=market.ticker.btc"),
        2,
    )
    .await;
    assert_eq!(concat(&p), vec![9, 13, 17]);
    assert_eq!(p.len(), 2);
    let p = all_pages(&d, &format!("{S}/replay?last=4&subject=market.trade.*"), 50).await;
    assert_eq!(concat(&p), vec![6, 10, 14, 18]);
    // More than there are: all of them.
    let p = all_pages(
        &d,
        &format!("{S}/replay?last=1000&subject=market.trade.*"),
        50,
    )
    .await;
    assert_eq!(concat(&p), vec![2, 6, 10, 14, 18]);

    // Last per subject: one message per subject, the newest, in stream order.
    let p = all_pages(&d, &format!("{S}/replay?last_per_subject=true"), 50).await;
    assert_eq!(concat(&p), vec![17, 18, 19, 20]);
    assert_eq!(p[0]["messages"][0]["data"], json!({"i": 17}));
    // In pages of one, with a filter.
    let p = all_pages(
        &d,
        &format!("{S}/replay?last_per_subject=true&subject=market.ticker.%3E"),
        1,
    )
    .await;
    assert_eq!(concat(&p), vec![17, 19, 20]);
    // A subject that changes between pages: its newer value comes in a
    // later page; nothing is handed out twice, nothing skipped.
    let first = ok(&d, &format!("{S}/replay?last_per_subject=true&limit=2")).await;
    assert_eq!(seqs(&first), vec![17, 18]);
    publish(&d, "market.ticker.btc", json!({"i": 21})).await; // replaces 17
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = ok(&d, &format!("{S}/replay?cursor={cursor}&limit=50")).await;
    assert_eq!(seqs(&rest), vec![19, 20, 21]);
    assert_eq!(rest["end_reached"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_from_a_time_the_last_n_and_the_last_per_subject() {
    for bin in nats_servers() {
        start_time_last_n_and_last_per_subject(bin).await;
    }
}

async fn latest_values_one_subject_one_sequence_and_a_wildcard(bin: PathBuf) {
    let d = daemon_on(bin).await;
    fill(&d, 12).await;
    // A message that is not JSON, with headers, from a NATS client.
    let js = async_nats::jetstream::new(d.client().await);
    let mut h = async_nats::HeaderMap::new();
    h.insert("X-Feed", "binance");
    let ack = js
        .publish_with_headers(
            "market.book.btc",
            h,
            bytes::Bytes::from_static(b"\x00\xffraw"),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.sequence, 13);

    let last = ok(&d, &format!("{S}/subjects/market.ticker.btc/last")).await;
    assert_eq!(
        (last["stream_seq"].as_u64(), last["subject"].as_str()),
        (Some(9), Some("market.ticker.btc"))
    );
    assert_eq!(last["data"], json!({"i": 9}));
    assert!(last["timestamp"].as_str().unwrap().ends_with('Z'));
    let book = ok(&d, &format!("{S}/subjects/market.book.btc/last")).await;
    assert_eq!(book["data_encoding"], "base64");
    assert_eq!(book["data"], "AP9yYXc=");
    assert_eq!(book["headers"]["X-Feed"], "binance");
    // Percent-encoded dots are the same subject.
    let same = ok(&d, &format!("{S}/subjects/market%2Eticker%2Ebtc/last")).await;
    assert_eq!(same["stream_seq"], 9);
    let m = refused(
        &d,
        &format!("{S}/subjects/market.ticker.doge/last"),
        404,
        "not_found",
    )
    .await;
    assert!(m.contains("market.ticker.doge"), "{m}");
    let m = refused(
        &d,
        &format!("{S}/subjects/market.ticker.*/last"),
        400,
        "invalid_subject",
    )
    .await;
    assert!(m.contains("/latest?subject="), "{m}");
    refused(
        &d,
        &format!("{S}/subjects/market.ticker.%3E/last"),
        400,
        "invalid_subject",
    )
    .await;
    refused(
        &d,
        &format!("{S}/subjects/market..x/last"),
        400,
        "invalid_subject",
    )
    .await;

    let m6 = ok(&d, &format!("{S}/messages/6")).await;
    assert_eq!(
        (m6["stream_seq"].as_u64(), m6["subject"].as_str()),
        (Some(6), Some("market.trade.btc"))
    );
    assert_eq!(m6["data"], json!({"i": 6}));
    let m13 = ok(&d, &format!("{S}/messages/13")).await;
    assert_eq!(m13["headers"]["X-Feed"], "binance");
    // Deleted, and not yet stored: 404. Not a sequence: 400.
    js.get_stream("MARKET_DATA")
        .await
        .unwrap()
        .delete_message(6)
        .await
        .unwrap();
    refused(&d, &format!("{S}/messages/6"), 404, "not_found").await;
    refused(&d, &format!("{S}/messages/14"), 404, "not_found").await;
    for bad in ["0", "abc", "-1", "1.5", "99999999999999999999"] {
        refused(&d, &format!("{S}/messages/{bad}"), 400, "invalid_seq").await;
    }
    // Replay steps over the deleted message.
    let p = all_pages(
        &d,
        &format!("{S}/replay?start_seq=5&subject=market.trade.btc"),
        50,
    )
    .await;
    assert_eq!(concat(&p), vec![10]);

    // The latest value of each subject matching a wildcard, bounded.
    let all = ok(&d, &format!("{S}/latest?subject=market.ticker.%3E")).await;
    assert_eq!(seqs(&all), vec![9, 11, 12]);
    assert_eq!(all["truncated"], false);
    assert_eq!(all["subject"], "market.ticker.>");
    let two = ok(&d, &format!("{S}/latest?subject=market.ticker.%3E&limit=2")).await;
    assert_eq!(
        (seqs(&two), two["truncated"].as_bool()),
        (vec![9, 11], Some(true))
    );
    // What was cut off follows from the cursor.
    let cursor = two["next_cursor"].as_str().unwrap();
    let rest = ok(&d, &format!("{S}/replay?cursor={cursor}")).await;
    assert_eq!(seqs(&rest), vec![12]);
    let whole = ok(&d, &format!("{S}/latest")).await;
    assert_eq!(seqs(&whole), vec![9, 10, 11, 12, 13]);
    let by_token = ok(&d, &format!("{S}/latest?subject=market.*.btc")).await;
    assert_eq!(seqs(&by_token), vec![9, 10, 13]);
    let none = ok(&d, &format!("{S}/latest?subject=market.ticker.doge")).await;
    assert_eq!(
        (none["count"].as_u64(), none["truncated"].as_bool()),
        (Some(0), Some(false))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn latest_values_by_subject_sequence_and_wildcard() {
    for bin in nats_servers() {
        latest_values_one_subject_one_sequence_and_a_wildcard(bin).await;
    }
}

async fn bad_input(bin: PathBuf) {
    let d = daemon_on(bin).await;
    fill(&d, 4).await;
    let first = ok(&d, &format!("{S}/replay?subject=market.ticker.*&limit=1")).await;
    let cursor = first["next_cursor"].as_str().unwrap().to_string();

    for path in [
        "/api/v1/streams/NOPE/replay",
        "/api/v1/streams/NOPE/latest",
        "/api/v1/streams/NOPE/subjects/market.x/last",
        "/api/v1/streams/NOPE/messages/1",
        "/api/v1/streams/bad.name/replay",
    ] {
        refused(&d, path, 404, "not_found").await;
    }
    for (q, code) in [
        ("start_seq=0", "invalid_seq"),
        ("start_seq=x", "invalid_seq"),
        ("start_time=yesterday", "invalid_time"),
        ("start_time=2025-01-31T09:30:00", "invalid_time"),
        // Past int64 nanoseconds: nats-server 2.9 would start at the first message.
        ("start_time=2999-01-01T00:00:00Z", "invalid_time"),
        ("last=0", "invalid_query"),
        ("limit=0", "invalid_limit"),
        ("limit=51", "invalid_limit"),
        ("subject=market..x", "invalid_subject"),
        ("subject=orders.%3E", "invalid_subject"),
        ("start_seq=1&last=2", "invalid_query"),
        ("from=1", "invalid_query"),
        ("cursor=garbage", "invalid_cursor"),
        ("cursor=", "invalid_cursor"),
    ] {
        refused(&d, &format!("{S}/replay?{q}"), 400, code).await;
    }
    // A real cursor used against another filter or stream, or with a start.
    let m = refused(
        &d,
        &format!("{S}/replay?cursor={cursor}&subject=market.trade.*"),
        400,
        "invalid_cursor",
    )
    .await;
    assert!(m.contains("market.ticker.*"), "{m}");
    let m = refused(
        &d,
        &format!("/api/v1/streams/OTHER/replay?cursor={cursor}"),
        400,
        "invalid_cursor",
    )
    .await;
    assert!(m.contains("MARKET_DATA"), "{m}");
    refused(
        &d,
        &format!("{S}/replay?cursor={cursor}&start_seq=1"),
        400,
        "invalid_query",
    )
    .await;
    refused(&d, &format!("{S}/latest?limit=100"), 400, "invalid_limit").await;
    refused(&d, &format!("{S}/latest?last=1"), 400, "invalid_query").await;
    refused(&d, &format!("{S}/messages/1?x=1"), 400, "invalid_query").await;

    // Only GET (and HEAD).
    for path in ["replay", "latest", "subjects/market.x/last", "messages/1"] {
        let (status, _) = d.post(&format!("{S}/{path}"), json!({})).await;
        assert_eq!(status, 405, "{path}");
    }
    no_consumers_left(&d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_a_4xx_json_error() {
    for bin in nats_servers() {
        bad_input(bin).await;
    }
}

/// A page larger than one subscription of the daemon's client holds
/// (4096): every message in one page, without a gap, the end reached.
#[tokio::test(flavor = "multi_thread")]
async fn a_page_larger_than_a_subscriptions_buffer_is_whole() {
    let n: u64 = 20_000;
    let d = Daemon::builder()
        .nats(STREAM)
        .top(&format!("api:\n  fetch_max_batch: {n}\n"))
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    for _ in 0..n / 1000 {
        let batch: Vec<Value> = (0..1000)
            .map(|i| json!({"subject": "market.trade.btc", "message": {"i": i}}))
            .collect();
        let (status, v) = d.post("/api/v1/publish/batch", json!(batch)).await;
        assert_eq!(status, 200, "{}", v["failed"]);
    }
    let page = ok(&d, &format!("{S}/replay?start_seq=1&limit={n}")).await;
    let got = seqs(&page);
    assert_eq!(got.len() as u64, n, "one page of {n} brought {}", got.len());
    assert!(
        got.iter().zip(1..).all(|(&s, i)| s == i),
        "1..={n} in order"
    );
    assert_eq!(page["end_reached"], true, "{}", page["next_cursor"]);
}

/// A replay page holds at most `api.fetch_max_bytes` of messages (2 MiB
/// here): of 30 messages of about 100 KB a page of limit 30 has 20, and
/// the cursor brings the rest, without a gap or a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn a_page_holds_at_most_fetch_max_bytes_and_the_cursor_goes_on() {
    let d = Daemon::builder()
        .nats(STREAM)
        .top("api:\n  fetch_max_batch: 50\n  fetch_max_bytes: 2MiB\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let pad = "x".repeat(100_000);
    for i in 1..=30 {
        assert_eq!(
            publish(&d, "market.book.btc", json!({"i": i, "pad": pad})).await,
            i
        );
    }
    let pages = all_pages(&d, &format!("{S}/replay?start_seq=1"), 30).await;
    let counts: Vec<u64> = pages.iter().map(|p| p["count"].as_u64().unwrap()).collect();
    assert_eq!(counts, [20, 10], "pages of at most 2 MiB");
    assert_eq!(concat(&pages), (1..=30).collect::<Vec<u64>>());
}
