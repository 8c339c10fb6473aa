//! Whether the daemon is healthy, decided from one set of [`Facts`]
//! (pure): the problems /health lists and its status code, how
//! /api/v1/status names nats-server's state, and systemd's STATUS= line.
//!
//! The I/O shell gathers the facts (`http::health::facts` and
//! `http::health::probed_facts`); nothing here reads the world.

use std::fmt;
use std::time::Duration;

use crate::alarms::Alarm;
use crate::cluster::{Lagging, LocalHealth, StreamGroup};
use crate::durability::{FailureKind, SyncError, FAILURE_SHOWN_FOR};
use crate::jetstream::Failure;
use crate::supervisor::Phase;

/// How long /health waits for JetStream's answer to `$JS.API.INFO`.
pub const JETSTREAM_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the decisions read. A fact nobody gathered is its default (None,
/// empty, false): /health gathers all of them; /api/v1/status and the
/// STATUS= line only the cheap ones.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// nats-server is the daemon's child (else an external server it
    /// connects to).
    pub supervised: bool,
    /// The child's state (a constant default in external mode).
    pub child: Child,
    /// The daemon's own client is connected now.
    pub connected: bool,
    /// Where the client connects.
    pub nats_urls: Vec<String>,
    /// Streams the last reconciliation found.
    pub streams: usize,
    /// Client connections nats-server reports (/varz), when asked.
    pub connections: Option<u64>,
    /// A sentence for STATUS= (a failed reload).
    pub note: Option<String>,
    /// Why the JetStream store's filesystem cannot take writes (asked only
    /// of a supervised nats-server with JetStream).
    pub store_space: Option<String>,
    /// The last failed sync of the store, while /health lists it.
    pub sync_failure: Option<SyncFailure>,
    /// JetStream's answer to `$JS.API.INFO`; None when not asked
    /// (JetStream off, or not connected).
    pub jetstream: Option<JetStream>,
    /// What the last reconciliation left undone; None when streams are not
    /// auto-created (`auto_create_streams: false`).
    pub reconciliation: Option<Reconciliation>,
    /// Why JetStream cannot do cluster work now (no meta leader); only
    /// ever set on a clustered JetStream node.
    pub meta_problem: Option<String>,
    /// The declared streams' RAFT groups, or why they could not be read;
    /// None when not asked (not clustered, a meta problem, not connected).
    pub stream_groups: Option<Result<Vec<StreamGroup>, String>>,
    /// This node's nats-server on its own full /healthz: whether every
    /// JetStream asset it serves is current here, or why it did not say;
    /// None when not asked (not clustered JetStream).
    pub local_health: Option<Result<LocalHealth, String>>,
    /// This node's server_name: which replica in a stream group is ours.
    pub server_name: Option<String>,
    /// Last sequence of each stream replica this node holds, read after
    /// `stream_groups` (None: not asked or not answered).
    pub local_last_seqs: Option<std::collections::BTreeMap<String, u64>>,
    /// The silence and backlog alarms in force, as the monitor's last
    /// check found them.
    pub alarms: Vec<Alarm>,
    /// This node leads a JetStream meta group that misses routed peers
    /// (`cluster::MetaShortfall`'s sentence), as the last check found.
    pub meta_shortfall: Option<String>,
}

/// The nats-server child as the supervisor reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Child {
    pub phase: Phase,
    pub pid: Option<u32>,
    /// Its last health probe succeeded.
    pub healthy: bool,
    /// Why its last health probe failed, when it did.
    pub probe_error: Option<String>,
    pub restarts: u64,
    /// Delay before the next restart, while waiting for it.
    pub restart_in: Option<Duration>,
    pub last_failure: Option<String>,
}

/// A failed sync of the JetStream store.
#[derive(Debug, Clone)]
pub struct SyncFailure {
    /// How long ago it failed.
    pub ago: Duration,
    pub error: SyncError,
}

/// How JetStream answered `$JS.API.INFO`.
#[derive(Debug, Clone, PartialEq)]
pub enum JetStream {
    /// A JSON reply: the account's figures, or an API error.
    Answered(serde_json::Value),
    /// A reply that is not JSON.
    Unparsable(String),
    /// The request failed.
    Failed(String),
    /// No reply within [`JETSTREAM_PROBE_TIMEOUT`].
    TimedOut,
    /// The connection dropped while waiting.
    Dropped,
}

