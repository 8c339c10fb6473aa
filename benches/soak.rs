//! The soak: steady HTTP publish load on the release-built daemon for
//! minutes, with a SIGHUP reload every `--reload-every` seconds and a
//! kill -9 of nats-server every `--kill-every` seconds. Every 10 s it prints
//! the window's rate, p50/p99, 503s, and the daemon's RSS and open fds; at
//! the end it reads the stream back and checks that every publish answered
//! 200 is in it.
//!
//! Verdicts: RSS and fds flat (the last window against the one at one
//! minute), p99 outside the kill windows not drifting (last third against
//! the first), nothing lost.
//!
//! Run: `./scripts/soak [--secs 600] [--rate 2000] [--json FILE]`.

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use support::*;

const WINDOW: Duration = Duration::from_secs(10);
const CONNS: u64 = 4;

struct Opts {
    secs: u64,
    rate: u64,
    reload_every: u64,
    kill_every: u64,
    json: Option<PathBuf>,
    nats_server: PathBuf,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            secs: 600,
            rate: 2000,
            reload_every: 30,
            kill_every: 60,
            json: None,
            nats_server: std::env::var_os("MPB_NATS_SERVER")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/usr/sbin/nats-server".into()),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut num = |what: &str| -> u64 {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{what} N"))
            };
            match a.as_str() {
                "--secs" => o.secs = num("--secs"),
                "--rate" => o.rate = num("--rate"),
                "--reload-every" => o.reload_every = num("--reload-every"),
                "--kill-every" => o.kill_every = num("--kill-every"),
                "--json" => o.json = Some(args.next().expect("--json FILE").into()),
                "--nats-server" => o.nats_server = args.next().expect("--nats-server P").into(),
                _ => {}
            }
        }
        o
    }
}

/// What one publisher saw: (ms since start, latency µs) of each 200, the
/// ids acknowledged, 503s, and anything else.
#[derive(Default)]
struct Seen {
    ok: Vec<(u32, u32)>,
    acked: Vec<u64>,
    unavailable: Vec<u32>,
    other: Vec<String>,
}

async fn publisher(port: u16, conn: u64, per_sec: u64, t0: Instant, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let gap = Duration::from_secs_f64(1.0 / per_sec as f64);
    let mut tick = tokio::time::interval(gap);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sender = None;
    let mut k = 0u64;
    while !stop.load(Relaxed) {
        tick.tick().await;
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match connect(port).await {
                Ok(s) => sender.insert(s),
                Err(e) => {
                    seen.other.push(format!("connect: {e}"));
                    continue;
                }
            },
        };
        k += 1;
        let id = conn * 1_000_000_000 + k;
        let body = format!(r#"{{"subject":"soak.c{conn}","message":{{"id":{id}}}}}"#);
        let req = hyper::Request::post("/api/v1/publish")
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let t = Instant::now();
        let at = t.duration_since(t0).as_millis() as u32;
        match s.send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp.headers().contains_key("retry-after");
                let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                match (status, body) {
                    (200, Ok(b)) if b.windows(16).any(|w| w == b"\"persisted\":true") => {
                        seen.ok.push((at, t.elapsed().as_micros() as u32));
                        seen.acked.push(id);
                    }
                    (503, _) if retry_after => seen.unavailable.push(at),
                    (s, b) => seen.other.push(format!("{s}: {b:?}")),
                }
            }
            Err(e) => {
                seen.other.push(format!("request: {e}"));
                sender = None;
            }
        }
    }
    seen
}

fn pct(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Every id stored in the SOAK stream.
async fn stored_ids(nats: u16) -> (HashSet<u64>, u64) {
    let client = async_nats::connect(format!("nats://127.0.0.1:{nats}"))
        .await
        .expect("connect to nats-server");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("SOAK").await.expect("the SOAK stream");
    let total = stream.info().await.unwrap().state.messages;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut ids = HashSet::with_capacity(total as usize);
    let mut messages = consumer.messages().await.unwrap();
    let mut read = 0u64;
    while read < total {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the stream read back stalls")
            .unwrap()
            .unwrap();
        read += 1;
        if let Ok(v) = serde_json::from_slice::<Value>(&m.payload) {
            if let Some(id) = v["id"].as_u64() {
                ids.insert(id);
            }
        }
    }
    (ids, total)
}

fn main() {
    let opts = Opts::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(opts));
}

