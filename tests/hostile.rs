//! Hostile and broken HTTP clients against the real daemon: bodies past
//! their limits (declared or chunked), bytes that are not UTF-8, subjects
//! at and past their length limit, unparseable HTTP, clients that stall
//! mid-header or sit idle, more connections than `api.max_connections`.
//! Each gets a 4xx JSON error or is closed; the daemon stays up and small.
//! (Malformed JSON, wildcards, `$`-subjects, 404 and 405 are covered in
//! daemon.rs and publish.rs.)

mod common;

use std::time::{Duration, Instant};

use common::{request, Daemon};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const JSON: (&str, &str) = ("content-type", "application/json");

async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).await.unwrap()
}

/// What the server sent until it closed the connection (`true`) or
/// `within` ran out (`false`).
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Status and JSON body of the one HTTP response in `raw`.
fn parse_response(raw: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A request whose Content-Length is past the limit gets its 413 at once,
/// without the daemon waiting for (or reading) the body, and is closed.
async fn declared_too_big(port: u16, path: &str) -> (u16, Value, Duration) {
    let mut s = connect(port).await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{{\"subject\":"
    );
    let t = Instant::now();
    s.write_all(head.as_bytes()).await.unwrap();
    let (raw, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "{path}: the connection stayed open after the 413");
    let (status, v) = parse_response(&raw);
    (status, v, t.elapsed())
}

/// Streams a chunked body forever; returns the answer, how many bytes the
/// daemon let us write before it closed, and whether it closed at all.
async fn chunked_forever(port: u16, path: &str) -> (u16, Value, usize) {
    let s = connect(port).await;
    let (mut rd, mut wr) = s.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        let chunk = format!("1000\r\n{}\r\n", " ".repeat(0x1000));
        let mut sent = 0usize;
        if wr.write_all(head.as_bytes()).await.is_err() {
            return sent;
        }
        // 256 MB: far more than any limit; the daemon must stop us long before.
        while sent < 256 << 20 {
            if wr.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
            sent += 0x1000;
        }
        sent
    });
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "{path}: still open after 20 s");
    let sent = tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .unwrap_or_else(|_| panic!("{path}: the daemon kept reading the chunked body"))
        .unwrap();
    let (status, v) = parse_response(&raw);
    (status, v, sent)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_get_4xx_json_or_are_closed_and_the_daemon_stays_small() {
    let d = Daemon::builder()
        .top("api:\n  header_read_timeout: 1s\n  batch_max_bytes: 64KB\n")
        .nats("  max_payload: 16KB\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let rss_before = rss_kib(d.pid());

    // Content-Length past the limit: 413 before any body byte arrives.
    for path in ["/api/v1/publish", "/api/v1/publish/batch"] {
        let (status, v, took) = declared_too_big(d.http, path).await;
        assert_eq!(status, 413, "{path}: {v}");
        assert_eq!(v["error"]["code"], "payload_too_large", "{path}: {v}");
        assert!(took < Duration::from_secs(2), "{path}: took {took:?}");
    }

    // A chunked body that never ends: 413 once it passes the limit (16KB x
    // 6 + 64KB for a single publish, 64KB for a batch), then closed; the
    // bytes we got to write are the limit plus what the sockets buffer.
    for path in ["/api/v1/publish", "/api/v1/publish/batch"] {
        let (status, v, sent) = chunked_forever(d.http, path).await;
        assert_eq!(status, 413, "{path}: {v}");
        assert_eq!(v["error"]["code"], "payload_too_large", "{path}: {v}");
        assert!(sent < 32 << 20, "{path}: the daemon took {sent} bytes");
    }

    // Bodies and subjects that are not what they claim to be.
    let long = format!("a.{}", "b".repeat(1022));
    assert_eq!(long.len(), 1024);
    type Case = (&'static str, Vec<u8>, u16, &'static str);
    let cases: Vec<Case> = vec![
        (
            "invalid utf-8 in a string message",
            b"{\"subject\": \"a.b\", \"message\": \"\xff\xfe\"}".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "invalid utf-8 in an object message",
            b"{\"subject\": \"a.b\", \"message\": {\"k\": \"\xc3\"}}".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "lone surrogate in the subject",
            br#"{"subject": "a.\ud800", "message": 1}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "NUL in the subject",
            br#"{"subject": "a.\u0000", "message": 1}"#.to_vec(),
            400,
            "invalid_subject",
        ),
        (
            "tab in the subject",
            br#"{"subject": "a.\tb", "message": 1}"#.to_vec(),
            400,
            "invalid_subject",
        ),
        (
            "subject past 1024 bytes",
            json!({"subject": format!("{long}c"), "message": 1})
                .to_string()
                .into_bytes(),
            400,
            "invalid_subject",
        ),
        (
            "subject a number",
            br#"{"subject": 7, "message": 1}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "message twice",
            br#"{"subject": "a.b", "message": 1, "message": 2}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "trailing garbage",
            br#"{"subject": "a.b", "message": 1} x"#.to_vec(),
            400,
            "invalid_json",
        ),
        ("empty body", Vec::new(), 400, "invalid_json"),
        (
            "deep nesting, unbalanced",
            format!(r#"{{"subject": "a.b", "message": {}}}"#, "[".repeat(5_000)).into_bytes(),
            400,
            "invalid_json",
        ),
    ];
    for (name, body, want_status, want_code) in cases {
        let (status, _, resp) = request(d.http, "POST", "/api/v1/publish", &[JSON], body)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let v: Value = serde_json::from_slice(&resp)
            .unwrap_or_else(|e| panic!("{name}: non-JSON answer: {e}"));
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (want_status, Some(want_code)),
            "{name}: {v}"
        );
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    // A message nested 5000 deep is passed on as the bytes it is (no
    // recursion on the way, so no stack to overflow).
    let deep = format!(
        r#"{{"subject": "a.b", "message": {}{}}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let (status, _, v) = d.publish_raw(deep.into_bytes()).await;
    assert_eq!(status, 200, "{v}");
    // Exactly 1024 bytes is a subject.
    let (status, v) = d.publish(&long, json!(1)).await;
    assert_eq!(status, 200, "{v}");

    // A subscription to bytes that are not UTF-8 is refused, not replaced
    // by U+FFFD and followed.
    let (status, v) = d.get("/api/v1/subscribe?subject=market.%FF").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_subject")),
        "{v}"
    );

    // Unknown routes and methods, however odd, are JSON 404 / 405; stream
    // and consumer names that would be subject wildcards or extra tokens in
    // the JetStream API request are a quick 404, never a wildcard request.
    let long_path = format!("/api/v1/{}", "x".repeat(8000));
    for (method, path, want) in [
        ("GET", "/api/v1/../../etc/passwd", 404),
        ("GET", "/%ff%fe", 404),
        ("GET", long_path.as_str(), 404),
        ("GET", "/api/v1/streams/*", 404),
        ("GET", "/api/v1/streams/%3E", 404),
        ("GET", "/api/v1/streams/MARKET_DATA.x", 404),
        ("GET", "/api/v1/streams/a.b/consumers", 404),
        ("GET", "/api/v1/streams/MARKET_DATA/consumers/*", 404),
        (
            "POST",
            "/api/v1/streams/MARKET_DATA/consumers/a.b/fetch",
            404,
        ),
        ("BREW", "/api/v1/publish", 405),
        ("PUT", "/api/v1/streams/MARKET_DATA", 405),
    ] {
        let t = Instant::now();
        let (status, headers, body) = request(d.http, method, path, &[], vec![]).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{method} {path}: {:?}",
            t.elapsed()
        );
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert_eq!(status, want, "{method} {path}: {v}");
        assert_eq!(v["success"], false, "{method} {path}: {v}");
        if want == 405 {
            assert!(headers.contains_key("allow"), "{method} {path}");
        }
    }

    // Framing tricks: ambiguous or broken lengths are refused and closed
    // (no request smuggling); a client that asks before sending a body
    // too big is refused without a 100 Continue, so it never sends it.
    let post = "POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
    for (name, extra, want_status, want_code) in [
        (
            "two Content-Lengths",
            "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            400,
            None,
        ),
        (
            "negative Content-Length",
            "Content-Length: -1\r\n\r\n",
            400,
            None,
        ),
        (
            "unknown Transfer-Encoding",
            "Transfer-Encoding: gzip\r\n\r\n",
            400,
            None,
        ),
        (
            "broken chunk size",
            "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
            400,
            Some("bad_body"),
        ),
        (
            "Content-Length and chunked",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            Some("invalid_json"),
        ),
        (
            "Expect: 100-continue, too big",
            "Content-Length: 100000000000\r\nExpect: 100-continue\r\n\r\n",
            413,
            Some("payload_too_large"),
        ),
    ] {
        let mut s = connect(d.http).await;
        s.write_all(format!("{post}{extra}").as_bytes())
            .await
            .unwrap();
        let (raw, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(closed, "{name}: left open");
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains("100 Continue"), "{name}: {text}");
        let (status, v) = parse_response(&raw);
        assert_eq!(status, want_status, "{name}: {text}");
        if let Some(code) = want_code {
            assert_eq!(v["error"]["code"], code, "{name}: {text}");
        }
    }

    // A valid body in many small chunks is published whole (read_body
    // joins frames) and stored byte for byte.
    let message = format!("{{\"k\":\"{}\"}}", "v".repeat(3000));
    let body = format!(r#"{{"subject": "market.chunked", "message": {message}}}"#);
    let mut chunked = String::new();
    for part in body.as_bytes().chunks(97) {
        chunked.push_str(&format!(
            "{:x}\r\n{}\r\n",
            part.len(),
            std::str::from_utf8(part).unwrap()
        ));
    }
    chunked.push_str("0\r\n\r\n");
    let mut s = connect(d.http).await;
    s.write_all(
        format!("{post}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    for piece in chunked.as_bytes().chunks(500) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (raw, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let (status, v) = parse_response(&raw);
    assert_eq!(status, 200, "{v}");
    let stored = async_nats::jetstream::new(d.client().await)
        .get_stream("MARKET_DATA")
        .await
        .unwrap()
        .get_raw_message(v["seq"].as_u64().unwrap())
        .await
        .unwrap();
    assert_eq!(&stored.payload[..], message.as_bytes());

    // Not HTTP at all, or headers past hyper's buffer: a bare 4xx, closed.
    for (name, bytes, want) in [
        (
            "garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
        (
            "huge header",
            format!(
                "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(1 << 20)
            )
            .into_bytes(),
            "HTTP/1.1 431",
        ),
    ] {
        let mut s = connect(d.http).await;
        let _ = s.write_all(&bytes).await;
        let (raw, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(closed, "{name}: left open");
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with(want), "{name}: {text:?}");
    }

    // A client that stalls mid-header, or idles after a request, is closed
    // after header_read_timeout (1 s here).
    let mut slow = connect(d.http).await;
    slow.write_all(b"GET /health HTTP/1.1\r\nHo").await.unwrap();
    let t = Instant::now();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed, "a stalled header was kept open 5 s");
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );

    // So is one that sends its headers and part of its body, then stalls
    // (hyper has no body timeout: the daemon's own answers 408).
    for path in ["/api/v1/publish", "/api/v1/publish/batch"] {
        let mut stalled = connect(d.http).await;
        stalled
            .write_all(
                format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"subject\":").as_bytes(),
            )
            .await
            .unwrap();
        let t = Instant::now();
        let (raw, closed) = read_until_closed(&mut stalled, Duration::from_secs(5)).await;
        assert!(closed, "{path}: a stalled body was kept open 5 s");
        let (status, v) = parse_response(&raw);
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (408, Some("request_timeout")),
            "{path}: {v}"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(800),
            "{:?}",
            t.elapsed()
        );
    }

    let mut idle = connect(d.http).await;
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let t = Instant::now();
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(closed, "an idle keep-alive connection was kept open 5 s");
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );

    // A burst of the above, 50 at a time: still up, still small.
    let port = d.http;
    let mut burst = Vec::new();
    for i in 0..50 {
        burst.push(tokio::spawn(async move {
            match i % 3 {
                0 => {
                    declared_too_big(port, "/api/v1/publish").await;
                }
                1 => {
                    chunked_forever(port, "/api/v1/publish/batch").await;
                }
                _ => {
                    let mut s = connect(port).await;
                    s.write_all(b"POST /api/v1/publish HTTP/1.1\r\n")
                        .await
                        .unwrap();
                    read_until_closed(&mut s, Duration::from_secs(5)).await;
                }
            }
        }));
    }
    for b in burst {
        b.await.unwrap();
    }
    let (status, v) = d.get("/health").await;
    assert_eq!(status, 200, "{v}");
    let rss_after = rss_kib(d.pid());
    eprintln!("daemon RSS: {rss_before} KiB before the hostile requests, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(!d.has_exited());
}

/// A slowloris client: connects, sends part of a request head, then a byte
/// every 200 ms; when closed, it connects again 100 ms later. Until `stop`.
async fn slowloris(port: u16, stop: tokio::sync::watch::Receiver<bool>) -> u32 {
    let mut reconnects = 0;
    while !*stop.borrow() {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .is_err()
        {
            continue;
        }
        while !*stop.borrow() && s.write_all(b"a").await.is_ok() {
            let mut b = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                _ => {}
            }
        }
        reconnects += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reconnects
}

#[tokio::test(flavor = "multi_thread")]
async fn at_max_connections_slow_and_idle_clients_make_room_for_health_and_metrics() {
    let d = Daemon::builder()
        .top("api:\n  max_connections: 32\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    // Three times the cap in slowloris clients, who come back when closed:
    // every slot is always taken.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let slow: Vec<_> = (0..96)
        .map(|_| tokio::spawn(slowloris(d.http, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Load balancers' probes on new connections: served at once, not after
    // header_read_timeout (10 s) frees a slot.
    let mut took = Vec::new();
    for i in 0..40 {
        let path = if i % 2 == 0 { "/health" } else { "/metrics" };
        let t = Instant::now();
        let (status, _, body) = tokio::time::timeout(
            Duration::from_secs(5),
            request(d.http, "GET", path, &[], vec![]),
        )
        .await
        .unwrap_or_else(|_| panic!("GET {path} took over 5 s at the connection cap"))
        .unwrap();
        took.push(t.elapsed());
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(true).unwrap();
    let mut reconnects = 0;
    for s in slow {
        reconnects += s.await.unwrap();
    }
    took.sort();
    let (p50, p90, max) = (
        took[took.len() / 2],
        took[took.len() * 9 / 10],
        took[took.len() - 1],
    );
    eprintln!("/health and /metrics under 96 slowloris clients (back 100 ms after each close), cap 32: p50 {p50:?}, p90 {p90:?}, max {max:?}; slowloris reconnects {reconnects}");
    assert!(
        p90 < Duration::from_millis(100),
        "p50 {p50:?}, p90 {p90:?}, max {max:?}: probes waited behind slow clients"
    );
    assert!(
        reconnects > 0,
        "no slow client was ever closed: the cap was not reached"
    );
    let (_, _, metrics) = request(d.http, "GET", "/metrics", &[], vec![])
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    let evicted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("marketprism_broker_http_connections_evicted_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no eviction counter in /metrics:\n{metrics}"));
    assert!(evicted > 0, "{metrics}");
    // Said at most once per 10 s, not once per eviction.
    let said = d.log().matches("HTTP connection limit reached").count();
    assert!((1..=2).contains(&said), "said {said} times");
    assert!(!d.has_exited());
}

#[tokio::test(flavor = "multi_thread")]
async fn at_max_connections_requests_in_progress_are_never_cut_and_new_clients_wait() {
    let d = Daemon::builder()
        .top("api:\n  max_connections: 4\n  sse_max_clients: 3\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    // Let the readiness probes' connections close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Four connections in a request: three event streams and a publish
    // whose body is still coming.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = connect(d.http).await;
        s.write_all(b"GET /api/v1/subscribe?subject=market.%3E HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut b = [0u8; 512];
        let n = s.read(&mut b).await.unwrap();
        assert!(String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 200"));
        streams.push(s);
    }
    let publish = br#"{"subject":"market.kept","message":{"n":1}}"#;
    let (head, rest) = publish.split_at(11);
    let mut body = connect(d.http).await;
    body.write_all(
        format!(
            "POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            publish.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    body.write_all(head).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A new client waits: no connection in a request is cut for it.
    let port = d.http;
    let probe = tokio::spawn(async move { request(port, "GET", "/health", &[], vec![]).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !probe.is_finished(),
        "the cap did not hold: a fifth connection was served"
    );
    // The publish completes; its connection, now idle, makes room.
    body.write_all(rest).await.unwrap();
    let mut b = [0u8; 1024];
    let n = body.read(&mut b).await.unwrap();
    let answer = String::from_utf8_lossy(&b[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (status, _, _) = tokio::time::timeout(Duration::from_secs(5), probe)
        .await
        .expect("the waiting client is served once a connection is idle")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    // The event streams were never cut: each has the message and is open.
    for s in &mut streams {
        let (got, closed) = read_until_closed(s, Duration::from_millis(500)).await;
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.contains("market.kept") && !closed,
            "an event stream was cut: {got:?}"
        );
    }
}