/// What the last stream reconciliation left undone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Streams were reconciled against the current nats-server.
    pub synced: bool,
    /// Declared streams that do not exist.
    pub missing_streams: Vec<String>,
    /// Declared consumers that do not exist, as `stream/consumer`.
    pub missing_consumers: Vec<String>,
    /// What it could not create or update.
    pub errors: Vec<Failure>,
}

/// One reason the daemon cannot take publishes as it should.
#[derive(Debug, Clone)]
pub enum Problem {
    /// The supervised nats-server is not running.
    ChildDown {
        phase: Phase,
        restart_in: Option<Duration>,
        last_failure: Option<String>,
    },
    /// It runs but does not answer its health probe.
    ChildProbeFailed(Option<String>),
    /// The store's filesystem is full (the sentence says which).
    StoreSpace(String),
    SyncFailed {
        ago: Duration,
        error: SyncError,
    },
    NotConnected {
        urls: Vec<String>,
    },
    JetStreamRefuses(String),
    JetStreamNonsense(String),
    JetStreamSilent(String),
    JetStreamTimedOut,
    ConnectionDropped,
    StreamsNotReconciled,
    MissingStream {
        name: String,
        why: Option<String>,
    },
    MissingConsumer {
        stream: String,
        consumer: String,
        why: String,
    },
    /// No meta leader: streams cannot be created or changed.
    MetaGroup(String),
    /// The meta leader's group misses routed peers: replicated streams
    /// cannot be placed.
    MetaPeersMissing(String),
    /// A declared stream without a leader.
    StreamGroup(String),
    ClusterUnreadable(String),
    /// nats-server's own /healthz complains of something other than
    /// catching up (a stream it could not recover, ...).
    NatsServerReports(String),
    /// nats-server's own /healthz did not answer.
    NatsServerHealthUnknown(String),
    /// An alarm declared with `health_fails_on_alarm`.
    Alarm(Alarm),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::ChildDown {
                phase,
                restart_in,
                last_failure,
            } => {
                write!(f, "nats-server is {}", phase.as_str())?;
                if let Some(d) = restart_in {
                    write!(f, " (next attempt in {} ms)", d.as_millis())?;
                }
                if let Some(why) = last_failure {
                    write!(f, "; last failure: {why}")?;
                }
                Ok(())
            }
            Problem::ChildProbeFailed(why) => {
                f.write_str("nats-server failed its health probe")?;
                match why {
                    Some(why) => write!(f, ": {why}"),
                    None => Ok(()),
                }
            }
            Problem::StoreSpace(s)
            | Problem::MetaGroup(s)
            | Problem::MetaPeersMissing(s)
            | Problem::StreamGroup(s) => {
                f.write_str(s)
            }
            Problem::SyncFailed { ago, error } => write!(
                f,
                "syncing the JetStream store to disk failed {} s ago ({error}); the publishes waiting for it were answered {} (listed for {} s after a failure)",
                ago.as_secs(),
                match error.kind {
                    FailureKind::NoSpace => "507",
                    FailureKind::Io => "503",
                },
                FAILURE_SHOWN_FOR.as_secs()
            ),
            Problem::NotConnected { urls } => {
                write!(f, "not connected to nats-server at {}", urls.join(", "))
            }
            Problem::JetStreamRefuses(why) => write!(f, "JetStream refuses requests: {why}"),
            Problem::JetStreamNonsense(e) => write!(f, "JetStream answered nonsense: {e}"),
            Problem::JetStreamSilent(e) => write!(f, "JetStream does not answer: {e}"),
            Problem::JetStreamTimedOut => write!(
                f,
                "JetStream does not answer within {} s",
                JETSTREAM_PROBE_TIMEOUT.as_secs()
            ),
            Problem::ConnectionDropped => f.write_str("the connection to nats-server dropped"),
            Problem::StreamsNotReconciled => f.write_str("streams are not reconciled yet"),
            Problem::MissingStream { name, why: Some(e) } => write!(
                f,
                "declared stream {name} does not exist ({e}); its subjects are not persisted"
            ),
            Problem::MissingStream { name, why: None } => write!(
                f,
                "declared stream {name} does not exist; its subjects are not persisted"
            ),
            Problem::MissingConsumer {
                stream,
                consumer,
                why,
            } => write!(
                f,
                "declared consumer {consumer} of stream {stream} does not exist ({why})"
            ),
            Problem::ClusterUnreadable(e) => {
                write!(f, "cannot read the streams' cluster state: {e}")
            }
            Problem::NatsServerReports(e) => write!(f, "nats-server reports: {e}"),
            Problem::NatsServerHealthUnknown(e) => {
                write!(f, "nats-server's /healthz does not tell whether this node is current: {e}")
            }
            Problem::Alarm(a) => a.fmt(f),
        }
    }
}

