//! GET /metrics: the daemon's counters, its child, its declared streams and
//! nats-server's own figures in the Prometheus text format; and the
//! throughput and latency figures of /api/v1/status.
//!
//! The counters are read from atomics. JetStream and the monitor are asked
//! at scrape time, concurrently and within [`FETCH_TIMEOUT`], so a scrape
//! never hangs on a dead or stopped nats-server: what could not be had is
//! left out and `marketprism_broker_jetstream_up` /
//! `marketprism_broker_nats_monitor_up` say so. Per-stream and per-consumer
//! series exist only for the streams the config declares and their durable
//! consumers, so their number stays bounded.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use hyper::{header, Response, StatusCode};
use serde_json::{json, Value};

use super::error::ApiError;
use crate::app::App;
use crate::health::{self, Verdict};
use crate::stats::{Endpoint, Kind, Outcome, Text, RATE_WINDOW, TEXT_CONTENT_TYPE};
use crate::supervisor::{Exit, Phase};

type Resp = Response<Full<Bytes>>;

/// How long a scrape waits for JetStream and the monitor.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Consumers listed per stream at most (the stream's consumer count still
/// counts them all).
const MAX_CONSUMERS: usize = 100;

const P: &str = "marketprism_broker_";

/// A declared stream's figures.
struct StreamFigures {
    name: String,
    messages: u64,
    bytes: u64,
    consumers: usize,
    /// Its newest message's time; None when it never had one.
    last_message: Option<SystemTime>,
    durables: Vec<ConsumerFigures>,
}

/// A per-stream or per-consumer metric: name, help, how to read it.
type Figure<T> = (&'static str, &'static str, fn(&T) -> u64);

struct ConsumerFigures {
    name: String,
    num_pending: u64,
    num_ack_pending: u64,
}

/// One declared stream: None when it does not exist.
async fn stream_figures(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<StreamFigures>, String> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    let stream = match js.get_stream(name).await {
        Ok(s) => s,
        Err(e) => {
            return match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(format!("stream {name}: {e}")),
            }
        }
    };
    let info = stream.cached_info();
    let mut durables = Vec::new();
    if info.state.consumer_count > 0 {
        // (No CONSUMER.LIST round trip for a stream without consumers.)
        let mut list = stream.consumers();
        while let Some(c) = list.next().await {
            let c = c.map_err(|e| format!("consumers of {name}: {e}"))?;
            // Ephemeral consumers come and go under random names: series for
            // them would pile up in Prometheus.
            if let Some(durable) = c.config.durable_name {
                durables.push(ConsumerFigures {
                    name: durable,
                    num_pending: c.num_pending,
                    num_ack_pending: c.num_ack_pending as u64,
                });
                if durables.len() == MAX_CONSUMERS {
                    break;
                }
            }
        }
    }
    durables.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(StreamFigures {
        name: name.to_string(),
        messages: info.state.messages,
        bytes: info.state.bytes,
        consumers: info.state.consumer_count,
        last_message: u64::try_from(info.state.last_timestamp.unix_timestamp_nanos())
            .ok()
            .filter(|n| *n > 0)
            .map(|n| UNIX_EPOCH + Duration::from_nanos(n)),
        durables,
    }))
}

/// The declared streams' figures; None when JetStream cannot be asked or
/// does not answer in time.
async fn declared_streams(app: &App) -> Option<Vec<StreamFigures>> {
    let nats = app.connected_nats()?;
    let names: Vec<String> = app.config().streams().into_keys().collect();
    let work = futures::future::join_all(names.iter().map(|n| stream_figures(&nats.js, n)));
    match app.while_connected(FETCH_TIMEOUT, work).await {
        Ok(all) => match all.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(v) => Some(v.into_iter().flatten().collect()),
            Err(e) => {
                tracing::debug!(error = %e, "metrics: JetStream: {e}");
                None
            }
        },
        Err(_) => None,
    }
}

/// nats-server's /varz, within the scrape's time.
async fn varz(app: &App) -> Option<Value> {
    tokio::time::timeout(FETCH_TIMEOUT, app.varz())
        .await
        .ok()
        .flatten()
}

