//! Observability: GET /metrics (checked with Prometheus' own Python parser),
//! the status' throughput and latency, and the nats-server monitor
//! passthrough /api/v1/nats/{varz,connz,routez,subsz,jsz,healthz}.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// Parses the exposition with prometheus_client's parser, checks what it
/// does not (every family has HELP and TYPE, histograms are cumulative and
/// end in +Inf == _count) and returns
/// `{family: {"type", "help", "samples": [[name, {labels}, value]]}}`.
const PARSE: &str = r##"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
text = sys.stdin.read()
out = {}
for f in text_string_to_metric_families(text):
    assert f.name not in out, "family twice: " + f.name
    assert f.documentation, "no HELP for " + f.name
    assert f.type in ("counter", "gauge", "histogram"), f.name + ": " + f.type
    if f.type == "histogram":
        buckets = [s for s in f.samples if s.name.endswith("_bucket")]
        les = [s.labels["le"] for s in buckets]
        assert les and les[-1] == "+Inf", f.name + ": " + repr(les)
        bounds = [float(le) for le in les]
        assert bounds == sorted(bounds), f.name + ": " + repr(les)
        counts = [s.value for s in buckets]
        assert counts == sorted(counts), f.name + ": not cumulative " + repr(counts)
        count = [s.value for s in f.samples if s.name.endswith("_count")]
        assert count == [counts[-1]], f.name + ": _count " + repr(count)
        assert any(s.name.endswith("_sum") for s in f.samples), f.name + ": no _sum"
    out[f.name] = {"type": f.type, "help": f.documentation,
                   "samples": [[s.name, s.labels, s.value] for s in f.samples]}
# Every sample line belongs to the family whose TYPE came last.
current = None
for line in text.splitlines():
    if line.startswith("# TYPE "):
        current = line.split()[2]
    elif line and not line.startswith("#"):
        name = line.split("{")[0].split(" ")[0]
        assert current and name.startswith(current), "sample outside its family: " + line
print(json.dumps(out))
"##;

/// The families of a /metrics scrape, as the Python parser read them.
struct Metrics(BTreeMap<String, Value>);

impl Metrics {
    /// The value of sample `name` with exactly these labels (besides none
    /// other), if present.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0.values().find_map(|f| {
            f["samples"].as_array().unwrap().iter().find_map(|s| {
                let got: BTreeMap<String, String> = serde_json::from_value(s[1].clone()).unwrap();
                (s[0] == name && got == want).then(|| s[2].as_f64().unwrap())
            })
        })
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            panic!(
                "no sample {name}{labels:?} in:\n{}",
                serde_json::to_string_pretty(&self.0).unwrap()
            )
        })
    }

    fn family(&self, name: &str) -> &Value {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("no family {name}"))
    }
}

async fn scrape(d: &Daemon) -> (String, Metrics) {
    let (status, headers, body) = request(d.http, "GET", "/metrics", &[], vec![])
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.ends_with('\n'));
    let mut py = Command::new(python())
        .arg("-c")
        .arg(PARSE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    out.expect_code_for(
        0,
        &format!("prometheus_client, given /metrics\n{text}(end of /metrics),"),
    );
    let families: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    (text, Metrics(families))
}

const P: &str = "marketprism_broker_";

