//! The publish benchmark: how close the HTTP front door gets to what
//! nats-server does for a direct async-nats client, measured in one run on
//! one machine, so every verdict is a ratio against a baseline of the same
//! run, never an absolute time.
//!
//! It starts the release-built daemon (with its own nats-server, on free
//! ports, in a fresh state directory) and measures:
//! 1. direct: async-nats JetStream publishes of the seed's trade message to
//!    MARKET_DATA (file storage), 1 / 16 / 256 acks in flight;
//! 2. HTTP: POST /api/v1/publish of the same message over 1 / 16 / 64
//!    keep-alive connections, from wrk when it is installed (one thread,
//!    so the load generator takes as little of the machine as it can),
//!    else from a hyper client in this process (`--loadgen` chooses);
//! 3. HTTP batch publish: 100 and 1000 messages a request (JSON array),
//!    over 4 connections; and streaming ingest: one POST
//!    /api/v1/publish/stream on one connection, fed the same message in
//!    64 KiB chunks, its per-line results read as they come;
//!    every HTTP load runs twice, with `nats.durability: lazy` (answered
//!    on the ack, like the direct client) and `sync` (answered after a
//!    group-commit sync), switched by a config reload between them;
//!    the anchor for `sync`: direct async-nats publishes, 16 in flight, to
//!    a current nats-server with `sync_interval: always` (its own per-
//!    message sync; $MPB_NATS_SERVER_CURRENT, else .venv/bin/nats-server);
//! 4. readiness: exec of the daemon to READY=1 on a real notify socket,
//!    next to exec of nats-server alone (same rendered config) to /healthz;
//! 5. recovery: kill -9 of nats-server under HTTP load until /health is 200
//!    again and until the first acknowledged publish after the kill;
//! 6. the daemon's RSS idle and under load, CPU seconds per 100k publishes;
//! 7. the consume side, on a daemon of its own (benches/consume/): HTTP
//!    fetch+ack, SSE fan-out and publish-to-receive latency, each next to a
//!    direct async-nats client.
//!
//! Run: `./scripts/bench` (or `cargo bench --bench publish -- [--secs S]
//! [--json FILE] [--only publish|consume]`). nats-server: $MPB_NATS_SERVER, else
//! /usr/sbin/nats-server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

mod consume;
mod support;

use support::*;

/// The seed's trade example, to the subject its MARKET_DATA stream captures.
const SUBJECT: &str = "market.binance.BTCUSDT.trade";
const TRADE: &str = r#"{"symbol":"BTCUSDT","price":"50000.00","quantity":"0.1","timestamp":"2024-01-01T12:00:00Z"}"#;

struct Opts {
    secs: f64,
    rounds: usize,
    json: Option<PathBuf>,
    nats_server: PathBuf,
    /// TOKIO_WORKER_THREADS for the daemon (its runtime's default otherwise).
    daemon_workers: Option<String>,
    loadgen: Loadgen,
    /// One side only (`--only publish|consume`); both otherwise.
    part: Option<Part>,
}

/// A side of the benchmark.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Publish,
    Consume,
}

/// What sends the HTTP load.
#[derive(Clone)]
enum Loadgen {
    /// wrk, one thread, driven by a Lua script that reports in `done`.
    Wrk(PathBuf),
    /// hyper clients on this process's runtime.
    Hyper,
}

impl Loadgen {
    fn name(&self) -> String {
        match self {
            Loadgen::Wrk(p) => format!("wrk ({})", p.display()),
            Loadgen::Hyper => "hyper client in the benchmark process".into(),
        }
    }
}

/// `wrk` on PATH.
fn find_wrk() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("wrk"))
        .find(|p| p.is_file())
}

impl Opts {
    fn spec(&self) -> Spec {
        Spec {
            nats_server: self.nats_server.clone(),
            workers: self.daemon_workers.clone(),
            nats_extra: String::new(),
        }
    }