/// Everything that keeps the daemon from being healthy, in the order
/// /health lists them: nats-server itself, its store, the connection,
/// JetStream, the declared streams, the cluster, then the alarms declared
/// with `health_fails_on_alarm`. Healthy when empty.
pub fn problems(f: &Facts) -> Vec<Problem> {
    let mut out = Vec::new();
    if f.supervised {
        if f.child.phase != Phase::Running {
            out.push(Problem::ChildDown {
                phase: f.child.phase,
                restart_in: f.child.restart_in,
                last_failure: f.child.last_failure.clone(),
            });
        } else if !f.child.healthy {
            out.push(Problem::ChildProbeFailed(f.child.probe_error.clone()));
        }
    }
    if let Some(full) = &f.store_space {
        out.push(Problem::StoreSpace(full.clone()));
    }
    if let Some(s) = &f.sync_failure {
        out.push(Problem::SyncFailed {
            ago: s.ago,
            error: s.error.clone(),
        });
    }
    if !f.connected {
        out.push(Problem::NotConnected {
            urls: f.nats_urls.clone(),
        });
    }
    // Streams are judged only where JetStream was asked: it is on and the
    // client is connected.
    if let Some(js) = &f.jetstream {
        match js {
            JetStream::Answered(v) => {
                if v.get("error").is_some() {
                    out.push(Problem::JetStreamRefuses(
                        v["error"]["description"]
                            .as_str()
                            .unwrap_or("unknown error")
                            .to_string(),
                    ));
                }
            }
            JetStream::Unparsable(e) => out.push(Problem::JetStreamNonsense(e.clone())),
            JetStream::Failed(e) => out.push(Problem::JetStreamSilent(e.clone())),
            JetStream::TimedOut => out.push(Problem::JetStreamTimedOut),
            JetStream::Dropped => out.push(Problem::ConnectionDropped),
        }
        if let Some(r) = &f.reconciliation {
            out.extend(reconciliation_problems(r));
        }
    }
    // A clustered node is only as useful as its cluster: without a meta
    // leader no stream can be created or changed, and a stream without a
    // leader takes no writes. Both are this node's problem too (a load
    // balancer should send publishes elsewhere). So is a meta leader
    // whose group misses a routed peer: replicated streams cannot be
    // placed (the streams it leaves missing are listed above).
    if let Some(p) = &f.meta_problem {
        out.push(Problem::MetaGroup(p.clone()));
    } else {
        if let Some(s) = &f.meta_shortfall {
            out.push(Problem::MetaPeersMissing(s.clone()));
        }
        match &f.stream_groups {
            Some(Ok(groups)) => out.extend(
                crate::cluster::stream_problems(groups)
                    .into_iter()
                    .map(Problem::StreamGroup),
            ),
            Some(Err(e)) => out.push(Problem::ClusterUnreadable(e.clone())),
            None => {}
        }
    }
    match &f.local_health {
        Some(Err(e)) => out.push(Problem::NatsServerHealthUnknown(e.clone())),
        Some(Ok(_)) => out.extend(
            catch_up(f)
                .other
                .into_iter()
                .map(Problem::NatsServerReports),
        ),
        None => {}
    }
    out.extend(
        f.alarms
            .iter()
            .filter(|a| a.fails_health)
            .cloned()
            .map(Problem::Alarm),
    );
    out
}

/// What /health lists without answering 503 for it: the alarms not
/// declared with `health_fails_on_alarm`.
pub fn warnings(f: &Facts) -> Vec<String> {
    f.alarms
        .iter()
        .filter(|a| !a.fails_health)
        .map(ToString::to_string)
        .collect()
}

fn catch_up(f: &Facts) -> crate::cluster::CatchUp {
    let Some(Ok(health)) = &f.local_health else {
        return crate::cluster::CatchUp::default();
    };
    let groups = match &f.stream_groups {
        Some(Ok(g)) => g.as_slice(),
        _ => &[],
    };
    crate::cluster::catch_up(
        health,
        groups,
        f.server_name.as_deref(),
        f.local_last_seqs.as_ref(),
    )
}