fn m(s: &str) -> String {
    format!("{P}{s}")
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_the_daemon_did() {
    let d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;

    // A durable consumer on MARKET_DATA, so its pending counts show.
    let client = d.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream("MARKET_DATA").await.unwrap();
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("metrics-test".into()),
            ..Default::default()
        })
        .await
        .unwrap();

    let good = 5;
    for i in 0..good {
        let (status, r) = d
            .publish("market.binance.BTCUSDT.trade", json!({"i": i}))
            .await;
        assert_eq!((status, r["persisted"].clone()), (200, json!(true)), "{r}");
    }
    let core = 2;
    for _ in 0..core {
        let (status, r) = d.publish("nostream.x", json!(1)).await;
        assert_eq!((status, r["persisted"].clone()), (200, json!(false)), "{r}");
    }
    let bad: [&[u8]; 3] = [
        b"{not json",
        br#"{"subject": "market.*", "message": 1}"#,
        br#"{"subject": "$JS.API.INFO", "message": 1}"#,
    ];
    for body in bad {
        let (status, _, _) = d.publish_raw(body.to_vec()).await;
        assert_eq!(status, 400);
    }
    let (status, r) = d
        .post(
            "/api/v1/publish/batch",
            json!([
                {"subject": "market.okx.BTC-USDT.trade", "message": {"b": 1}},
                {"subject": "market.okx.BTC-USDT.trade", "message": {"b": 2}},
                {"subject": "nostream.y", "message": 3},
                {"subject": "bad subject", "message": 4},
            ]),
        )
        .await;
    assert_eq!(status, 207, "{r}");

    let (text, mx) = scrape(&d).await;
    let publishes = |ep: &str, outcome: &str| {
        mx.value(
            &m("publishes_total"),
            &[("endpoint", ep), ("outcome", outcome)],
        )
    };
    assert_eq!(publishes("single", "persisted"), good as f64, "{text}");
    assert_eq!(publishes("single", "core"), core as f64);
    assert_eq!(publishes("single", "rejected"), bad.len() as f64);
    assert_eq!(publishes("single", "failed"), 0.0);
    assert_eq!(publishes("batch", "persisted"), 2.0);
    assert_eq!(publishes("batch", "core"), 1.0);
    assert_eq!(publishes("batch", "rejected"), 1.0);
    assert_eq!(publishes("batch", "failed"), 0.0);
    assert_eq!(mx.family(&m("publishes"))["type"], "counter");

    // The HTTP latency histogram counts the successful single publishes;
    // the ack histogram every persisted one, single or batch.
    assert_eq!(
        mx.family(&m("publish_duration_seconds"))["type"],
        "histogram"
    );
    assert_eq!(
        mx.value(&m("publish_duration_seconds_count"), &[]),
        (good + core) as f64
    );
    assert_eq!(
        mx.value(&m("publish_duration_seconds_bucket"), &[("le", "+Inf")]),
        (good + core) as f64
    );
    assert!(mx.value(&m("publish_duration_seconds_sum"), &[]) > 0.0);
    assert!(mx
        .get(&m("publish_duration_seconds_bucket"), &[("le", "0.0001")])
        .is_some());
    assert!(mx
        .get(&m("publish_duration_seconds_bucket"), &[("le", "5")])
        .is_some());
    assert_eq!(
        mx.value(&m("jetstream_ack_seconds_count"), &[]),
        (good + 2) as f64
    );
    assert_eq!(mx.value(&m("batch_entries_count"), &[]), 1.0);
    assert_eq!(mx.value(&m("batch_entries_sum"), &[]), 4.0);
    assert_eq!(mx.value(&m("batch_entries_bucket"), &[("le", "1")]), 0.0);
    assert_eq!(mx.value(&m("batch_entries_bucket"), &[("le", "10")]), 1.0);
    assert_eq!(mx.value(&m("messages_consumed_total"), &[]), 0.0);

    // The child.
    assert_eq!(mx.value(&m("child_up"), &[]), 1.0);
    assert_eq!(mx.value(&m("child_restarts_total"), &[]), 0.0);
    assert_eq!(
        mx.value(&m("child_pid"), &[]),
        f64::from(d.child_pid().unwrap())
    );
    assert!(mx
        .get(&m("child_last_exit"), &[("how", "signal")])
        .is_none());
    assert_eq!(mx.value(&m("nats_connected"), &[]), 1.0);
    assert_eq!(mx.value(&m("reloads_total"), &[("outcome", "ok")]), 0.0);
    assert_eq!(
        mx.value(&m("build_info"), &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );

    // Declared streams, as JetStream reports them.
    assert_eq!(mx.value(&m("jetstream_up"), &[]), 1.0);
    let (_, info) = d.get("/api/v1/streams/MARKET_DATA").await;
    assert_eq!(info["messages"], good + 2);
    for (metric, key) in [
        ("stream_messages", "messages"),
        ("stream_bytes", "bytes"),
        ("stream_consumers", "consumer_count"),
    ] {
        assert_eq!(
            mx.value(&m(metric), &[("stream", "MARKET_DATA")]),
            info[key].as_f64().unwrap(),
            "{metric}"
        );
    }
    assert_eq!(
        mx.value(&m("stream_consumers"), &[("stream", "MARKET_DATA")]),
        1.0
    );
    assert_eq!(
        mx.value(&m("stream_messages"), &[("stream", "SYSTEM_EVENTS")]),
        0.0
    );
    let consumer = [("stream", "MARKET_DATA"), ("consumer", "metrics-test")];
    assert_eq!(
        mx.value(&m("consumer_num_pending"), &consumer),
        (good + 2) as f64
    );
    assert_eq!(mx.value(&m("consumer_num_ack_pending"), &consumer), 0.0);

    // nats-server's own figures, from its monitor.
    assert_eq!(mx.value(&m("nats_monitor_up"), &[]), 1.0);
    // The daemon's client and ours.
    assert!(mx.value(&m("nats_connections"), &[]) >= 2.0);
    assert!(mx.value(&m("nats_in_msgs_total"), &[]) >= (good + core + 3) as f64);
    for metric in [
        "nats_subscriptions",
        "nats_out_msgs_total",
        "nats_in_bytes_total",
        "nats_out_bytes_total",
        "nats_slow_consumers_total",
        "nats_mem_bytes",
        "nats_cpu_percent",
    ] {
        assert!(mx.get(&m(metric), &[]).is_some(), "{metric}: {text}");
    }
    assert_eq!(mx.family(&m("nats_in_msgs"))["type"], "counter");
    assert_eq!(mx.family(&m("nats_mem_bytes"))["type"], "gauge");

    // HEAD is GET without a body; other methods are refused.
    let (status, _, _) = request(d.http, "POST", "/metrics", &[], vec![])
        .await
        .unwrap();
    assert_eq!(status, 405);
}