    fn parse() -> Opts {
        let mut o = Opts {
            secs: 3.0,
            rounds: 5,
            json: None,
            nats_server: std::env::var_os("MPB_NATS_SERVER")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/usr/sbin/nats-server".into()),
            daemon_workers: None,
            loadgen: find_wrk().map_or(Loadgen::Hyper, Loadgen::Wrk),
            part: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--secs" => o.secs = args.next().and_then(|v| v.parse().ok()).expect("--secs N"),
                "--rounds" => {
                    o.rounds = args
                        .next()
                        .and_then(|v| v.parse().ok())
                        .expect("--rounds N")
                }
                "--json" => o.json = Some(args.next().expect("--json FILE").into()),
                "--nats-server" => o.nats_server = args.next().expect("--nats-server PATH").into(),
                "--daemon-workers" => {
                    o.daemon_workers = Some(args.next().expect("--daemon-workers N"))
                }
                "--loadgen" => {
                    o.loadgen = match args.next().as_deref() {
                        Some("hyper") => Loadgen::Hyper,
                        Some("wrk") => Loadgen::Wrk(
                            find_wrk()
                                .expect("--loadgen wrk: no wrk on PATH (apt-get install wrk)"),
                        ),
                        _ => panic!("--loadgen wrk|hyper"),
                    }
                }
                "--only" => {
                    o.part = match args.next().as_deref() {
                        Some("publish") => Some(Part::Publish),
                        Some("consume") => Some(Part::Consume),
                        _ => panic!("--only publish|consume"),
                    }
                }
                // cargo bench passes --bench; the libtest filters mean nothing here.
                _ => {}
            }
        }
        assert!(
            o.nats_server.exists(),
            "{} is missing: install Debian's nats-server or set MPB_NATS_SERVER",
            o.nats_server.display()
        );
        o
    }
}

/// One measured load: rate and latency percentiles.
struct Run {
    label: String,
    ok: u64,
    errors: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU seconds per 100k successes during the run: the daemon's, and
    /// nats-server's.
    cpu: Option<(f64, f64)>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }
    fn json(&self) -> Value {
        json!({"label": self.label, "ok": self.ok, "errors": self.errors, "secs": self.secs,
               "rate_per_s": self.rate(), "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
               "cpu_s_per_100k": self.cpu.map(|(d, n)| json!({"daemon": d, "nats_server": n}))})
    }
}

// --------------------------------------------------------- readiness ----

/// exec of nats-server alone, on the config the daemon renders for the
/// same settings (fresh store), to its /healthz answering 200.
async fn nats_server_alone(nats_server: &Path) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let [http, nats, monitor] = free_ports::<3>();
    let config = write_config(dir.path(), (http, nats, monitor), nats_server, "");
    let out = Command::new(BIN)
        .arg("render-nats-config")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "render-nats-config failed");
    let conf = dir.path().join("nats-server.conf");
    std::fs::write(&conf, &out.stdout).unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let t0 = Instant::now();
    let mut child = Command::new(nats_server)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = t0 + Duration::from_secs(30);
    let took = loop {
        if let Ok((200, _)) = get(monitor, "/healthz").await {
            break t0.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "nats-server alone never got healthy"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    took
}

/// What one request of a load sends.
#[derive(Clone)]
struct Load {
    path: &'static str,
    body: Bytes,
    /// Messages one request publishes.
    msgs: u64,
}

impl Load {
    /// The seed's trade message, one a request.
    fn single() -> Load {
        Load {
            path: "/api/v1/publish",
            body: Bytes::from(format!(r#"{{"subject":"{SUBJECT}","message":{TRADE}}}"#)),
            msgs: 1,
        }
    }

    /// `n` of them as one JSON array to the batch endpoint.
    fn batch(n: u64) -> Load {
        let one = format!(r#"{{"subject":"{SUBJECT}","message":{TRADE}}}"#);
        let body = format!("[{}]", vec![one; n as usize].join(","));
        Load {
            path: "/api/v1/publish/batch",
            body: Bytes::from(body),
            msgs: n,
        }
    }
}

/// One POST on a kept-alive connection: Ok(true) for a 200 that says the
/// message was persisted (for a batch, 200 means every entry was).
async fn post_publish(sender: &mut Sender, load: &Load) -> Result<bool, hyper::Error> {
    let req = hyper::Request::post(load.path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(load.body.clone()))
        .unwrap();
    let resp = sender.send_request(req).await?;
    let ok = resp.status() == 200;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(ok && says_persisted(&body))
}

fn says_persisted(body: &[u8]) -> bool {
    body.windows(16).any(|w| w == b"\"persisted\":true")
}

/// `conns` keep-alive connections, each publishing one request after the
/// other until `stop`; every answer's latency is kept.
async fn http_load(port: u16, conns: usize, secs: f64, load: &Load, label: &str) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let load = load.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::default();
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut sender = connect(port).await.expect("connect to the HTTP API");
            while !stop.load(Relaxed) {
                let t = Instant::now();
                match post_publish(&mut sender, &load).await {
                    Ok(true) => {
                        ok += load.msgs;
                        s.add(t.elapsed());
                    }
                    Ok(false) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        sender = connect(port).await.expect("reconnect to the HTTP API");
                    }
                }
            }
            (s, ok, errors)
        }));
    }
    measure(label.into(), secs, stop, tasks).await
}

