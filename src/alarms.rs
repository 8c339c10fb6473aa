//! Silence and lag alarms (pure): the declared thresholds
//! (`alert_if_silent_for` per stream, `alert_if_pending_over` per declared
//! consumer) against what nats-server last said about those streams and
//! consumers -> the alarms in force, each with when it began.
//!
//! The app's monitor gathers an [`Observation`] (one stream info per
//! stream with a silence threshold, one consumer info per consumer with a
//! pending threshold, every [`check_interval`]); the health module turns
//! the alarms into /health's warnings (or problems, with
//! `health_fails_on_alarm`) and the STATUS= line; /metrics and
//! /api/v1/status show them.
//!
//! Two decisions live here:
//! - A stream is silent when the newest message nats-server holds (its
//!   state's `last_ts`, so messages published by plain NATS clients count
//!   too) is older than the threshold. The clock starts no earlier than the
//!   daemon's start or the stream's creation, whichever is later: a daemon
//!   that just (re)started, or a stream just created, gives its publishers
//!   one threshold to show up before it alarms. A purge or max_age keeps
//!   `last_ts`: an emptied stream is not a fresh one.
//! - A consumer's backlog is what it has not processed: messages not
//!   delivered yet (`num_pending`) plus those delivered and not
//!   acknowledged (`num_ack_pending`). A worker that fetched a batch and
//!   died has not processed it, so fetching alone does not clear the alarm.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::config::Config;

/// How often the monitor looks when nothing asks for more.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How often it looks at most (a very short silence threshold).
pub const CHECK_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// The declared thresholds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    pub streams: Vec<SilenceRule>,
    pub consumers: Vec<PendingRule>,
}

/// `alert_if_silent_for` on a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct SilenceRule {
    pub stream: String,
    pub after: Duration,
    pub fails_health: bool,
}

/// `alert_if_pending_over` on a declared consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingRule {
    pub stream: String,
    pub consumer: String,
    pub over: u64,
    pub fails_health: bool,
}

impl Rules {
    /// The thresholds the config declares, in stream and consumer order.
    pub fn of(c: &Config) -> Rules {
        let mut r = Rules::default();
        for (name, s) in c.streams() {
            if let Some(after) = s.alert_if_silent_for {
                r.streams.push(SilenceRule {
                    stream: name.clone(),
                    after: after.get(),
                    fails_health: s.health_fails_on_alarm,
                });
            }
            for (consumer, k) in &s.consumers {
                if let Some(over) = k.alert_if_pending_over {
                    r.consumers.push(PendingRule {
                        stream: name.clone(),
                        consumer: consumer.clone(),
                        over,
                        fails_health: k.health_fails_on_alarm,
                    });
                }
            }
        }
        r
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.consumers.is_empty()
    }
}

/// How often the monitor looks: every [`CHECK_EVERY`], or often enough to
/// notice a short silence within half its threshold, but at most once per
/// [`CHECK_AT_MOST_EVERY`].
pub fn check_interval(rules: &Rules) -> Duration {
    rules
        .streams
        .iter()
        .map(|r| r.after / 2)
        .fold(CHECK_EVERY, Duration::min)
        .max(CHECK_AT_MOST_EVERY)
}

/// What nats-server said at one moment about the streams and consumers
/// that have a threshold (those that exist).
#[derive(Debug, Clone)]
pub struct Observation {
    pub at: SystemTime,
    pub streams: Vec<StreamSeen>,
    pub consumers: Vec<ConsumerSeen>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamSeen {
    pub stream: String,
    /// When nats-server created the stream.
    pub created: SystemTime,
    /// Its newest message's time; None when it never had one.
    pub last_message: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSeen {
    pub stream: String,
    pub consumer: String,
    pub num_pending: u64,
    pub num_ack_pending: u64,
}

/// One alarm in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Alarm {
    pub stream: String,
    /// The consumer, for a pending alarm.
    pub consumer: Option<String>,
    pub kind: Kind,
    /// When the alarm began: for silence, when the threshold ran out; for
    /// a backlog, the first check that saw it over.
    pub since: SystemTime,
    /// `health_fails_on_alarm`: /health answers 503 while it lasts.
    pub fails_health: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Silent {
        /// The threshold.
        after: Duration,
        /// Where the silence is counted from (see the module's doc).
        silent_since: SystemTime,
        /// How long, as of the check.
        silent_for: Duration,
        last_message: Option<SystemTime>,
    },
    Pending {
        /// The threshold.
        over: u64,
        num_pending: u64,
        num_ack_pending: u64,
    },
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Silent { .. } => "silent",
            Kind::Pending { .. } => "pending",
        }
    }
}