/// The alarm families (tests/alarms.rs raises and clears the alarms) as
/// Prometheus' own parser reads them: gauges with HELP, thresholds as
/// declared, every declared stream's message age.
#[tokio::test(flavor = "multi_thread")]
async fn alarm_thresholds_states_and_message_ages_parse() {
    let d = Daemon::builder()
        .nats("  streams:\n    WATCHED:\n      subjects: [\"watched.>\"]\n      alert_if_silent_for: 1h\n      consumers:\n        c:\n          alert_if_pending_over: 10\n")
        .start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let (status, _) = d.publish("market.binance.BTCUSDT.trade", json!(1)).await;
    assert_eq!(status, 200);
    let (text, mx) = scrape(&d).await;
    for family in [
        "stream_last_message_age_seconds",
        "stream_silent_threshold_seconds",
        "stream_silent_alarm",
        "consumer_pending_threshold",
        "consumer_pending_alarm",
    ] {
        assert_eq!(mx.family(&m(family))["type"], "gauge", "{family}");
    }
    let age = mx.value(
        &m("stream_last_message_age_seconds"),
        &[("stream", "MARKET_DATA")],
    );
    assert!((0.0..60.0).contains(&age), "{age}");
    // No message yet: no age (rather than the age of nothing).
    assert!(
        mx.get(
            &m("stream_last_message_age_seconds"),
            &[("stream", "WATCHED")]
        )
        .is_none(),
        "{text}"
    );
    let watched = [("stream", "WATCHED")];
    assert_eq!(
        mx.value(&m("stream_silent_threshold_seconds"), &watched),
        3600.0
    );
    assert_eq!(mx.value(&m("stream_silent_alarm"), &watched), 0.0);
    // Only the streams with a threshold have threshold and alarm series.
    assert!(mx
        .get(&m("stream_silent_alarm"), &[("stream", "MARKET_DATA")])
        .is_none());
    let c = [("stream", "WATCHED"), ("consumer", "c")];
    assert_eq!(mx.value(&m("consumer_pending_threshold"), &c), 10.0);
    assert_eq!(mx.value(&m("consumer_pending_alarm"), &c), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_and_reloads_are_counted() {
    let d = Daemon::builder().nats("  max_payload: 1MB\n").start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let old = d.child_pid().unwrap();

    kill(old, Signal::SIGKILL);
    d.wait_new_child(old, Duration::from_secs(20)).await;
    let mx = eventually(Duration::from_secs(10), "child_up 1 again", || async {
        let (_, mx) = scrape(&d).await;
        (mx.get(&m("child_up"), &[]) == Some(1.0)).then_some(mx)
    })
    .await;
    assert_eq!(mx.value(&m("child_restarts_total"), &[]), 1.0);
    assert_eq!(mx.value(&m("child_last_exit"), &[("how", "signal")]), 9.0);
    assert_ne!(mx.value(&m("child_pid"), &[]), f64::from(old));

    // A hot reload that works, then a broken file.
    d.edit_config(|c| c.replace("max_payload: 1MB", "max_payload: 2MB"));
    d.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(15), "reloads ok == 1", || async {
        let (_, mx) = scrape(&d).await;
        (mx.get(&m("reloads_total"), &[("outcome", "ok")]) == Some(1.0)).then_some(())
    })
    .await;
    d.edit_config(|c| c.replace("max_payload: 2MB", "max_payload: [oops"));
    d.signal(Signal::SIGHUP);
    let mx = eventually(Duration::from_secs(15), "reloads failed == 1", || async {
        let (_, mx) = scrape(&d).await;
        (mx.get(&m("reloads_total"), &[("outcome", "failed")]) == Some(1.0)).then_some(mx)
    })
    .await;
    assert_eq!(mx.value(&m("reloads_total"), &[("outcome", "ok")]), 1.0);
    assert_eq!(mx.value(&m("child_restarts_total"), &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_stay_fast_when_nats_is_unreachable() {
    // External mode, with nothing listening where NATS should be.
    let [nats, monitor] = free_ports::<2>();
    let d = Daemon::builder()
        .top("auto_start_nats: false\n")
        .nats(&format!("  nats_url: \"nats://127.0.0.1:{nats}\"\n"))
        .ports((free_port(), nats, monitor))
        .start();
    eventually(Duration::from_secs(20), "the HTTP API", || async {
        get_json(d.http, "/health").await.ok()
    })
    .await;
    let started = Instant::now();
    let (text, mx) = scrape(&d).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(mx.value(&m("nats_connected"), &[]), 0.0);
    assert_eq!(mx.value(&m("jetstream_up"), &[]), 0.0);
    assert_eq!(mx.value(&m("nats_monitor_up"), &[]), 0.0);
    // What /health answers (503 unhealthy), for alerting on it.
    assert_eq!(
        mx.value(&m("health_status"), &[("status", "unhealthy")]),
        1.0
    );
    assert_eq!(mx.value(&m("health_status"), &[("status", "healthy")]), 0.0);
    assert!(!text.contains("stream_messages"), "{text}");
    assert!(!text.contains("nats_connections"), "{text}");
    assert!(!text.contains("child_up"), "no child in external mode");

    // The passthrough says the monitor cannot be reached.
    let (status, v) = d.get("/api/v1/nats/varz").await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["success"], false);
    assert_eq!(v["error"]["code"], "nats_monitor_unavailable");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_throughput_and_latency() {
    let d = Daemon::start();
    d.wait_healthy(Duration::from_secs(20)).await;
    let (_, st) = d.get("/api/v1/status").await;
    assert_eq!(st["latency"]["publish_p50_ms"], Value::Null);
    assert_eq!(st["latency"]["publish_count"], 0);
    assert_eq!(st["throughput"]["publish_per_sec"], 0.0);
    assert_eq!(st["throughput"]["window_seconds"], 60);

    let n = 20;
    for i in 0..n {
        let (status, _) = d.publish("market.x.y.trade", json!({"i": i})).await;
        assert_eq!(status, 200);
    }
    let (_, st) = d.get("/api/v1/status").await;
    // The seed's fields are all still there.
    for k in [
        "service",
        "timestamp",
        "uptime_seconds",
        "nats_server",
        "jetstream_streams",
        "message_stats",
    ] {
        assert!(st.get(k).is_some(), "{k} missing: {st}");
    }
    assert_eq!(st["message_stats"]["published"], n);
    let rate = st["throughput"]["publish_per_sec"].as_f64().unwrap();
    // n messages within the daemon's first minute (at most a minute).
    let up = st["uptime_seconds"].as_f64().unwrap().max(1.0);
    assert!(
        rate >= n as f64 / 61.0 && rate <= n as f64 / (up - 1.0).max(1.0),
        "rate {rate} for {n} messages in {up} s"
    );
    assert_eq!(st["throughput"]["consume_per_sec"], 0.0);
    let lat = &st["latency"];
    assert_eq!(lat["publish_count"], n);
    let p50 = lat["publish_p50_ms"].as_f64().unwrap();
    let p99 = lat["publish_p99_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= 5000.0, "{lat}");
    let ack50 = lat["ack_p50_ms"].as_f64().unwrap();
    assert!(ack50 > 0.0, "{lat}");
}

/// The monitor passthrough, on both nats-server versions.
#[tokio::test(flavor = "multi_thread")]
async fn nats_monitor_endpoints_pass_through() {
    for bin in nats_servers() {
        let d = Daemon::builder().bin(&bin).start();
        d.wait_healthy(Duration::from_secs(20)).await;
        let ctx = bin.display().to_string();

        let (status, varz) = d.get("/api/v1/nats/varz").await;
        assert_eq!(status, 200, "{ctx}: {varz}");
        assert_eq!(varz["server_name"], "test", "{ctx}");
        assert_eq!(varz["port"], d.nats, "{ctx}");

        // A subscription of ours, so connz?subs=1 lists it.
        let client = d.client().await;
        let _sub = subscribe_synced(&client, "passthrough.probe").await;
        let (status, connz) = d.get("/api/v1/nats/connz?subs=1").await;
        assert_eq!(status, 200, "{ctx}: {connz}");
        let subs: Vec<String> = connz["connections"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| {
                c["subscriptions_list"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        assert!(
            subs.iter().any(|s| s == "passthrough.probe"),
            "{ctx}: the query string did not reach nats-server: {connz}"
        );
        // Without the query, no subscription lists.
        let (_, plain) = d.get("/api/v1/nats/connz").await;
        assert!(
            plain["connections"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c.get("subscriptions_list").is_none()),
            "{ctx}: {plain}"
        );

        for (name, key) in [
            ("routez", "routes"),
            ("subsz", "num_subscriptions"),
            ("jsz", "config"),
            ("healthz", "status"),
        ] {
            let (status, v) = d.get(&format!("/api/v1/nats/{name}")).await;
            assert_eq!(status, 200, "{ctx}: {name}: {v}");
            assert!(v.get(key).is_some(), "{ctx}: {name} lacks {key}: {v}");
        }
        let (_, healthz) = d.get("/api/v1/nats/healthz").await;
        assert_eq!(healthz["status"], "ok", "{ctx}");
        let (status, jsz) = d.get("/api/v1/nats/jsz?streams=true").await;
        assert_eq!(status, 200, "{ctx}");
        assert_eq!(jsz["streams"], 3, "{ctx}: {jsz}");

        // Unknown names are 404, other methods 405; info stays ours.
        for name in ["bogus", "accountz", "varz/x", ""] {
            let (status, v) = d.get(&format!("/api/v1/nats/{name}")).await;
            assert_eq!(status, 404, "{ctx}: {name}: {v}");
            assert_eq!(v["error"]["code"], "not_found");
        }
        let (status, _, _) = request(d.http, "POST", "/api/v1/nats/varz", &[], vec![])
            .await
            .unwrap();
        assert_eq!(status, 405);
        let (status, info) = d.get("/api/v1/nats/info").await;
        assert_eq!(status, 200);
        assert!(info.get("ports").is_some(), "{info}");
    }
}