/// The HTTP load from the chosen generator.
async fn http_run(
    gen: &Loadgen,
    port: u16,
    conns: usize,
    secs: f64,
    load: &Load,
    label: &str,
) -> Run {
    match gen {
        Loadgen::Hyper => http_load(port, conns, secs, load, label).await,
        Loadgen::Wrk(wrk) => wrk_load(wrk, port, conns, secs, load, label).await,
    }
}

/// The same load from wrk: one thread, `conns` keep-alive connections,
/// whole seconds (wrk's -d takes no fractions). wrk counts a non-2xx answer
/// as an error; that a 200 means persisted is checked against the daemon's
/// own count of acknowledged publishes.
async fn wrk_load(wrk: &Path, port: u16, conns: usize, secs: f64, load: &Load, label: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, &load.body).unwrap();
    let script = dir.path().join("publish.lua");
    std::fs::write(
        &script,
        format!(
            r#"local f = assert(io.open({body:?}, "rb"))
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = f:read("*a")
f:close()
done = function(s, lat, req)
  io.write(string.format("WRK %d %d %d %d %d %d\n", s.requests, s.duration, s.errors.status,
    s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout,
    lat:percentile(50), lat:percentile(99)))
end
"#
        ),
    )
    .unwrap();
    let before = published_count(port).await;
    let out = tokio::process::Command::new(wrk)
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{}s", secs.ceil().max(1.0)),
        ])
        .arg("-s")
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}{}", load.path))
        .output()
        .await
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<u64> = text
        .lines()
        .find_map(|l| l.strip_prefix("WRK "))
        .unwrap_or_else(|| {
            panic!(
                "wrk said no summary: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let (requests, duration_us, status_errors, io_errors, p50_us, p99_us) =
        (f[0], f[1], f[2], f[3], f[4], f[5]);
    let ok = (requests - status_errors) * load.msgs;
    // Requests still in flight when wrk stopped may have been published
    // too, so the daemon's count may be higher, never lower.
    let persisted = published_count(port).await - before;
    let unpersisted = ok.saturating_sub(persisted);
    if unpersisted > 0 {
        eprintln!("{label}: wrk saw {ok} successes but the daemon counted {persisted} publishes");
    }
    Run {
        label: label.into(),
        ok: ok - unpersisted,
        errors: status_errors + io_errors + unpersisted,
        secs: duration_us as f64 / 1e6,
        p50_ms: p50_us as f64 / 1000.0,
        p99_ms: p99_us as f64 / 1000.0,
        cpu: None,
    }
}

/// Per task of a load: latencies, successes, errors.
type TaskResult = (Samples, u64, u64);

/// Lets a load's tasks run for `secs`, stops them and merges what they
/// measured; also when the clock started. The publish and consume loads
/// share it.
async fn run_tasks(
    secs: f64,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<TaskResult>>,
) -> (Instant, TaskResult) {
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Relaxed);
    let mut all = Samples::default();
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (s, o, e) = t.await.unwrap();
        all.merge(s);
        ok += o;
        errors += e;
    }
    (t0, (all, ok, errors))
}

/// Lets the load's tasks run for `secs`, stops them and merges what they
/// measured.
async fn measure(
    label: String,
    secs: f64,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<TaskResult>>,
) -> Run {
    let (t0, (mut all, ok, errors)) = run_tasks(secs, stop, tasks).await;
    let secs = t0.elapsed().as_secs_f64();
    Run {
        label,
        ok,
        errors,
        secs,
        p50_ms: all.pct(0.50),
        p99_ms: all.pct(0.99),
        cpu: None,
    }
}

// ---------------------------------------------------------- stream ----

