//! Silence and backlog alarms against a real daemon and nats-server: a
//! stream with `alert_if_silent_for` and a consumer with
//! `alert_if_pending_over` raise alarms that /api/v1/status, /health,
//! /metrics and systemd's STATUS= line show, clear when the stream hears
//! again or the backlog is acknowledged, and follow a reload without a
//! nats-server restart. Run with MPB_NATS_SERVER set to each nats-server.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// The active alarms of `kind` on `stream` in /api/v1/status.
async fn alarms(d: &Daemon, kind: &str, stream: &str) -> Vec<Value> {
    let (code, s) = d.get("/api/v1/status").await;
    assert_eq!(code, 200, "{s}");
    s["alarms"]
        .as_array()
        .unwrap_or_else(|| panic!("no alarms list in {s}"))
        .iter()
        .filter(|a| a["kind"] == kind && a["stream"] == stream)
        .cloned()
        .collect()
}

/// Waits until a check that began after `t` is done: what it found is what
/// status shows now.
async fn checked_after(d: &Daemon, t: SystemTime) {
    eventually(WAIT, "an alarm check after the last step", || async {
        let (_, s) = d.get("/api/v1/status").await;
        let at = humantime::parse_rfc3339(s["alarms_checked_at"].as_str()?).ok()?;
        (at > t).then_some(())
    })
    .await
}