/// Where a stream's silence is counted from: its newest message, but no
/// earlier than its creation or the daemon's start.
pub fn silent_since(seen: &StreamSeen, started: SystemTime) -> SystemTime {
    [seen.last_message, Some(seen.created), Some(started)]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(started)
}

/// The alarms in force after `obs`. `before` (the previous check's
/// alarms) keeps a backlog's start. A stream or consumer that does not
/// exist has no alarm here: /health names it missing already.
pub fn evaluate(
    rules: &Rules,
    obs: &Observation,
    started: SystemTime,
    before: &[Alarm],
) -> Vec<Alarm> {
    let mut out = Vec::new();
    for r in &rules.streams {
        let Some(seen) = obs.streams.iter().find(|s| s.stream == r.stream) else {
            continue;
        };
        let since = silent_since(seen, started);
        let silent_for = obs.at.duration_since(since).unwrap_or_default();
        if silent_for > r.after {
            out.push(Alarm {
                stream: r.stream.clone(),
                consumer: None,
                kind: Kind::Silent {
                    after: r.after,
                    silent_since: since,
                    silent_for,
                    last_message: seen.last_message,
                },
                since: since + r.after,
                fails_health: r.fails_health,
            });
        }
    }
    for r in &rules.consumers {
        let Some(seen) = obs
            .consumers
            .iter()
            .find(|c| c.stream == r.stream && c.consumer == r.consumer)
        else {
            continue;
        };
        let unprocessed = seen.num_pending.saturating_add(seen.num_ack_pending);
        if unprocessed > r.over {
            let since = before
                .iter()
                .find(|a| {
                    a.stream == r.stream
                        && a.consumer.as_deref() == Some(&r.consumer)
                        && matches!(a.kind, Kind::Pending { .. })
                })
                .map_or(obs.at, |a| a.since);
            out.push(Alarm {
                stream: r.stream.clone(),
                consumer: Some(r.consumer.clone()),
                kind: Kind::Pending {
                    over: r.over,
                    num_pending: seen.num_pending,
                    num_ack_pending: seen.num_ack_pending,
                },
                since,
                fails_health: r.fails_health,
            });
        }
    }
    out
}

/// Whole seconds, as people read them ("42s", "5m 12s").
fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Alarm {
    /// A few words for systemd's STATUS= line: "MD silent for 42s",
    /// "ORDERS/worker 11 unprocessed (over 10)".
    pub fn short(&self) -> String {
        match &self.kind {
            Kind::Silent { silent_for, .. } => {
                format!("{} silent for {}", self.stream, secs(*silent_for))
            }
            Kind::Pending {
                over,
                num_pending,
                num_ack_pending,
            } => format!(
                "{}/{} {} unprocessed (over {over})",
                self.stream,
                self.consumer.as_deref().unwrap_or_default(),
                num_pending.saturating_add(*num_ack_pending)
            ),
        }
    }

    /// The alarm for /api/v1/status: what, since when, the figures.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "kind": self.kind.as_str(),
            "stream": self.stream,
            "consumer": self.consumer,
            "since": rfc3339(self.since),
            "fails_health": self.fails_health,
            "message": self.to_string(),
        });
        match &self.kind {
            Kind::Silent {
                after,
                silent_since,
                silent_for,
                last_message,
            } => {
                v["alert_if_silent_for_seconds"] = json!(after.as_secs_f64());
                v["silent_for_seconds"] = json!(silent_for.as_secs());
                v["silent_since"] = json!(rfc3339(*silent_since));
                v["last_message"] = json!(last_message.map(rfc3339));
            }
            Kind::Pending {
                over,
                num_pending,
                num_ack_pending,
            } => {
                v["alert_if_pending_over"] = json!(over);
                v["unprocessed"] = json!(num_pending.saturating_add(*num_ack_pending));
                v["num_pending"] = json!(num_pending);
                v["num_ack_pending"] = json!(num_ack_pending);
            }
        }
        v
    }
}