/// A request body fed through a channel: the streaming ingest's lines.
struct Feed(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Feed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// One POST /api/v1/publish/stream on one connection, fed the trade
/// message in 64 KiB chunks of lines for `secs` while its answer is read:
/// lines answered `"persisted": true` per second, until the summary.
/// Latency: from a chunk's hand-over to the connection until the result of
/// its last line.
async fn stream_load(port: u16, secs: f64, label: &str) -> Run {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the HTTP API");
    tcp.set_nodelay(true).unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let req = hyper::Request::post("/api/v1/publish/stream")
        .header("host", "127.0.0.1")
        .header("content-type", "application/x-ndjson")
        .body(Feed(rx))
        .unwrap();
    let line = format!("{{\"subject\":\"{SUBJECT}\",\"message\":{TRADE}}}\n");
    let per_chunk = ((64 << 10) / line.len()) as u64;
    let chunk = Bytes::from(line.repeat(per_chunk as usize));
    // (the last line of a chunk, when it was handed over)
    let sent_at = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(secs);
    let writer = {
        let sent_at = sent_at.clone();
        tokio::spawn(async move {
            let mut lines = 0;
            while Instant::now() < until {
                let at = Instant::now();
                if tx.send(chunk.clone()).await.is_err() {
                    return;
                }
                lines += per_chunk;
                sent_at.lock().unwrap().push_back((lines, at));
            }
        })
    };
    let resp = sender.send_request(req).await.expect("the stream's answer");
    assert_eq!(resp.status(), 200, "POST /api/v1/publish/stream");
    let mut body = resp.into_body();
    let (mut ok, mut errors, mut n) = (0u64, 0u64, 0u64);
    let mut samples = Samples::default();
    let mut buf: Vec<u8> = Vec::new();
    'read: while let Some(frame) = body.frame().await {
        let Ok(data) = frame.expect("the answer stream").into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        let mut start = 0;
        while let Some(i) = buf[start..].iter().position(|&b| b == b'\n') {
            let l = &buf[start..start + i];
            start += i + 1;
            if l.starts_with(b"{\"summary\"") {
                break 'read;
            }
            n += 1;
            if says_persisted(l) {
                ok += 1;
            } else {
                errors += 1;
            }
        }
        buf.drain(..start);
        let now = Instant::now();
        let mut q = sent_at.lock().unwrap();
        while q.front().is_some_and(|&(last, _)| last <= n) {
            let (_, at) = q.pop_front().unwrap();
            samples.add(now - at);
        }
    }
    writer.await.unwrap();
    Run {
        label: label.into(),
        ok,
        errors,
        secs: t0.elapsed().as_secs_f64(),
        p50_ms: samples.pct(0.50),
        p99_ms: samples.pct(0.99),
        cpu: None,
    }
}

// ------------------------------------------------------------ direct ----

/// `inflight` tasks on one async-nats connection, each publishing and
/// awaiting its ack one after the other: that many acks in flight.
async fn direct_load(js: &async_nats::jetstream::Context, inflight: usize, secs: f64) -> Run {
    let payload = Bytes::from_static(TRADE.as_bytes());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..inflight {
        let js = js.clone();
        let payload = payload.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::default();
            let (mut ok, mut errors) = (0u64, 0u64);
            while !stop.load(Relaxed) {
                let t = Instant::now();
                let r = async { js.publish(SUBJECT, payload.clone()).await?.await }.await;
                match r {
                    Ok(_) => {
                        ok += 1;
                        s.add(t.elapsed());
                    }
                    Err(_) => errors += 1,
                }
            }
            (s, ok, errors)
        }));
    }
    measure(
        format!("direct async-nats, {inflight} in flight"),
        secs,
        stop,
        tasks,
    )
    .await
}

/// Empties MARKET_DATA, so that a load never runs into the stream's
/// message limit.
async fn purge(js: &async_nats::jetstream::Context) {
    js.get_stream("MARKET_DATA")
        .await
        .expect("MARKET_DATA exists")
        .purge()
        .await
        .expect("purge MARKET_DATA");
}

/// Runs one measured load and records the CPU the daemon and nats-server
/// spent on it.
async fn with_cpu(pids: (u32, u32), load: impl std::future::Future<Output = Run>) -> Run {
    let (d0, n0) = (cpu_secs(pids.0), cpu_secs(pids.1));
    let mut run = load.await;
    let per = |s: f64| s / run.ok.max(1) as f64 * 100_000.0;
    run.cpu = Some((per(cpu_secs(pids.0) - d0), per(cpu_secs(pids.1) - n0)));
    run
}

/// message_stats.published of the daemon.
async fn published_count(http: u16) -> u64 {
    match get(http, "/api/v1/status").await {
        Ok((200, b)) => serde_json::from_slice::<Value>(&b).unwrap()["message_stats"]["published"]
            .as_u64()
            .unwrap_or(0),
        _ => 0,
    }
}