/// What /health would answer now. A probe that does not finish within the
/// scrape's time counts as unhealthy, as /health's own JetStream probe
/// does when it times out.
async fn health_verdict(app: &App) -> Verdict {
    match tokio::time::timeout(FETCH_TIMEOUT, super::health::probed_facts(app)).await {
        Ok(f) => health::verdict(&health::problems(&f), &health::catching_up(&f)),
        Err(_) => Verdict::Unhealthy,
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// GET /metrics.
pub async fn metrics(app: &App) -> Result<Resp, ApiError> {
    let jetstream_enabled = app.config().nats.jetstream_enabled;
    let (streams, varz, verdict) = tokio::join!(
        async {
            if jetstream_enabled {
                declared_streams(app).await
            } else {
                None
            }
        },
        varz(app),
        health_verdict(app)
    );
    let mut t = Text::new();
    let n = |s: &str| format!("{P}{s}");

    t.family(&n("build_info"), Kind::Gauge, "The daemon's version.");
    t.int(
        &n("build_info"),
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    t.single(
        &n("start_time_seconds"),
        Kind::Gauge,
        "When the daemon started, in seconds since the Unix epoch.",
        unix_seconds(app.started_at),
    );

    // Publishes.
    let stats = &app.stats;
    let name = n("publishes_total");
    t.family(
        &name,
        Kind::Counter,
        "HTTP publishes by endpoint (single, batch: per entry, stream: per line) and outcome: persisted (a stream acknowledged it), core (no stream captures the subject), rejected (4xx), failed (5xx).",
    );
    for ep in Endpoint::ALL {
        for o in Outcome::ALL {
            t.int(
                &name,
                &[("endpoint", ep.as_str()), ("outcome", o.as_str())],
                stats.publishes(ep, o),
            );
        }
    }
    t.histogram(
        &n("publish_duration_seconds"),
        "Successful POST /api/v1/publish requests, from request to answer.",
        &stats.publish_latency.snapshot(),
        1e9,
    );
    t.histogram(
        &n("jetstream_ack_seconds"),
        "JetStream publishes (single publishes, batch entries and streamed lines), from the hand-over to the NATS connection until the stream's ack.",
        &stats.ack_latency.snapshot(),
        1e9,
    );
    let sync = app.durability.stats();
    t.histogram(
        &n("sync_seconds"),
        "Group-commit syncs of the JetStream store (nats.durability: sync), start to end: one covers every HTTP publish acknowledged before it began.",
        &sync.seconds.snapshot(),
        1e9,
    );
    t.histogram(
        &n("sync_acks"),
        "Acknowledged HTTP publishes each group-commit sync covered.",
        &sync.acks.snapshot(),
        1.0,
    );
    t.family(
        &n("syncs_total"),
        Kind::Counter,
        "Group-commit syncs of the JetStream store, failed ones included.",
    );
    t.int(&n("syncs_total"), &[], sync.syncs.load(Relaxed));
    t.family(
        &n("sync_failures_total"),
        Kind::Counter,
        "Failed group-commit syncs by cause: no_space (ENOSPC, EDQUOT: answered 507), io (EIO and the rest: answered 503).",
    );
    for k in crate::durability::FailureKind::ALL {
        t.int(
            &n("sync_failures_total"),
            &[("error", k.as_str())],
            sync.failures[k as usize].load(Relaxed),
        );
    }
    t.histogram(
        &n("batch_entries"),
        "Entries per POST /api/v1/publish/batch request.",
        &stats.batch_entries.snapshot(),
        1.0,
    );
    let snap = stats.snapshot();
    t.family(
        &n("messages_consumed_total"),
        Kind::Counter,
        "Messages delivered to consumers through the daemon.",
    );
    t.int(&n("messages_consumed_total"), &[], snap.consumed);
    t.family(
        &n("sse_dropped_total"),
        Kind::Counter,
        "Messages not delivered to an event-stream (GET /api/v1/subscribe) client because it read too slowly (or its subject's fan-out fell behind and skipped them); each announced to the client in a `dropped` event.",
    );
    t.int(
        &n("sse_dropped_total"),
        &[],
        stats.sse_dropped.load(std::sync::atomic::Ordering::Relaxed),
    );
    t.family(
        &n("sse_lost_total"),
        Kind::Counter,
        &format!("Messages NATS delivered for an event stream but async-nats dropped before the fan-out took them (it fell {} behind on a subject); their clients were not told. A lower bound; should stay 0.", crate::app::EVENTS_CAPACITY),
    );
    t.int(
        &n("sse_lost_total"),
        &[],
        stats.sse_lost.load(std::sync::atomic::Ordering::Relaxed),
    );
    t.single(
        &n("sse_clients"),
        Kind::Gauge,
        "Event-stream (GET /api/v1/subscribe) clients connected now (at most api.sse_max_clients).",
        app.sse_clients.load(Relaxed) as f64,
    );
    t.family(
        &n("http_connections_evicted_total"),
        Kind::Counter,
        "HTTP connections closed at api.max_connections to make room for a new client: the oldest that was idle or had not sent a complete request head.",
    );
    t.int(
        &n("http_connections_evicted_total"),
        &[],
        stats
            .http_evicted
            .load(std::sync::atomic::Ordering::Relaxed),
    );

    // Reloads.
    let (ok, failed) = stats.reloads();
    t.family(
        &n("reloads_total"),
        Kind::Counter,
        "Configuration reloads (SIGHUP) by outcome.",
    );
    t.int(&n("reloads_total"), &[("outcome", "ok")], ok);
    t.int(&n("reloads_total"), &[("outcome", "failed")], failed);

    // Certificates: what the last start or reload loaded, which is what
    // the API and nats-server serve (both re-read the files on SIGHUP).
    let security = app.security();
    if !security.certificates.is_empty() {
        let name = n("certificate_expiry_timestamp_seconds");
        t.family(
            &name,
            Kind::Gauge,
            "When the first certificate of each TLS file of the config expires (notAfter, Unix time), as read at the last start or reload: key is the config key naming the file (api.tls.cert_file, nats.tls.ca_file, ...).",
        );
        for c in &security.certificates {
            let path = c.path.to_string_lossy();
            t.sample(
                &name,
                &[("key", c.key.as_str()), ("path", &path)],
                c.not_after as f64,
            );
        }
    }

    // Refused requests (API tokens).
    let name = n("http_auth_refused_total");
    t.family(
        &name,
        Kind::Counter,
        "HTTP requests refused by api.tokens_file, by reason: missing (no bearer token, 401), unknown (a token not in the file, 401), read_only (a read token on a mutating endpoint, 403).",
    );
    for r in super::auth::Refusal::ALL {
        t.int(
            &name,
            &[("reason", r.as_str())],
            stats.auth_refused[r as usize].load(std::sync::atomic::Ordering::Relaxed),
        );
    }

    // The child.
    t.single(
        &n("nats_connected"),
        Kind::Gauge,
        "1 while the daemon's own NATS client is connected.",
        f64::from(u8::from(app.is_connected())),
    );
    t.family(
        &n("health_status"),
        Kind::Gauge,
        "What GET /health answers now: 1 for its status (healthy: 200; catching_up or unhealthy: 503), 0 for the others.",
    );
    for v in [Verdict::Healthy, Verdict::CatchingUp, Verdict::Unhealthy] {
        t.int(
            &n("health_status"),
            &[("status", v.as_str())],
            u64::from(v == verdict),
        );
    }
    if app.supervised {
        let child = app.child.borrow().clone();
        let up = child.phase == Phase::Running && child.healthy;
        t.single(
            &n("child_up"),
            Kind::Gauge,
            "1 while the supervised nats-server runs and answers its health probe.",
            f64::from(u8::from(up)),
        );
        t.family(
            &n("child_restarts_total"),
            Kind::Counter,
            "Restarts of the supervised nats-server (crashes, hangs, reloads that need one).",
        );
        t.int(&n("child_restarts_total"), &[], child.restarts);
        if let Some(pid) = child.pid {
            t.single(
                &n("child_pid"),
                Kind::Gauge,
                "The supervised nats-server's process id.",
                f64::from(pid),
            );
        }
        if let Some(since) = child.healthy_since {
            t.single(
                &n("child_healthy_since_seconds"),
                Kind::Gauge,
                "When the running nats-server became healthy, in seconds since the Unix epoch.",
                unix_seconds(since),
            );
        }
        if let Some(exit) = child.last_exit {
            let (how, v) = match exit {
                Exit::Code(c) => ("code", c),
                Exit::Signal(s) => ("signal", s),
            };
            t.family(
                &n("child_last_exit"),
                Kind::Gauge,
                "How the last nats-server process ended: its exit code (how=\"code\") or the signal that killed it (how=\"signal\").",
            );
            t.sample(&n("child_last_exit"), &[("how", how)], f64::from(v));
        }
    }

    // Declared streams and their durable consumers.
    if jetstream_enabled {
        t.single(
            &n("jetstream_up"),
            Kind::Gauge,
            "1 when this scrape got the declared streams' figures from JetStream.",
            f64::from(u8::from(streams.is_some())),
        );
    }
    if let Some(streams) = &streams {
        let per_stream: [Figure<StreamFigures>; 3] = [
            ("stream_messages", "Messages in a declared stream.", |s| {
                s.messages
            }),
            ("stream_bytes", "Bytes in a declared stream.", |s| s.bytes),
            ("stream_consumers", "Consumers of a declared stream.", |s| {
                s.consumers as u64
            }),
        ];
        for (metric, help, get) in per_stream {
            t.family(&n(metric), Kind::Gauge, help);
            for s in streams {
                t.int(&n(metric), &[("stream", &s.name)], get(s));
            }
        }
        let per_consumer: [Figure<ConsumerFigures>; 2] = [
            (
                "consumer_num_pending",
                "Messages a durable consumer of a declared stream has not been delivered yet.",
                |c| c.num_pending,
            ),
            (
                "consumer_num_ack_pending",
                "Messages delivered to a durable consumer of a declared stream and not acknowledged yet.",
                |c| c.num_ack_pending,
            ),
        ];
        for (metric, help, get) in per_consumer {
            t.family(&n(metric), Kind::Gauge, help);
            for s in streams {
                for c in &s.durables {
                    t.int(
                        &n(metric),
                        &[("stream", &s.name), ("consumer", &c.name)],
                        get(c),
                    );
                }
            }
        }
    }

    alarms(&mut t, app, streams.as_deref());

    // nats-server's own figures.
    t.single(
        &n("nats_monitor_up"),
        Kind::Gauge,
        "1 when this scrape got nats-server's /varz from its monitor port.",
        f64::from(u8::from(varz.is_some())),
    );
    if let Some(v) = &varz {
        let figures: [(&str, &str, Kind, &str); 9] = [
            (
                "connections",
                "nats_connections",
                Kind::Gauge,
                "Client connections to nats-server (varz connections).",
            ),
            (
                "subscriptions",
                "nats_subscriptions",
                Kind::Gauge,
                "Subscriptions in nats-server (varz subscriptions).",
            ),
            (
                "slow_consumers",
                "nats_slow_consumers_total",
                Kind::Counter,
                "Slow consumers nats-server has seen since it started (varz slow_consumers).",
            ),
            (
                "in_msgs",
                "nats_in_msgs_total",
                Kind::Counter,
                "Messages nats-server received since it started (varz in_msgs).",
            ),
            (
                "out_msgs",
                "nats_out_msgs_total",
                Kind::Counter,
                "Messages nats-server sent since it started (varz out_msgs).",
            ),
            (
                "in_bytes",
                "nats_in_bytes_total",
                Kind::Counter,
                "Bytes nats-server received since it started (varz in_bytes).",
            ),
            (
                "out_bytes",
                "nats_out_bytes_total",
                Kind::Counter,
                "Bytes nats-server sent since it started (varz out_bytes).",
            ),
            (
                "mem",
                "nats_mem_bytes",
                Kind::Gauge,
                "nats-server's resident memory (varz mem).",
            ),
            (
                "cpu",
                "nats_cpu_percent",
                Kind::Gauge,
                "nats-server's CPU use in percent of one core (varz cpu).",
            ),
        ];
        for (key, metric, kind, help) in figures {
            if let Some(x) = v.get(key).and_then(Value::as_f64) {
                t.single(&n(metric), kind, help, x);
            }
        }
    }

    let mut resp = Response::new(Full::new(Bytes::from(t.finish())));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(TEXT_CONTENT_TYPE),
    );
    Ok(resp)
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

/// The age of each declared stream's newest message (from this scrape's
/// stream infos), the declared alarm thresholds, and whether each alarm is
/// in force (the monitor's last check, as /health and /api/v1/status have
/// it: 0 also for a stream or consumer that does not exist).
fn alarms(t: &mut Text, app: &App, streams: Option<&[StreamFigures]>) {
    let n = |s: &str| format!("{P}{s}");
    if let Some(streams) = streams {
        let now = SystemTime::now();
        t.family(
            &n("stream_last_message_age_seconds"),
            Kind::Gauge,
            "Seconds since the newest message of a declared stream was stored, whoever published it (no sample for a stream that never had one).",
        );
        for s in streams {
            if let Some(last) = s.last_message {
                let age = now.duration_since(last).unwrap_or_default();
                t.sample(
                    &n("stream_last_message_age_seconds"),
                    &[("stream", &s.name)],
                    round(age.as_secs_f64(), 3),
                );
            }
        }
    }
    let rules = crate::alarms::Rules::of(&app.config());
    let active = app.alarm_board().alarms;
    let on = |stream: &str, consumer: Option<&str>| {
        f64::from(u8::from(
            active
                .iter()
                .any(|a| a.stream == stream && a.consumer.as_deref() == consumer),
        ))
    };
    if !rules.streams.is_empty() {
        t.family(
            &n("stream_silent_threshold_seconds"),
            Kind::Gauge,
            "A declared stream's alert_if_silent_for.",
        );
        for r in &rules.streams {
            t.sample(
                &n("stream_silent_threshold_seconds"),
                &[("stream", &r.stream)],
                r.after.as_secs_f64(),
            );
        }
        t.family(
            &n("stream_silent_alarm"),
            Kind::Gauge,
            "1 while a declared stream's newest message is older than its alert_if_silent_for (counted from the daemon's start or the stream's creation at the earliest).",
        );
        for r in &rules.streams {
            t.sample(
                &n("stream_silent_alarm"),
                &[("stream", &r.stream)],
                on(&r.stream, None),
            );
        }
    }
    if !rules.consumers.is_empty() {
        t.family(
            &n("consumer_pending_threshold"),
            Kind::Gauge,
            "A declared consumer's alert_if_pending_over, in messages.",
        );
        for r in &rules.consumers {
            t.int(
                &n("consumer_pending_threshold"),
                &[("stream", &r.stream), ("consumer", &r.consumer)],
                r.over,
            );
        }
        t.family(
            &n("consumer_pending_alarm"),
            Kind::Gauge,
            "1 while a declared consumer has more unprocessed messages (num_pending + num_ack_pending) than its alert_if_pending_over.",
        );
        for r in &rules.consumers {
            t.sample(
                &n("consumer_pending_alarm"),
                &[("stream", &r.stream), ("consumer", &r.consumer)],
                on(&r.stream, Some(&r.consumer)),
            );
        }
    }
}

/// The status' "throughput": publishes and consumes per second over the
/// last minute.
pub fn throughput(app: &App) -> Value {
    let (publish, consume) = app.stats.rates(Instant::now());
    json!({
        "window_seconds": RATE_WINDOW.as_secs(),
        "publish_per_sec": round(publish, 3),
        "consume_per_sec": round(consume, 3),
    })
}

/// The status' "latency": p50 and p99 of successful single publishes and
/// of JetStream acks in ms, estimated from the histograms (null before the
/// first one).
pub fn latency(app: &App) -> Value {
    let http = app.stats.publish_latency.snapshot();
    let ack = app.stats.ack_latency.snapshot();
    let ms = |h: &crate::stats::HistSnapshot, q: f64| h.quantile(q).map(|ns| round(ns / 1e6, 3));
    json!({
        "publish_p50_ms": ms(&http, 0.5),
        "publish_p99_ms": ms(&http, 0.99),
        "publish_count": http.count(),
        "ack_p50_ms": ms(&ack, 0.5),
        "ack_p99_ms": ms(&ack, 0.99),
    })
}