/// What is not current on this node yet (a clustered node's streams and
/// meta group), with how far behind where known. Catching up is not a
/// failure: nothing restarts for it, but /health says 503 so load
/// balancers and `wait-ready` wait.
pub fn catching_up(f: &Facts) -> Vec<Lagging> {
    catch_up(f).lagging
}

/// Declared consumers nats-server calls not current on this node: listed
/// by /health and status, not waited for (see `cluster::CatchUp`).
pub fn consumers_not_current(f: &Facts) -> Vec<Lagging> {
    catch_up(f).consumers
}

/// /health's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing wrong, everything current: 200.
    Healthy,
    /// Nothing wrong, but something is still catching up: 503, so load
    /// balancers keep away and `wait-ready` waits.
    CatchingUp,
    /// Something is wrong (whatever else is catching up): 503.
    Unhealthy,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::CatchingUp => "catching_up",
            Verdict::Unhealthy => "unhealthy",
        }
    }

    pub fn code(self) -> u16 {
        match self {
            Verdict::Healthy => 200,
            _ => 503,
        }
    }
}

/// Broken beats catching up beats healthy.
pub fn verdict(problems: &[Problem], lagging: &[Lagging]) -> Verdict {
    if !problems.is_empty() {
        Verdict::Unhealthy
    } else if !lagging.is_empty() {
        Verdict::CatchingUp
    } else {
        Verdict::Healthy
    }
}

fn reconciliation_problems(r: &Reconciliation) -> Vec<Problem> {
    let mut out = Vec::new();
    if !r.synced {
        out.push(Problem::StreamsNotReconciled);
    }
    for name in &r.missing_streams {
        let why = r
            .errors
            .iter()
            .find(|e| e.stream == *name)
            .map(ToString::to_string);
        out.push(Problem::MissingStream {
            name: name.clone(),
            why,
        });
    }
    for name in &r.missing_consumers {
        let (stream, consumer) = name.split_once('/').unwrap_or((name, ""));
        let why = r
            .errors
            .iter()
            .find(|e| e.stream == stream && e.consumer.as_deref() == Some(consumer))
            .map_or("reason unknown", |e| e.what.as_str());
        out.push(Problem::MissingConsumer {
            stream: stream.to_string(),
            consumer: consumer.to_string(),
            why: why.to_string(),
        });
    }
    out
}

/// /health's status code: 200 without problems, else 503.
pub fn status_code(problems: &[Problem]) -> u16 {
    if problems.is_empty() {
        200
    } else {
        503
    }
}

/// JetStream's figures when it answered without an error.
pub fn jetstream_info(f: &Facts) -> Option<&serde_json::Value> {
    match &f.jetstream {
        Some(JetStream::Answered(v)) if v.get("error").is_none() => Some(v),
        _ => None,
    }
}

/// nats-server's state in a word: the child's phase, or for an external
/// server whether the client reaches it.
pub fn nats_server(f: &Facts) -> &'static str {
    if f.supervised {
        f.child.phase.as_str()
    } else if f.connected {
        "running"
    } else {
        "unreachable"
    }
}