/// The current nats-server the tests install, for the anchor.
fn current_nats_server() -> Option<PathBuf> {
    std::env::var_os("MPB_NATS_SERVER_CURRENT")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from(".venv/bin/nats-server")))
        .filter(|p| p.is_file())
}

/// Direct async-nats publishes, `inflight` at a time, to a nats-server of
/// its own with `jetstream { sync_interval: always }`, into a file stream
/// capturing the same subject.
async fn sync_always_load(bin: &Path, inflight: usize, warm: f64, secs: f64) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let [port] = free_ports::<1>();
    let conf = dir.path().join("nats-server.conf");
    std::fs::write(
        &conf,
        format!(
            "host: 127.0.0.1\nport: {port}\njetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n",
            dir.path().join("store").display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        if let Ok(c) = async_nats::connect(&url).await {
            break c;
        }
        assert!(Instant::now() < deadline, "{} did not start", bin.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "MARKET_DATA".into(),
        subjects: vec!["market.>".into()],
        ..Default::default()
    })
    .await
    .expect("create the anchor's stream");
    direct_load(&js, inflight, warm).await;
    let mut run = direct_load(&js, inflight, secs).await;
    run.label = format!("direct async-nats, {inflight} in flight, sync_interval always");
    let _ = child.kill();
    let _ = child.wait();
    run
}

// ---------------------------------------------------------- recovery ----

struct Recovery {
    healthy: Duration,
    first_ack: Duration,
}