impl fmt::Display for Alarm {
    /// The sentence /health and /api/v1/status show.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Silent {
                after,
                silent_for,
                last_message,
                ..
            } => {
                write!(
                    f,
                    "stream {} has had no new message for {} (alert_if_silent_for: {}); last message: ",
                    self.stream,
                    secs(*silent_for),
                    humantime::format_duration(*after)
                )?;
                match last_message {
                    Some(t) => f.write_str(&rfc3339(*t)),
                    None => f.write_str("none"),
                }
            }
            Kind::Pending {
                over,
                num_pending,
                num_ack_pending,
            } => {
                let n = num_pending.saturating_add(*num_ack_pending);
                write!(
                    f,
                    "consumer {} of stream {} has {n} unprocessed message{} (alert_if_pending_over: {over}): {num_pending} not delivered yet, {num_ack_pending} delivered and not acknowledged",
                    self.consumer.as_deref().unwrap_or_default(),
                    self.stream,
                    if n == 1 { "" } else { "s" }
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_str, Format};

    const T0: u64 = 1_700_000_000;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + s)
    }

    fn rules() -> Rules {
        Rules {
            streams: vec![SilenceRule {
                stream: "MD".into(),
                after: Duration::from_secs(30),
                fails_health: false,
            }],
            consumers: vec![PendingRule {
                stream: "MD".into(),
                consumer: "w".into(),
                over: 10,
                fails_health: true,
            }],
        }
    }

    fn stream(created: u64, last: Option<u64>) -> StreamSeen {
        StreamSeen {
            stream: "MD".into(),
            created: at(created),
            last_message: last.map(at),
        }
    }

    fn consumer(pending: u64, ack_pending: u64) -> ConsumerSeen {
        ConsumerSeen {
            stream: "MD".into(),
            consumer: "w".into(),
            num_pending: pending,
            num_ack_pending: ack_pending,
        }
    }

    fn obs(now: u64, streams: Vec<StreamSeen>, consumers: Vec<ConsumerSeen>) -> Observation {
        Observation {
            at: at(now),
            streams,
            consumers,
        }
    }

    #[test]
    fn rules_come_from_the_declared_streams_and_consumers() {
        let c = parse_str(
            "nats:\n  streams:\n    MD:\n      subjects: [\"md.>\"]\n      alert_if_silent_for: 30s\n      consumers:\n        w:\n          alert_if_pending_over: 10\n          health_fails_on_alarm: true\n        quiet: {}\n",
            Format::Yaml,
        )
        .unwrap()
        .0;
        assert_eq!(Rules::of(&c), rules());
        assert!(Rules::of(&Config::default()).is_empty());
    }

    #[test]
    fn a_stream_is_silent_once_its_last_message_is_older_than_the_threshold() {
        let r = rules();
        // Started at 0, created at 0, last message at 100.
        let quiet = |now| {
            evaluate(
                &r,
                &obs(now, vec![stream(0, Some(100))], vec![]),
                at(0),
                &[],
            )
        };
        assert!(
            quiet(130).is_empty(),
            "exactly the threshold is not over it"
        );
        let a = quiet(142);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].since, at(130));
        assert_eq!(
            a[0].kind,
            Kind::Silent {
                after: Duration::from_secs(30),
                silent_since: at(100),
                silent_for: Duration::from_secs(42),
                last_message: Some(at(100)),
            }
        );
        assert_eq!(a[0].short(), "MD silent for 42s");
        assert_eq!(
            a[0].to_string(),
            "stream MD has had no new message for 42s (alert_if_silent_for: 30s); last message: 2023-11-14T22:15:00Z"
        );
        // A new message clears it.
        assert!(evaluate(&r, &obs(142, vec![stream(0, Some(141))], vec![]), at(0), &a).is_empty());
    }

    #[test]
    fn silence_counts_from_the_daemons_start_or_the_streams_creation_at_the_earliest() {
        let r = rules();
        // An old message, the daemon started at 1000: silent from 1000.
        let a = evaluate(
            &r,
            &obs(1029, vec![stream(0, Some(5))], vec![]),
            at(1000),
            &[],
        );
        assert!(a.is_empty(), "{a:?}");
        let a = evaluate(
            &r,
            &obs(1031, vec![stream(0, Some(5))], vec![]),
            at(1000),
            &[],
        );
        assert_eq!(a[0].since, at(1030));
        assert!(a[0]
            .to_string()
            .ends_with("last message: 2023-11-14T22:13:25Z"));
        // Never a message, created after the start: from its creation.
        let a = evaluate(
            &r,
            &obs(1531, vec![stream(1500, None)], vec![]),
            at(1000),
            &[],
        );
        assert_eq!(a[0].since, at(1530));
        assert!(a[0].to_string().ends_with("last message: none"), "{}", a[0]);
        assert_eq!(a[0].to_json()["last_message"], Value::Null);
        // A clock behind the message's time is not silence.
        assert!(evaluate(&r, &obs(10, vec![stream(0, Some(50))], vec![]), at(0), &[]).is_empty());
    }

    #[test]
    fn a_backlog_counts_undelivered_and_unacknowledged_messages() {
        let r = rules();
        let check = |p, a, before: &[Alarm], now| {
            evaluate(&r, &obs(now, vec![], vec![consumer(p, a)]), at(0), before)
        };
        assert!(check(10, 0, &[], 5).is_empty(), "10 is not over 10");
        let first = check(11, 0, &[], 5);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].since, first[0].fails_health), (at(5), true));
        assert_eq!(first[0].short(), "MD/w 11 unprocessed (over 10)");
        // Fetched but not acknowledged: still unprocessed, and the alarm
        // keeps its start.
        let still = check(0, 11, &first, 10);
        assert_eq!(still[0].since, at(5));
        assert_eq!(
            still[0].to_string(),
            "consumer w of stream MD has 11 unprocessed messages (alert_if_pending_over: 10): 0 not delivered yet, 11 delivered and not acknowledged"
        );
        let j = still[0].to_json();
        assert_eq!(
            (
                &j["kind"],
                &j["consumer"],
                &j["unprocessed"],
                &j["alert_if_pending_over"]
            ),
            (&json!("pending"), &json!("w"), &json!(11), &json!(10))
        );
        // Acknowledged: over. A later backlog is a new alarm.
        let gone = check(0, 0, &still, 15);
        assert!(gone.is_empty());
        assert_eq!(check(20, 0, &gone, 20)[0].since, at(20));
    }

    #[test]
    fn what_does_not_exist_or_has_no_threshold_raises_nothing() {
        let r = rules();
        let mut other = stream(0, None);
        other.stream = "OTHER".into();
        let mut c = consumer(1000, 0);
        c.consumer = "other".into();
        assert!(evaluate(&r, &obs(10_000, vec![other], vec![c]), at(0), &[]).is_empty());
    }

    #[test]
    fn short_silence_thresholds_are_checked_more_often_but_not_too_often() {
        let mut r = rules();
        assert_eq!(check_interval(&r), CHECK_EVERY);
        r.streams[0].after = Duration::from_secs(4);
        assert_eq!(check_interval(&r), Duration::from_secs(2));
        r.streams[0].after = Duration::from_millis(500);
        assert_eq!(check_interval(&r), CHECK_AT_MOST_EVERY);
        assert_eq!(check_interval(&Rules::default()), CHECK_EVERY);
    }
}