/// systemd's STATUS= line: nats-server's state and the streams (with the
/// connection count when known), then the note (a failed reload), the
/// cluster's meta problem, what is catching up and the alarms in force,
/// each after "; ".
pub fn status_line(f: &Facts) -> String {
    let streams = f.streams;
    let conns = f
        .connections
        .map(|c| format!(", {c} connection{}", if c == 1 { "" } else { "s" }))
        .unwrap_or_default();
    let base = if f.supervised {
        match (f.child.phase, f.child.pid) {
            (Phase::Running, Some(pid)) => {
                format!("nats-server pid {pid} healthy, {streams} streams{conns}")
            }
            (Phase::Restarting, _) => match (f.child.restart_in, &f.child.last_failure) {
                (Some(d), Some(why)) => {
                    format!("restarting nats-server in {} ms ({why})", d.as_millis())
                }
                _ => "restarting nats-server".into(),
            },
            (Phase::Draining, _) => crate::supervisor::DRAINING.into(),
            (Phase::Failed, _) => format!(
                "gave up on nats-server: {}",
                f.child.last_failure.as_deref().unwrap_or_default()
            ),
            (phase, _) => format!("nats-server {}", phase.as_str()),
        }
    } else if f.connected {
        format!(
            "connected to {}, {streams} streams{conns}",
            f.nats_urls.join(", ")
        )
    } else {
        format!("waiting for NATS at {}", f.nats_urls.join(", "))
    };
    let line = match &f.note {
        Some(note) => format!("{base}; {note}"),
        None => base,
    };
    let line = match (&f.meta_problem, &f.meta_shortfall) {
        (Some(p), _) | (None, Some(p)) => format!("{line}; {p}"),
        (None, None) => line,
    };
    let lagging = catching_up(f);
    let line = if lagging.is_empty() {
        line
    } else {
        let what: Vec<&str> = lagging.iter().map(|l| l.description.as_str()).collect();
        format!("{line}; catching up: {}", what.join(", "))
    };
    match f.alarms.len() {
        0 => line,
        n => {
            let what: Vec<String> = f.alarms.iter().map(Alarm::short).collect();
            let s = if n == 1 { "" } else { "s" };
            format!("{line}; {n} alarm{s}: {}", what.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn texts(f: &Facts) -> Vec<String> {
        problems(f).iter().map(ToString::to_string).collect()
    }

    /// A supervised node where everything is in place.
    fn fine() -> Facts {
        Facts {
            supervised: true,
            child: Child {
                phase: Phase::Running,
                pid: Some(42),
                healthy: true,
                ..Child::default()
            },
            connected: true,
            nats_urls: vec!["nats://127.0.0.1:4222".into()],
            streams: 2,
            jetstream: Some(JetStream::Answered(json!({"streams": 2, "consumers": 1}))),
            reconciliation: Some(Reconciliation {
                synced: true,
                ..Reconciliation::default()
            }),
            ..Facts::default()
        }
    }

    fn sync_error(kind: FailureKind) -> SyncError {
        SyncError {
            kind,
            what: "fdatasync",
            path: "/var/lib/mpb/jetstream/x".into(),
            error: "No space left on device (os error 28)".into(),
        }
    }

    #[test]
    fn draining_says_so_in_the_status_line_and_is_unhealthy() {
        let mut f = Facts {
            supervised: true,
            ..Facts::default()
        };
        f.child.phase = Phase::Draining;
        f.child.pid = Some(7);
        assert_eq!(
            status_line(&f),
            "draining: nats-server in lame-duck mode, clients moving to other nodes"
        );
        assert_eq!(nats_server(&f), "draining");
        assert_eq!(texts(&f)[0], "nats-server is draining");
    }

    #[test]
    fn a_running_child_a_connected_client_and_reconciled_streams_are_healthy() {
        let f = fine();
        assert!(problems(&f).is_empty());
        assert_eq!(status_code(&problems(&f)), 200);
        assert_eq!(nats_server(&f), "running");
        assert_eq!(
            jetstream_info(&f),
            Some(&json!({"streams": 2, "consumers": 1}))
        );
    }

    #[test]
    fn a_child_that_is_not_running_names_its_next_attempt_and_last_failure() {
        let mut f = fine();
        f.child.phase = Phase::Restarting;
        f.child.restart_in = Some(Duration::from_millis(250));
        f.child.last_failure = Some("exited with code 1".into());
        assert_eq!(
            texts(&f),
            ["nats-server is restarting (next attempt in 250 ms); last failure: exited with code 1"]
        );
        assert_eq!(status_code(&problems(&f)), 503);
        f.child.phase = Phase::Starting;
        f.child.restart_in = None;
        f.child.last_failure = None;
        assert_eq!(texts(&f), ["nats-server is starting"]);
    }

    #[test]
    fn a_running_child_that_misses_its_probe_is_unhealthy() {
        let mut f = fine();
        f.child.healthy = false;
        assert_eq!(texts(&f), ["nats-server failed its health probe"]);
        f.child.probe_error = Some("/healthz answered 503: {}".into());
        assert_eq!(
            texts(&f),
            ["nats-server failed its health probe: /healthz answered 503: {}"]
        );
    }

    #[test]
    fn an_external_server_is_judged_by_the_connection_alone() {
        let mut f = fine();
        f.supervised = false;
        f.child = Child::default();
        assert!(problems(&f).is_empty());
        f.connected = false;
        f.jetstream = None;
        f.nats_urls = vec!["nats://a:4222".into(), "nats://b:4222".into()];
        assert_eq!(
            texts(&f),
            ["not connected to nats-server at nats://a:4222, nats://b:4222"]
        );
        assert_eq!(nats_server(&f), "unreachable");
    }

    #[test]
    fn a_recent_sync_failure_says_how_its_publishes_were_answered() {
        let mut f = fine();
        f.sync_failure = Some(SyncFailure {
            ago: Duration::from_millis(3_900),
            error: sync_error(FailureKind::NoSpace),
        });
        assert_eq!(
            texts(&f),
            ["syncing the JetStream store to disk failed 3 s ago (fdatasync /var/lib/mpb/jetstream/x: No space left on device (os error 28)); the publishes waiting for it were answered 507 (listed for 60 s after a failure)"]
        );
        f.sync_failure.as_mut().unwrap().error.kind = FailureKind::Io;
        assert!(texts(&f)[0].contains("were answered 503"));
    }

    #[test]
    fn a_full_store_comes_after_the_child_and_before_the_connection() {
        let mut f = fine();
        f.child.healthy = false;
        f.store_space = Some("the JetStream store's filesystem is full".into());
        f.connected = false;
        f.jetstream = None;
        let t = texts(&f);
        assert_eq!(t.len(), 3);
        assert_eq!(t[1], "the JetStream store's filesystem is full");
        assert!(t[2].starts_with("not connected"), "{t:?}");
    }

    #[test]
    fn jetstream_that_refuses_or_does_not_answer_is_a_problem_without_figures() {
        let mut f = fine();
        f.jetstream = Some(JetStream::Answered(
            json!({"error": {"code": 503, "description": "JetStream not enabled"}}),
        ));
        assert_eq!(
            texts(&f),
            ["JetStream refuses requests: JetStream not enabled"]
        );
        assert_eq!(jetstream_info(&f), None);
        f.jetstream = Some(JetStream::Answered(json!({"error": {}})));
        assert_eq!(texts(&f), ["JetStream refuses requests: unknown error"]);
        f.jetstream = Some(JetStream::Unparsable("expected value".into()));
        assert_eq!(texts(&f), ["JetStream answered nonsense: expected value"]);
        f.jetstream = Some(JetStream::Failed("no responders".into()));
        assert_eq!(texts(&f), ["JetStream does not answer: no responders"]);
        f.jetstream = Some(JetStream::TimedOut);
        assert_eq!(texts(&f), ["JetStream does not answer within 2 s"]);
        f.jetstream = Some(JetStream::Dropped);
        assert_eq!(texts(&f), ["the connection to nats-server dropped"]);
    }

    #[test]
    fn missing_streams_and_consumers_are_named_with_their_reconciliation_error() {
        let mut f = fine();
        f.reconciliation = Some(Reconciliation {
            synced: false,
            missing_streams: vec!["A".into(), "B".into()],
            missing_consumers: vec!["C/worker".into(), "C/other".into()],
            errors: vec![
                Failure {
                    stream: "A".into(),
                    consumer: None,
                    what: "subjects overlap with stream X".into(),
                },
                Failure {
                    stream: "C".into(),
                    consumer: Some("worker".into()),
                    what: "filter outside the stream".into(),
                },
            ],
        });
        assert_eq!(
            texts(&f),
            [
                "streams are not reconciled yet",
                "declared stream A does not exist (A: subjects overlap with stream X); its subjects are not persisted",
                "declared stream B does not exist; its subjects are not persisted",
                "declared consumer worker of stream C does not exist (filter outside the stream)",
                "declared consumer other of stream C does not exist (reason unknown)",
            ]
        );
    }

    #[test]
    fn streams_are_judged_only_when_jetstream_was_asked() {
        let mut f = fine();
        f.reconciliation.as_mut().unwrap().synced = false;
        f.jetstream = None;
        assert!(problems(&f).is_empty());
    }

    #[test]
    fn a_cluster_without_meta_leader_is_named_before_its_streams_are_looked_at() {
        let leaderless = StreamGroup {
            name: "S".into(),
            leader: None,
            replicas: Vec::new(),
            configured_replicas: 3,
            last_seq: 0,
        };
        let mut f = fine();
        f.stream_groups = Some(Ok(vec![leaderless]));
        assert_eq!(
            texts(&f),
            ["stream S has no leader (replicas: 3): its subjects cannot be written until one is elected"]
        );
        f.meta_problem = Some("JetStream has no meta leader".into());
        assert_eq!(texts(&f), ["JetStream has no meta leader"]);
        f.meta_problem = None;
        f.stream_groups = Some(Err("JetStream did not list its streams within 5 s".into()));
        assert_eq!(
            texts(&f),
            ["cannot read the streams' cluster state: JetStream did not list its streams within 5 s"]
        );
    }

    #[test]
    fn a_meta_leader_missing_routed_peers_is_a_problem_and_in_the_status_line() {
        let short = crate::cluster::MetaShortfall {
            known: 1,
            routed: 2,
            missing: vec![],
            left_out: false,
        };
        let mut f = fine();
        f.reconciliation = Some(Reconciliation {
            synced: true,
            missing_streams: vec!["MD".into()],
            ..Reconciliation::default()
        });
        f.meta_shortfall = Some(short.to_string());
        assert_eq!(
            texts(&f),
            [
                "declared stream MD does not exist; its subjects are not persisted",
                "JetStream meta group knows 1 of 2 routed peers: replicated streams cannot be placed"
            ]
        );
        assert_eq!(status_code(&problems(&f)), 503);
        assert_eq!(
            status_line(&f),
            "nats-server pid 42 healthy, 2 streams; JetStream meta group knows 1 of 2 routed peers: replicated streams cannot be placed"
        );
        // No meta leader at all says more; the shortfall is not repeated.
        f.meta_problem = Some("JetStream has no meta leader".into());
        assert!(!texts(&f).iter().any(|t| t.contains("routed peers")));
        assert!(!status_line(&f).contains("routed peers"));
    }

    #[test]
    fn the_status_line_of_a_healthy_child_counts_streams_and_connections() {
        let mut f = fine();
        assert_eq!(status_line(&f), "nats-server pid 42 healthy, 2 streams");
        f.connections = Some(1);
        assert_eq!(
            status_line(&f),
            "nats-server pid 42 healthy, 2 streams, 1 connection"
        );
        f.connections = Some(7);
        assert_eq!(
            status_line(&f),
            "nats-server pid 42 healthy, 2 streams, 7 connections"
        );
    }

    #[test]
    fn the_status_line_says_when_the_child_restarts_and_when_it_gave_up() {
        let mut f = fine();
        f.child.phase = Phase::Restarting;
        f.child.pid = None;
        assert_eq!(status_line(&f), "restarting nats-server");
        f.child.restart_in = Some(Duration::from_millis(400));
        assert_eq!(status_line(&f), "restarting nats-server");
        f.child.last_failure = Some("killed by signal 9".into());
        assert_eq!(
            status_line(&f),
            "restarting nats-server in 400 ms (killed by signal 9)"
        );
        f.child.phase = Phase::Failed;
        assert_eq!(
            status_line(&f),
            "gave up on nats-server: killed by signal 9"
        );
        f.child.last_failure = None;
        assert_eq!(status_line(&f), "gave up on nats-server: ");
        f.child.phase = Phase::Stopping;
        assert_eq!(status_line(&f), "nats-server stopping");
        // Running without a pid yet reads like any other phase.
        f.child.phase = Phase::Running;
        assert_eq!(status_line(&f), "nats-server running");
    }

    #[test]
    fn the_status_line_of_an_external_server_names_where_it_connects() {
        let mut f = fine();
        f.supervised = false;
        f.nats_urls = vec!["nats://a:4222".into(), "nats://b:4222".into()];
        f.connections = Some(3);
        assert_eq!(
            status_line(&f),
            "connected to nats://a:4222, nats://b:4222, 2 streams, 3 connections"
        );
        f.connected = false;
        assert_eq!(
            status_line(&f),
            "waiting for NATS at nats://a:4222, nats://b:4222"
        );
    }

    #[test]
    fn the_status_line_ends_with_the_note_then_the_meta_problem() {
        let mut f = fine();
        f.note = Some("reload failed: bad config".into());
        assert_eq!(
            status_line(&f),
            "nats-server pid 42 healthy, 2 streams; reload failed: bad config"
        );
        f.meta_problem = Some("JetStream has no meta leader".into());
        assert_eq!(
            status_line(&f),
            "nats-server pid 42 healthy, 2 streams; reload failed: bad config; JetStream has no meta leader"
        );
    }

    #[test]
    fn alarms_are_warnings_unless_declared_to_fail_health_and_end_the_status_line() {
        use crate::alarms::Kind;
        let t0 = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let silent = Alarm {
            stream: "MARKET_DATA".into(),
            consumer: None,
            kind: Kind::Silent {
                after: Duration::from_secs(30),
                silent_since: t0,
                silent_for: Duration::from_secs(42),
                last_message: Some(t0),
            },
            since: t0 + Duration::from_secs(30),
            fails_health: false,
        };
        let backlog = Alarm {
            stream: "ORDERS".into(),
            consumer: Some("worker".into()),
            kind: Kind::Pending {
                over: 10,
                num_pending: 7,
                num_ack_pending: 5,
            },
            since: t0,
            fails_health: false,
        };
        let mut f = fine();
        f.alarms = vec![silent.clone()];
        assert!(problems(&f).is_empty());
        assert_eq!(verdict(&problems(&f), &catching_up(&f)).code(), 200);
        assert_eq!(warnings(&f), [silent.to_string()]);
        assert_eq!(
            status_line(&f),
            "nats-server pid 42 healthy, 2 streams; 1 alarm: MARKET_DATA silent for 42s"
        );
        f.alarms.push(backlog.clone());
        assert_eq!(
            status_line(&f),
            "nats-server pid 42 healthy, 2 streams; 2 alarms: MARKET_DATA silent for 42s, ORDERS/worker 12 unprocessed (over 10)"
        );
        // Declared to fail /health: a problem (503), not a warning.
        f.alarms[1].fails_health = true;
        assert_eq!(texts(&f), [backlog.to_string()]);
        assert_eq!(warnings(&f), [silent.to_string()]);
        assert_eq!(verdict(&problems(&f), &catching_up(&f)).code(), 503);
        // After the other problems.
        f.child.healthy = false;
        let t = texts(&f);
        assert_eq!(t.len(), 2);
        assert!(
            t[1].starts_with("consumer worker of stream ORDERS"),
            "{t:?}"
        );
    }

    #[test]
    fn a_clustered_node_catching_up_is_503_catching_up_not_a_problem() {
        use crate::cluster::Peer;
        let mut f = fine();
        f.server_name = Some("n3".into());
        f.stream_groups = Some(Ok(vec![StreamGroup {
            name: "MD".into(),
            leader: Some("n1".into()),
            replicas: vec![Peer {
                name: "n3".into(),
                current: false,
                active_ms: 5,
                lag: 4096,
                offline: false,
            }],
            configured_replicas: 3,
            last_seq: 0,
        }]));
        f.local_health = Some(Ok(LocalHealth::Errors(vec![
            "JetStream stream '$G > MD' is not current: stream catching up".into(),
        ])));
        let p = problems(&f);
        assert!(p.is_empty(), "{p:?}");
        let lagging = catching_up(&f);
        assert_eq!(verdict(&p, &lagging), Verdict::CatchingUp);
        assert_eq!(verdict(&p, &lagging).code(), 503);
        assert_eq!(
            status_line(&f),
            "nats-server pid 42 healthy, 2 streams; catching up: stream MD: 4096 entries behind the leader"
        );
        // Current again, on nats-server's and the leader's word: healthy,
        // and the line says nothing more.
        f.local_health = Some(Ok(LocalHealth::Ok));
        if let Some(Ok(g)) = &mut f.stream_groups {
            g[0].replicas[0].current = true;
            g[0].replicas[0].lag = 0;
        }
        assert_eq!(verdict(&problems(&f), &catching_up(&f)), Verdict::Healthy);
        assert_eq!(status_line(&f), "nats-server pid 42 healthy, 2 streams");
        // Broken beats catching up; a silent /healthz is a problem.
        f.local_health = Some(Err("no answer within 2s".into()));
        let p = problems(&f);
        assert_eq!(verdict(&p, &catching_up(&f)), Verdict::Unhealthy);
        assert!(texts(&f)[0].contains("does not tell whether this node is current"));
        f.local_health = Some(Ok(LocalHealth::Errors(vec![
            "JetStream stream '$G > MD' could not be recovered".into(),
        ])));
        assert_eq!(
            texts(&f),
            ["nats-server reports: JetStream stream '$G > MD' could not be recovered"]
        );
    }
}