/// One /metrics sample: `name{labels}` as the text shows it.
async fn metric(d: &Daemon, name_and_labels: &str) -> Option<f64> {
    let (code, _, body) = d
        .request(None, "GET", "/metrics", &[], vec![])
        .await
        .unwrap();
    assert_eq!(code, 200);
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

const P: &str = "marketprism_broker_";

/// Panics unless `value` matches the schema `name` of doc/openapi.json
/// (JSON Schema 2020-12, as OpenAPI 3.1 has it).
fn conforms(name: &str, value: &Value) {
    const CHECK: &str = r#"
import json, sys
import jsonschema
doc = json.load(open(sys.argv[1]))
schema = doc["components"]["schemas"][sys.argv[2]]
jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(json.loads(sys.argv[3]))
"#;
    let doc = concat!(env!("CARGO_MANIFEST_DIR"), "/doc/openapi.json");
    let out = std::process::Command::new(python())
        .args(["-c", CHECK, doc, name, &value.to_string()])
        .output()
        .unwrap();
    out.expect_code_for(0, &format!("{value} as doc/openapi.json's {name}"));
}

fn reload(d: &Daemon, edit: impl FnOnce(String) -> String) {
    d.edit_config(edit);
    d.signal(Signal::SIGHUP);
}

async fn js_publish(d: &Daemon, subject: &str) {
    let js = async_nats::jetstream::new(d.client().await);
    js.publish(subject.to_string(), "{\"p\":1}".into())
        .await
        .unwrap()
        .await
        .expect("the stream's ack");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_stream_warns_then_fails_health_when_declared_and_a_reload_applies_live() {
    let notify = NotifySocket::bind();
    let d = Daemon::builder()
        .env("NOTIFY_SOCKET", notify.path_str())
        .nats(
            "  streams:\n    FEED:\n      subjects: [\"feed.>\"]\n      alert_if_silent_for: 2s\n    NEVER:\n      subjects: [\"never.>\"]\n      alert_if_silent_for: 2s\n",
        )
        .start();
    d.wait_healthy(WAIT).await;
    let child = d.child_pid().unwrap();

    // Heard from just now: not silent, and /metrics knows the age. (Any
    // answer given less than 2 s after the publish began must say so.)
    let published = Instant::now();
    let (code, _) = d.publish("feed.btc", json!({"p": 1})).await;
    assert_eq!(code, 200);
    checked_after(&d, SystemTime::now()).await;
    let found = alarms(&d, "silent", "FEED").await;
    let age = metric(
        &d,
        &format!("{P}stream_last_message_age_seconds{{stream=\"FEED\"}}"),
    )
    .await
    .expect("an age for FEED");
    if published.elapsed() < Duration::from_secs(2) {
        assert_eq!(found, Vec::<Value>::new());
        assert!((0.0..2.0).contains(&age), "age {age}");
    }
    assert_eq!(
        metric(
            &d,
            &format!("{P}stream_silent_threshold_seconds{{stream=\"FEED\"}}")
        )
        .await,
        Some(2.0)
    );
    // NEVER has no message: no age, but silent 2 s after the daemon started.
    assert_eq!(
        metric(
            &d,
            &format!("{P}stream_last_message_age_seconds{{stream=\"NEVER\"}}")
        )
        .await,
        None
    );

    // Past 2 s without a message: silent, and no sooner.
    let a = eventually(WAIT, "FEED silent", || async {
        alarms(&d, "silent", "FEED").await.pop()
    })
    .await;
    assert!(published.elapsed() > Duration::from_secs(2), "{a}");
    assert_eq!(a["alert_if_silent_for_seconds"], 2.0);
    assert!(a["silent_for_seconds"].as_u64().unwrap() >= 2, "{a}");
    assert_eq!(a["fails_health"], false);
    assert!(a["last_message"].is_string(), "{a}");
    conforms("Alarm", &a);
    let never = alarms(&d, "silent", "NEVER").await;
    assert_eq!(
        never.len(),
        1,
        "a stream that never had a message: {never:?}"
    );
    assert_eq!(never[0]["last_message"], Value::Null);
    conforms("Alarm", &never[0]);
    // A warning: /health stays 200 and lists it.
    let (code, h) = d.get("/health").await;
    assert_eq!(code, 200, "{h}");
    let warnings = h["warnings"].to_string();
    assert!(
        warnings.contains("stream FEED has had no new message for"),
        "{h}"
    );
    assert_eq!(h["problems"], json!([]));
    conforms("Health", &h);
    assert_eq!(
        metric(&d, &format!("{P}stream_silent_alarm{{stream=\"FEED\"}}")).await,
        Some(1.0)
    );
    let age = metric(
        &d,
        &format!("{P}stream_last_message_age_seconds{{stream=\"FEED\"}}"),
    )
    .await
    .unwrap();
    assert!(age >= 2.0, "age {age}");
    let status = eventually(WAIT, "STATUS= naming the alarm", || async {
        notify
            .all()
            .into_iter()
            .filter_map(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("STATUS="))
                    .map(str::to_string)
            })
            .find(|l| l.contains("alarms: ") && l.contains("FEED silent for"))
    })
    .await;
    assert!(status.contains("NEVER silent for"), "{status}");

    // A message from a plain NATS client (not through the daemon) clears it.
    js_publish(&d, "feed.eth").await;
    let heard = SystemTime::now();
    eventually(WAIT, "FEED's alarm to clear", || async {
        alarms(&d, "silent", "FEED").await.is_empty().then_some(())
    })
    .await;
    checked_after(&d, heard).await;
    assert_eq!(
        metric(&d, &format!("{P}stream_silent_alarm{{stream=\"FEED\"}}")).await,
        Some(0.0)
    );
    let (_, h) = d.get("/health").await;
    assert!(!h["warnings"].to_string().contains("FEED"), "{h}");

    // Declared to fail /health: 503 naming it, applied by a reload that
    // leaves nats-server alone.
    reload(&d, |c| {
        c.replace(
            "    NEVER:\n      subjects: [\"never.>\"]\n      alert_if_silent_for: 2s\n",
            "    NEVER:\n      subjects: [\"never.>\"]\n      alert_if_silent_for: 2s\n      health_fails_on_alarm: true\n",
        )
    });
    let h = d.wait_health(503, WAIT).await;
    assert_eq!(h["status"], "unhealthy");
    assert!(
        h["problems"]
            .to_string()
            .contains("stream NEVER has had no new message"),
        "{h}"
    );
    // A longer threshold, by reload: the alarm is over at once.
    reload(&d, |c| {
        c.replace(
            "      alert_if_silent_for: 2s\n      health_fails_on_alarm: true\n",
            "      alert_if_silent_for: 1h\n      health_fails_on_alarm: true\n",
        )
    });
    d.wait_health(200, WAIT).await;
    assert!(alarms(&d, "silent", "NEVER").await.is_empty());
    assert_eq!(
        metric(
            &d,
            &format!("{P}stream_silent_threshold_seconds{{stream=\"NEVER\"}}")
        )
        .await,
        Some(3600.0)
    );
    assert_eq!(d.child_pid(), Some(child), "a reload restarted nats-server");
    let (_, s) = d.get("/api/v1/status").await;
    assert_eq!(s["nats_server"]["restarts"], 0, "{s}");
    let log = d.log();
    assert!(
        log.contains("nats.streams.NEVER.alert_if_silent_for: 2s -> 1h"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_backlog_alarms_until_acknowledged() {
    let d = Daemon::builder()
        .nats(
            "  streams:\n    WORK:\n      subjects: [\"work.>\"]\n      consumers:\n        w:\n          alert_if_pending_over: 10\n          health_fails_on_alarm: true\n",
        )
        .start();
    d.wait_healthy(WAIT).await;
    assert_eq!(
        metric(
            &d,
            &format!("{P}consumer_pending_threshold{{stream=\"WORK\",consumer=\"w\"}}")
        )
        .await,
        Some(10.0)
    );

    // Ten is not over ten.
    for i in 0..10 {
        let (code, _) = d.publish(&format!("work.{i}"), json!({"i": i})).await;
        assert_eq!(code, 200);
    }
    checked_after(&d, SystemTime::now()).await;
    assert!(alarms(&d, "pending", "WORK").await.is_empty());
    d.wait_health(200, WAIT).await;

    // The eleventh is: an alarm, and /health fails as declared.
    js_publish(&d, "work.10").await;
    let a = eventually(WAIT, "WORK/w's backlog alarm", || async {
        alarms(&d, "pending", "WORK").await.pop()
    })
    .await;
    assert_eq!(
        (
            &a["consumer"],
            &a["unprocessed"],
            &a["num_pending"],
            &a["alert_if_pending_over"]
        ),
        (&json!("w"), &json!(11), &json!(11), &json!(10)),
        "{a}"
    );
    conforms("Alarm", &a);
    let h = d.wait_health(503, WAIT).await;
    assert!(
        h["problems"]
            .to_string()
            .contains("consumer w of stream WORK has 11 unprocessed messages"),
        "{h}"
    );
    assert_eq!(
        metric(
            &d,
            &format!("{P}consumer_pending_alarm{{stream=\"WORK\",consumer=\"w\"}}")
        )
        .await,
        Some(1.0)
    );

    // Fetched but not acknowledged: still unprocessed.
    let (code, f) = d
        .post(
            "/api/v1/streams/WORK/consumers/w/fetch",
            json!({"batch": 11, "expires_ms": 2000}),
        )
        .await;
    assert_eq!(code, 200, "{f}");
    assert_eq!(f["count"], 11, "{f}");
    let fetched = SystemTime::now();
    checked_after(&d, fetched).await;
    let a = alarms(&d, "pending", "WORK").await;
    assert_eq!(a.len(), 1, "fetching alone must not clear it");
    assert_eq!(
        (&a[0]["num_pending"], &a[0]["num_ack_pending"]),
        (&json!(0), &json!(11))
    );

    // Acknowledged: the alarm is over, /health is 200 again.
    let tokens: Vec<Value> = f["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ack_token"].clone())
        .collect();
    let (code, r) = d
        .post(
            "/api/v1/streams/WORK/consumers/w/ack",
            json!({"tokens": tokens}),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    eventually(WAIT, "the backlog alarm to clear", || async {
        alarms(&d, "pending", "WORK").await.is_empty().then_some(())
    })
    .await;
    let h = d.wait_health(200, WAIT).await;
    assert_eq!(h["warnings"], json!([]), "{h}");
    assert_eq!(
        metric(
            &d,
            &format!("{P}consumer_pending_alarm{{stream=\"WORK\",consumer=\"w\"}}")
        )
        .await,
        Some(0.0)
    );
}