/// kill -9 of nats-server while 4 connections publish over HTTP: time to
/// /health 200 and to the first publish acknowledged after the kill.
async fn recovery(d: &Daemon) -> Recovery {
    let port = d.http;
    let stop = Arc::new(AtomicBool::new(false));
    let killed_at_ns = Arc::new(AtomicU64::new(0));
    let first_ack_ns = Arc::new(AtomicU64::new(u64::MAX));
    let base = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (stop, killed_at_ns, first_ack_ns) =
            (stop.clone(), killed_at_ns.clone(), first_ack_ns.clone());
        tasks.push(tokio::spawn(async move {
            let load = Load::single();
            let mut sender = connect(port).await.expect("connect");
            while !stop.load(Relaxed) {
                let sent = base.elapsed().as_nanos() as u64;
                match post_publish(&mut sender, &load).await {
                    Ok(true) => {
                        let k = killed_at_ns.load(Relaxed);
                        // Only a request sent after the kill proves the new
                        // child: one in flight could have been acked before.
                        if k != 0 && sent > k {
                            first_ack_ns.fetch_min(base.elapsed().as_nanos() as u64, Relaxed);
                        }
                    }
                    Ok(false) => tokio::time::sleep(Duration::from_millis(1)).await,
                    Err(_) => sender = connect(port).await.expect("reconnect"),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = d.child_pid().expect("nats-server's pid file");
    let killed = Instant::now();
    killed_at_ns.store(base.elapsed().as_nanos() as u64, Relaxed);
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let deadline = killed + Duration::from_secs(30);
    // The old child's health could still be cached as green for an instant:
    // wait for the new pid before trusting /health.
    let healthy = loop {
        let new_child = d.child_pid().is_some_and(|p| p != pid);
        if new_child && matches!(get(port, "/health").await, Ok((200, _))) {
            break killed.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "not healthy within 30 s of the kill"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    while first_ack_ns.load(Relaxed) == u64::MAX {
        assert!(
            Instant::now() < deadline,
            "no publish acknowledged after the kill"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let first_ack = Duration::from_nanos(first_ack_ns.load(Relaxed) - killed_at_ns.load(Relaxed));
    Recovery { healthy, first_ack }
}

// -------------------------------------------------------------- main ----

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISS"
    }
}

fn main() {
    let opts = Opts::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(opts));
}

async fn run(opts: Opts) {
    let version = Command::new(&opts.nats_server)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "marketprism-broker benchmark: {version}, {cores} cores, {} s a run",
        opts.secs
    );
    let mut doc = json!({
        "nats_server": version,
        "cores": cores,
        "secs_per_run": opts.secs,
    });
    if opts.part != Some(Part::Consume) {
        println!("publish side; HTTP load from {}", opts.loadgen.name());
        for (k, v) in publish(&opts).await {
            doc[k] = v;
        }
    }
    if opts.part != Some(Part::Publish) {
        println!();
        println!("consume side; HTTP clients in the benchmark process");
        let report = consume::run(&opts.spec(), opts.secs).await;
        print_consume(&report);
        doc["consume"] = report.json;
    }
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        println!("\nwrote {}", path.display());
    }
}

/// The consume side's loads and its ratio lines, as the publish side's.
fn print_consume(report: &consume::Report) {
    println!();
    println!(
        "{:<48} {:>10} {:>9} {:>9} {:>7} {:>16}",
        "consume load", "per s", "p50 ms", "p99 ms", "errors", "CPU s/100k d+n"
    );
    for r in &report.runs {
        let (dc, nc) = r.cpu.unwrap_or((f64::NAN, f64::NAN));
        println!(
            "{:<48} {:>10.0} {:>9.3} {:>9.3} {:>7} {:>7.2} + {:<6.2}",
            r.label,
            r.rate(),
            r.p50_ms,
            r.p99_ms,
            r.errors,
            dc,
            nc
        );
    }
    println!(
        "(fetch loads: per s acked, p50/p99 of one fetch+ack cycle; SSE and subscribers: per s"
    );
    println!(
        " delivered summed over the clients, errors never delivered; latency: publish to receipt)"
    );
    println!();
    println!("{:<58} {:>9} {:>12}", "ratio or figure", "value", "target");
    for (what, v, target, ok) in &report.lines {
        println!(
            "{:<58} {:>9} {:>12}  {}",
            what,
            v,
            target,
            ok.map_or("", verdict)
        );
    }
}

/// The publish side: measures, prints its tables and returns its figures
/// for the JSON.
async fn publish(opts: &Opts) -> serde_json::Map<String, Value> {
    // 4. Readiness, alternating so both see the same machine state.
    let (mut alone, mut daemon_ready) = (Vec::new(), Vec::new());
    for _ in 0..opts.rounds {
        alone.push(nats_server_alone(&opts.nats_server).await);
        let (d, ready) = Daemon::start(&opts.spec());
        daemon_ready.push(ready);
        d.stop();
    }
    let (alone, daemon_ready) = (median(alone), median(daemon_ready));

    let (d, _) = Daemon::start(&opts.spec());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = rss_mb(d.pid());

    // 1-3. Direct and HTTP loads in pairs, each HTTP load right after the
    // direct one it is compared with, so drift in the machine's state hits
    // both alike. Every load starts on an empty stream: MARKET_DATA keeps
    // at most 1M messages, and a full stream makes nats-server delete one
    // for each it stores, which would tax whichever load came later.
    let client = async_nats::connect(format!("nats://127.0.0.1:{}", d.nats))
        .await
        .expect("connect to nats-server");
    let js = async_nats::jetstream::new(client);
    let warm = opts.secs.min(1.0) / 2.0;
    let pids = (d.pid(), d.child_pid().expect("nats-server pid"));
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, peak, pid) = (sampling.clone(), peak.clone(), d.pid());
        tokio::spawn(async move {
            while sampling.load(Relaxed) {
                let kb = (rss_mb(pid) * 1024.0) as u64;
                peak.fetch_max(kb, Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let (mut direct, mut http, mut batch) = (Vec::new(), Vec::new(), Vec::new());
    let (mut http_sync, mut batch_sync) = (Vec::new(), Vec::new());
    let mut streamed = Vec::new();
    let spec = opts.spec();
    // One HTTP load under each durability, lazy first; the daemon is left
    // on sync (its default).
    let both = |conns: usize, load: Load, label: String| {
        let (d, spec, js, gen) = (&d, &spec, &js, &opts.loadgen);
        async move {
            let mut out = Vec::new();
            for (mode, extra) in [("lazy", "  durability: lazy\n"), ("sync", "")] {
                d.reload_with(spec, extra);
                let label = format!("{label}, {mode}");
                purge(js).await;
                http_run(gen, d.http, conns, warm, &load, &label).await;
                purge(js).await;
                let run = http_run(gen, d.http, conns, opts.secs, &load, &label);
                out.push(with_cpu(pids, run).await);
            }
            let sync = out.pop().unwrap();
            (out.pop().unwrap(), sync)
        }
    };
    let mut always = None;
    for n in [1, 16, 256] {
        purge(&js).await;
        direct_load(&js, n, warm).await;
        purge(&js).await;
        direct.push(with_cpu(pids, direct_load(&js, n, opts.secs)).await);
        if n == 16 {
            // The anchor for the sync rows, nats-server's own per-message
            // sync, right before them: a disk's sync latency drifts.
            always = match current_nats_server() {
                Some(bin) => Some(sync_always_load(&bin, 16, warm, opts.secs).await),
                None => {
                    println!("no current nats-server ($MPB_NATS_SERVER_CURRENT or .venv/bin/nats-server): the sync_interval: always anchor is skipped");
                    None
                }
            };
        }
        let conns = n.min(64);
        let label = format!(
            "HTTP publish, {conns} connection{}",
            if conns == 1 { "" } else { "s" }
        );
        let (lazy, sync) = both(conns, Load::single(), label).await;
        http.push(lazy);
        http_sync.push(sync);
    }
    for n in [100, 1000] {
        let label = format!("HTTP batch of {n}, 4 conns (p50/p99: request)");
        let (lazy, sync) = both(4, Load::batch(n), label).await;
        batch.push(lazy);
        batch_sync.push(sync);
    }
    // Streaming ingest, under each durability (the daemon ends on sync).
    for (mode, extra) in [("lazy", "  durability: lazy\n"), ("sync", "")] {
        d.reload_with(&spec, extra);
        let label = format!("HTTP stream ingest, 1 conn (p50/p99: chunk), {mode}");
        purge(&js).await;
        stream_load(d.http, warm, &label).await;
        purge(&js).await;
        streamed.push(with_cpu(pids, stream_load(d.http, opts.secs, &label)).await);
    }
    sampling.store(false, Relaxed);
    sampler.await.unwrap();
    let rss_load = peak.load(Relaxed) as f64 / 1024.0;

    // 5. Recovery, each kill a first crash (stable_after is 2 s).
    let mut rec = Vec::new();
    for _ in 0..3 {
        rec.push(recovery(&d).await);
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    let healthy_max = rec.iter().map(|r| r.healthy).max().unwrap();
    let ack_max = rec.iter().map(|r| r.first_ack).max().unwrap();
    d.stop();

    // The table.
    println!();
    println!(
        "{:<48} {:>10} {:>9} {:>9} {:>7} {:>16}",
        "load", "per s", "p50 ms", "p99 ms", "errors", "CPU s/100k d+n"
    );
    for r in direct
        .iter()
        .chain(always.iter())
        .chain(http.iter().zip(&http_sync).flat_map(|(a, b)| [a, b]))
        .chain(batch.iter().zip(&batch_sync).flat_map(|(a, b)| [a, b]))
        .chain(streamed.iter())
    {
        let (dc, nc) = r.cpu.unwrap_or((f64::NAN, f64::NAN));
        println!(
            "{:<48} {:>10.0} {:>9.3} {:>9.3} {:>7} {:>7.2} + {:<6.2}",
            r.label,
            r.rate(),
            r.p50_ms,
            r.p99_ms,
            r.errors,
            dc,
            nc
        );
    }
    println!("(CPU: the daemon's, then nats-server's; for direct loads the daemon only idles)");

    let ratio = |h: &Run, d: &Run| h.rate() / d.rate();
    let r1 = ratio(&http[0], &direct[0]);
    let r16 = ratio(&http[1], &direct[1]);
    let r64 = ratio(&http[2], &direct[2]);
    let ready_over = ms(daemon_ready) - ms(alone);
    println!();
    println!("{:<58} {:>9} {:>12}", "ratio or figure", "value", "target");
    let line = |what: &str, v: String, target: &str, ok: Option<bool>| {
        println!(
            "{:<58} {:>9} {:>12}  {}",
            what,
            v,
            target,
            ok.map_or("", verdict)
        )
    };
    line(
        "HTTP 1 conn / direct 1 in flight",
        format!("{r1:.2}"),
        ">= 0.50",
        Some(r1 >= 0.5),
    );
    line(
        "HTTP 16 conns / direct 16 in flight",
        format!("{r16:.2}"),
        ">= 0.50",
        Some(r16 >= 0.5),
    );
    line(
        "HTTP 64 conns / direct 256 in flight",
        format!("{r64:.2}"),
        "",
        None,
    );
    let rb = ratio(&batch[1], &direct[2]);
    line(
        "HTTP batch 1000 / direct 256 in flight",
        format!("{rb:.2}"),
        ">= 0.80",
        Some(rb >= 0.8),
    );
    let s16 = ratio(&http_sync[1], &http[1]);
    line(
        "HTTP sync 16 conns / HTTP lazy 16 conns",
        format!("{s16:.2}"),
        ">= 0.50",
        Some(s16 >= 0.5),
    );
    if let Some(a) = &always {
        let sa = ratio(&http_sync[1], a);
        line(
            "HTTP sync 16 conns / direct sync_interval always 16",
            format!("{sa:.2}"),
            ">= 5.00",
            Some(sa >= 5.0),
        );
    }
    let rs = ratio(&streamed[0], &direct[2]);
    line(
        "HTTP stream 1 conn lazy / direct 256 in flight",
        format!("{rs:.2}"),
        "",
        None,
    );
    let rsb = ratio(&streamed[0], &batch[1]);
    line(
        "HTTP stream 1 conn lazy / HTTP batch 1000 lazy",
        format!("{rsb:.2}"),
        "",
        None,
    );
    let ss = ratio(&streamed[1], &streamed[0]);
    line(
        "HTTP stream sync / HTTP stream lazy",
        format!("{ss:.2}"),
        "",
        None,
    );
    let sb = ratio(&batch_sync[1], &batch[1]);
    line(
        "HTTP batch 1000 sync / HTTP batch 1000 lazy",
        format!("{sb:.2}"),
        ">= 0.60",
        Some(sb >= 0.6),
    );
    line(
        "nats-server alone: exec to /healthz (ms, median)",
        format!("{:.1}", ms(alone)),
        "",
        None,
    );
    line(
        "daemon: exec to READY=1 (ms, median)",
        format!("{:.1}", ms(daemon_ready)),
        "",
        None,
    );
    line(
        "daemon READY over nats-server /healthz (ms)",
        format!("{ready_over:+.1}"),
        "<= +100",
        Some(ready_over <= 100.0),
    );
    line(
        "kill -9 to healthy (ms, worst of 3)",
        format!("{:.0}", ms(healthy_max)),
        "<= 1000",
        Some(ms(healthy_max) <= 1000.0),
    );
    line(
        "kill -9 to first acked publish (ms, worst of 3)",
        format!("{:.0}", ms(ack_max)),
        "",
        None,
    );
    line(
        "daemon RSS idle (MB)",
        format!("{rss_idle:.1}"),
        "<= 20",
        Some(rss_idle <= 20.0),
    );
    line(
        "daemon RSS under load, peak (MB)",
        format!("{rss_load:.1}"),
        "<= 40",
        Some(rss_load <= 40.0),
    );
    // CPU of the loads compared above (the per-load column has them all).
    let cpu = |r: &Run| r.cpu.unwrap_or((f64::NAN, f64::NAN));
    let (d16, n16) = cpu(&http[1]);
    let (_, direct_n16) = cpu(&direct[1]);
    let (db, nb) = cpu(&batch[1]);
    line(
        "daemon CPU s per 100k, HTTP 16 conns",
        format!("{d16:.2}"),
        "",
        None,
    );
    line(
        "nats-server CPU s per 100k, HTTP 16 conns / direct 16",
        format!("{n16:.2}/{direct_n16:.2}"),
        "",
        None,
    );
    line(
        "daemon CPU s per 100k, HTTP batch of 1000",
        format!("{db:.2}"),
        "",
        None,
    );
    line(
        "nats-server CPU s per 100k, HTTP batch of 1000",
        format!("{nb:.2}"),
        "",
        None,
    );

    let doc = json!({
        "loadgen": opts.loadgen.name(),
        "direct": direct.iter().map(Run::json).collect::<Vec<_>>(),
        "http": http.iter().map(Run::json).collect::<Vec<_>>(),
        "http_batch": batch.iter().map(Run::json).collect::<Vec<_>>(),
        "http_sync": http_sync.iter().map(Run::json).collect::<Vec<_>>(),
        "http_batch_sync": batch_sync.iter().map(Run::json).collect::<Vec<_>>(),
        "http_stream": streamed.iter().map(Run::json).collect::<Vec<_>>(),
        "direct_sync_always": always.as_ref().map(Run::json),
        "durability_ratios": {"sync16_lazy16": s16, "batch1000_sync_lazy": sb,
            "sync16_direct_always16": always.as_ref().map(|a| ratio(&http_sync[1], a))},
        "ratios": {"stream1_direct256": rs, "stream1_batch1000": rsb, "stream_sync_lazy": ss, "batch1000_direct256": rb, "http1_direct1": r1, "http16_direct16": r16, "http64_direct256": r64},
        "readiness_ms": {"nats_server_alone": ms(alone), "daemon_ready": ms(daemon_ready)},
        "recovery_ms": rec.iter().map(|r| json!({"healthy": ms(r.healthy), "first_ack": ms(r.first_ack)})).collect::<Vec<_>>(),
        "rss_mb": {"idle": rss_idle, "load_peak": rss_load},
    });
    match doc {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}