async fn run(opts: Opts) {
    let spec = Spec {
        nats_server: opts.nats_server.clone(),
        workers: None,
        nats_extra: "  max_connections: 1000\n  streams:\n    SOAK:\n      subjects: [\"soak.>\"]\n      max_msgs: -1\n".into(),
    };
    let (d, _) = Daemon::start(&spec);
    println!(
        "soak: {} s, {} publishes/s over {CONNS} connections, reload every {} s, kill -9 of nats-server every {} s",
        opts.secs, opts.rate, opts.reload_every, opts.kill_every
    );
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CONNS)
        .map(|c| {
            tokio::spawn(publisher(
                d.http,
                c,
                (opts.rate / CONNS).max(1),
                t0,
                stop.clone(),
            ))
        })
        .collect();

    // Disturbances and samples on one clock.
    let kills: Arc<Mutex<Vec<u32>>> = Arc::default();
    let mut samples: Vec<(u64, f64, usize)> = Vec::new();
    let (mut reloads, mut high) = (0u64, false);
    let end = t0 + Duration::from_secs(opts.secs);
    let mut next_sample = t0 + WINDOW;
    let mut next_reload = t0 + Duration::from_secs(opts.reload_every);
    let mut next_kill = t0 + Duration::from_secs(opts.kill_every);
    println!("\n{:>6} {:>8} {:>5}", "t s", "RSS MB", "fds");
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_reload {
            // A hot change, so nats-server is signalled, not restarted.
            let path = d.config_path();
            let text = std::fs::read_to_string(&path).unwrap();
            let (from, to) = if high {
                ("1001", "1000")
            } else {
                ("1000", "1001")
            };
            let text = text.replace(
                &format!("max_connections: {from}"),
                &format!("max_connections: {to}"),
            );
            std::fs::write(&path, text).unwrap();
            high = !high;
            d.signal(Signal::SIGHUP);
            reloads += 1;
            next_reload += Duration::from_secs(opts.reload_every);
        }
        if now >= next_kill {
            if let Some(pid) = d.child_pid() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                kills
                    .lock()
                    .unwrap()
                    .push(now.duration_since(t0).as_millis() as u32);
            }
            next_kill += Duration::from_secs(opts.kill_every);
        }
        if now >= next_sample {
            let secs = now.duration_since(t0).as_secs();
            samples.push((secs, rss_mb(d.pid()), fd_count(d.pid())));
            let (_, rss, fds) = samples.last().unwrap();
            println!("{secs:>6} {rss:>8.1} {fds:>5}");
            next_sample += WINDOW;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Relaxed);
    let mut seen = Seen::default();
    for t in tasks {
        let s = t.await.unwrap();
        seen.ok.extend(s.ok);
        seen.acked.extend(s.acked);
        seen.unavailable.extend(s.unavailable);
        seen.other.extend(s.other);
    }
    assert!(
        d.pid() > 0 && kill(Pid::from_raw(d.pid() as i32), None).is_ok(),
        "the daemon died during the soak:\n{}",
        d.log()
    );

    // Per window: rate and latency; a window with a kill in it, or right
    // after one, is a kill window.
    let kills = kills.lock().unwrap().clone();
    let n = (opts.secs * 1000).div_ceil(WINDOW.as_millis() as u64) as usize;
    let mut lat: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (at, l) in &seen.ok {
        if let Some(w) = lat.get_mut(*at as usize / WINDOW.as_millis() as usize) {
            w.push(*l);
        }
    }
    let mut unavailable = vec![0u32; n];
    for at in &seen.unavailable {
        if let Some(w) = unavailable.get_mut(*at as usize / WINDOW.as_millis() as usize) {
            *w += 1;
        }
    }
    let wms = WINDOW.as_millis() as u32;
    let kill_window = |i: usize| {
        kills
            .iter()
            .any(|k| k / wms == i as u32 || k / wms + 1 == i as u32)
    };
    println!(
        "\n{:>6} {:>8} {:>8} {:>8} {:>6}  (k: a kill in or just before the window)",
        "t s", "per s", "p50 ms", "p99 ms", "503s"
    );
    let mut p99s = Vec::new();
    for (i, w) in lat.iter_mut().enumerate() {
        let rate = w.len() as f64 / WINDOW.as_secs_f64();
        let (p50, p99) = (pct(w, 0.5), pct(w, 0.99));
        p99s.push((i, p99, kill_window(i)));
        println!(
            "{:>6} {rate:>8.0} {p50:>8.3} {p99:>8.3} {:>6} {}",
            (i + 1) * WINDOW.as_secs() as usize,
            unavailable[i],
            if kill_window(i) { "k" } else { "" }
        );
    }

    // Read back.
    let (stored, total) = stored_ids(d.nats).await;
    let lost: Vec<u64> = seen
        .acked
        .iter()
        .copied()
        .filter(|id| !stored.contains(id))
        .collect();
    d.stop();

    let third = p99s.len() / 3;
    let calm = |r: &[(usize, f64, bool)]| median(r.iter().filter(|x| !x.2).map(|x| x.1).collect());
    let (p99_first, p99_last) = (calm(&p99s[..third]), calm(&p99s[p99s.len() - third..]));
    let at_minute = samples
        .iter()
        .find(|s| s.0 >= 60)
        .or(samples.first())
        .copied()
        .unwrap_or((0, f64::NAN, 0));
    let last = samples.last().copied().unwrap_or(at_minute);
    let rss_max = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    let fds_max = samples.iter().map(|s| s.2).max().unwrap_or(0);
    let verdict = |ok: bool| if ok { "ok" } else { "MISS" };
    let rss_ok = last.1 <= at_minute.1 + 5.0;
    let fds_ok = last.2 <= at_minute.2 + 2;
    // NaN when every window of a third had a kill (short runs): no verdict.
    let drift_ok = p99_last.is_nan() || p99_last <= p99_first * 1.5;
    println!();
    println!("acknowledged publishes       {}", seen.acked.len());
    println!(
        "stored in SOAK               {total} ({} distinct acknowledged ids found)",
        seen.acked.len() - lost.len()
    );
    println!(
        "lost (acked, not stored)     {}  {}",
        lost.len(),
        verdict(lost.is_empty())
    );
    println!("503 with Retry-After         {}", seen.unavailable.len());
    println!(
        "other answers                {}  {}",
        seen.other.len(),
        verdict(seen.other.is_empty())
    );
    for o in seen.other.iter().take(5) {
        println!("    {o}");
    }
    println!("kills / reloads              {} / {reloads}", kills.len());
    println!(
        "RSS MB at 1 min / end / max  {:.1} / {:.1} / {rss_max:.1}  {}",
        at_minute.1,
        last.1,
        verdict(rss_ok)
    );
    println!(
        "fds at 1 min / end / max     {} / {} / {fds_max}  {}",
        at_minute.2,
        last.2,
        verdict(fds_ok)
    );
    println!(
        "p99 ms outside kill windows, first third / last third  {p99_first:.3} / {p99_last:.3}  {}",
        verdict(drift_ok)
    );
    if let Some(path) = &opts.json {
        let doc = json!({
            "secs": opts.secs, "rate": opts.rate, "acked": seen.acked.len(), "stored": total,
            "lost": lost.len(), "unavailable_503": seen.unavailable.len(), "other": seen.other.len(),
            "kills": kills.len(), "reloads": reloads,
            "rss_mb": {"at_1min": at_minute.1, "end": last.1, "max": rss_max},
            "fds": {"at_1min": at_minute.2, "end": last.2, "max": fds_max},
            "p99_ms_calm": {"first_third": p99_first, "last_third": p99_last},
            "windows": p99s.iter().map(|(i, p, k)| json!({"end_s": (i + 1) * 10, "p99_ms": p, "kill": k})).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        println!("wrote {}", path.display());
    }
    if !lost.is_empty() {
        std::process::exit(1);
    }
}
