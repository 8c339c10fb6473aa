//! Declared streams vs the streams nats-server has: a pure plan, then apply.
//!
//! Like nats-io/nack: create what is missing, update what JetStream lets
//! change, and for immutable differences (storage, retention to or from
//! workqueue) log an error naming the stream and field and leave the stream
//! untouched: recreating it would lose its messages. A stream that is not
//! declared is never deleted.
//!
//! Declared durable consumers get the same treatment after their stream:
//! created when missing, their filters and limits updated in place, and a
//! difference JetStream cannot change (deliver or ack policy, push vs pull)
//! reported, never "fixed" by deleting the consumer and its position.
//! Undeclared consumers (the seed's clients create their own) are left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::TryStreamExt;

use crate::config::{
    AckPolicy, ConsumerConfig, DeliverPolicy, Discard, Retention, Storage, StreamConfig,
};

/// The fields of an existing stream that the config manages.
#[derive(Debug, Clone, PartialEq)]
pub struct ActualStream {
    pub subjects: Vec<String>,
    pub retention: Retention,
    pub storage: Storage,
    pub max_age: Duration,
    pub max_msgs: i64,
    pub max_bytes: i64,
    pub replicas: usize,
    pub discard: Discard,
    pub duplicate_window: Duration,
}

/// One field that differs: name, wanted, found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDiff {
    pub field: &'static str,
    pub desired: String,
    pub actual: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create {
        stream: String,
    },
    /// Mutable fields to bring in line.
    Update {
        stream: String,
        diffs: Vec<FieldDiff>,
    },
    /// Immutable fields that differ: reported, never applied.
    Drift {
        stream: String,
        diffs: Vec<FieldDiff>,
    },
    /// Exists but is not declared: left alone.
    Unmanaged {
        stream: String,
    },
}

/// One step of a plan, for streams and consumers alike.
enum Step {
    Create,
    Update(Vec<FieldDiff>),
    Drift(Vec<FieldDiff>),
    Unmanaged,
}

/// Desired against actual, by name (so in a deterministic order): what is
/// missing is created; immutable differences are reported as drift before
/// mutable ones are updated (when `may_update` allows); what is there but
/// not declared is left alone.
fn plan_named<W, H>(
    desired: &BTreeMap<String, W>,
    actual: &BTreeMap<String, H>,
    diff: impl Fn(&W, &H) -> (Vec<FieldDiff>, Vec<FieldDiff>),
    may_update: impl Fn(&H) -> bool,
) -> Vec<(String, Step)> {
    let mut steps = Vec::new();
    for (name, want) in desired {
        let Some(have) = actual.get(name) else {
            steps.push((name.clone(), Step::Create));
            continue;
        };
        let (mutable, immutable) = diff(want, have);
        if !immutable.is_empty() {
            steps.push((name.clone(), Step::Drift(immutable)));
        }
        if !mutable.is_empty() && may_update(have) {
            steps.push((name.clone(), Step::Update(mutable)));
        }
    }
    for name in actual.keys().filter(|n| !desired.contains_key(*n)) {
        steps.push((name.clone(), Step::Unmanaged));
    }
    steps
}

/// Compares desired and actual streams. Deterministic order: by name.
pub fn plan(
    desired: &BTreeMap<String, StreamConfig>,
    actual: &BTreeMap<String, ActualStream>,
) -> Vec<Change> {
    plan_named(desired, actual, diff, |_| true)
        .into_iter()
        .map(|(stream, step)| match step {
            Step::Create => Change::Create { stream },
            Step::Update(diffs) => Change::Update { stream, diffs },
            Step::Drift(diffs) => Change::Drift { stream, diffs },
            Step::Unmanaged => Change::Unmanaged { stream },
        })
        .collect()
}

/// Fields that differ, split by whether JetStream can change them in place.
#[derive(Default)]
struct Diffs {
    mutable: Vec<FieldDiff>,
    immutable: Vec<FieldDiff>,
}

impl Diffs {
    fn add(&mut self, immutable: bool, field: &'static str, desired: String, actual: String) {
        if desired != actual {
            let d = FieldDiff {
                field,
                desired,
                actual,
            };
            if immutable {
                self.immutable.push(d)
            } else {
                self.mutable.push(d)
            }
        }
    }
}

fn diff(want: &StreamConfig, have: &ActualStream) -> (Vec<FieldDiff>, Vec<FieldDiff>) {
    let mut diffs = Diffs::default();
    let mut push = |immutable, field, desired, actual| diffs.add(immutable, field, desired, actual);
    push(
        true,
        "storage",
        want.storage.to_string(),
        have.storage.to_string(),
    );
    // nats-server refuses any change into or out of workqueue retention;
    // limits <-> interest is attempted and its refusal (older servers)
    // reported like any failed update.
    let workqueue_involved =
        want.retention == Retention::Workqueue || have.retention == Retention::Workqueue;
    push(
        workqueue_involved,
        "retention",
        want.retention.to_string(),
        have.retention.to_string(),
    );
    let ws: BTreeSet<&String> = want.subjects.iter().collect();
    let hs: BTreeSet<&String> = have.subjects.iter().collect();
    push(false, "subjects", format!("{:?}", ws), format!("{:?}", hs));
    push(
        false,
        "max_age",
        format!("{:?}", want.max_age.get()),
        format!("{:?}", have.max_age),
    );
    push(
        false,
        "max_msgs",
        norm_limit(want.max_msgs).to_string(),
        norm_limit(have.max_msgs).to_string(),
    );
    let want_bytes = want.max_bytes.map(|s| s.bytes() as i64).unwrap_or(-1);
    push(
        false,
        "max_bytes",
        norm_limit(want_bytes).to_string(),
        norm_limit(have.max_bytes).to_string(),
    );
    push(
        false,
        "replicas",
        want.replicas.to_string(),
        have.replicas.max(1).to_string(),
    );
    push(
        false,
        "discard",
        want.discard.to_string(),
        have.discard.to_string(),
    );
    if let Some(w) = want.duplicate_window {
        push(
            false,
            "duplicate_window",
            format!("{:?}", w.get()),
            format!("{:?}", have.duplicate_window),
        );
    }
    (diffs.mutable, diffs.immutable)
}

/// 0 and -1 both mean "no limit" to JetStream.
fn norm_limit(v: i64) -> i64 {
    if v <= 0 {
        -1
    } else {
        v
    }
}

/// The async-nats stream config for a declared stream.
pub fn to_nats(name: &str, s: &StreamConfig) -> stream::Config {
    stream::Config {
        name: name.to_string(),
        subjects: s.subjects.clone(),
        retention: match s.retention {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::Interest => stream::RetentionPolicy::Interest,
            Retention::Workqueue => stream::RetentionPolicy::WorkQueue,
        },
        storage: match s.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        max_age: s.max_age.get(),
        max_messages: s.max_msgs,
        max_bytes: s.max_bytes.map(|b| b.bytes() as i64).unwrap_or(-1),
        num_replicas: s.replicas as usize,
        discard: match s.discard {
            Discard::Old => stream::DiscardPolicy::Old,
            Discard::New => stream::DiscardPolicy::New,
        },
        duplicate_window: s.duplicate_window.map(|d| d.get()).unwrap_or_default(),
        ..Default::default()
    }
}

/// Applies the declared values of mutable fields onto an existing config,
/// keeping everything else (immutable fields, fields we do not manage).
fn apply_mutable(existing: &stream::Config, name: &str, want: &StreamConfig) -> stream::Config {
    let ours = to_nats(name, want);
    let mut cfg = existing.clone();
    cfg.subjects = ours.subjects;
    cfg.max_age = ours.max_age;
    cfg.max_messages = ours.max_messages;
    cfg.max_bytes = ours.max_bytes;
    cfg.num_replicas = ours.num_replicas;
    cfg.discard = ours.discard;
    if want.duplicate_window.is_some() {
        cfg.duplicate_window = ours.duplicate_window;
    }
    // limits <-> interest only; workqueue changes are Drift and never get here.
    if existing.retention != stream::RetentionPolicy::WorkQueue
        && ours.retention != stream::RetentionPolicy::WorkQueue
    {
        cfg.retention = ours.retention;
    }
    cfg
}

pub fn actual_from(c: &stream::Config) -> ActualStream {
    ActualStream {
        subjects: c.subjects.clone(),
        retention: match c.retention {
            stream::RetentionPolicy::Limits => Retention::Limits,
            stream::RetentionPolicy::Interest => Retention::Interest,
            stream::RetentionPolicy::WorkQueue => Retention::Workqueue,
        },
        storage: match c.storage {
            stream::StorageType::File => Storage::File,
            stream::StorageType::Memory => Storage::Memory,
        },
        max_age: c.max_age,
        max_msgs: c.max_messages,
        max_bytes: c.max_bytes,
        replicas: c.num_replicas,
        discard: match c.discard {
            stream::DiscardPolicy::Old => Discard::Old,
            stream::DiscardPolicy::New => Discard::New,
        },
        duplicate_window: c.duplicate_window,
    }
}

/// What a reconciliation did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    /// "STREAM: field wanted X, has Y" for every immutable difference.
    pub drift: Vec<String>,
    /// Failures to create or update, with nats-server's reason.
    pub errors: Vec<String>,
    /// Every stream nats-server has after reconciling, with subjects.
    pub streams: BTreeMap<String, Vec<String>>,
    /// Declared streams that still do not exist: their subjects are not
    /// persisted, which /health must not hide.
    pub missing: Vec<String>,
    /// Declared consumers (`STREAM/CONSUMER`) that could not be created:
    /// fetching from them fails, which /health must not hide either.
    pub missing_consumers: Vec<String>,
}

/// Lists every stream's info.
pub async fn list(js: &jetstream::Context) -> Result<Vec<stream::Info>, String> {
    js.streams()
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| format!("cannot list streams: {e}"))
}

/// Rounds of [`reconcile`] at most: a meta leader election takes a few
/// seconds, and the backoff below adds up to about 12 s over them.
pub const MAX_ROUNDS: u32 = 10;

/// The pause before round `round + 1` (rounds count from 1), or None when
/// the rounds are used up. A concurrent create (Replan) is settled at once:
/// the other node's stream is there to be read; an election (Backoff) needs
/// time.
pub fn next_round(round: u32, why: crate::cluster::Retry) -> Option<Duration> {
    use crate::cluster::Retry;
    if round >= MAX_ROUNDS {
        return None;
    }
    match why {
        Retry::Fail => None,
        Retry::Replan => Some(Duration::from_millis(50)),
        Retry::Backoff => Some(Duration::from_millis((250 * round as u64).min(2000))),
    }
}

/// What $JS.API.STREAM.CREATE answers, as far as the reconciler cares.
#[derive(serde::Deserialize)]
struct Created {
    /// Set only on the answer to the request that really created the
    /// stream: in a cluster, an identical create that loses the race is
    /// answered with the winner's stream and no `did_create` (nats-server
    /// 2.9 and later alike).
    #[serde(default)]
    did_create: bool,
    config: stream::Config,
}

/// Creates a stream; Ok((whether this request created it, its subjects)).
/// A raw request rather than async-nats' create_stream, which drops
/// `did_create`: without it three daemons racing each log "created".
async fn create_stream(
    js: &jetstream::Context,
    cfg: stream::Config,
) -> Result<(bool, Vec<String>), String> {
    use jetstream::response::Response;
    let subject = format!("STREAM.CREATE.{}", cfg.name);
    match js.request::<_, _, Response<Created>>(subject, &cfg).await {
        Ok(Response::Ok(c)) => Ok((c.did_create, c.config.subjects)),
        Ok(Response::Err { error }) => Err(format!("jetstream error: {error}")),
        Err(e) => Err(format!("jetstream request: {e}")),
    }
}

/// Brings nats-server's streams in line with `desired`.
///
/// In a cluster several daemons reconcile at once and the meta leader may
/// still be being elected: a create that loses a race to another node
/// (10058), a request that times out or finds JetStream unavailable does
/// not end the reconciliation: the streams are read again and the plan made
/// again (so a stream another node just created is seen and left alone),
/// after a short backoff when there was no leader. A real refusal is
/// reported at once.
pub async fn reconcile(
    js: &jetstream::Context,
    desired: &BTreeMap<String, StreamConfig>,
) -> Result<Report, String> {
    let mut round = 1;
    loop {
        let (result, why) = match reconcile_round(js, desired).await {
            Ok((report, None)) => return Ok(report),
            Ok((report, Some(why))) => (Ok(report), why),
            Err(e) => {
                let why = crate::cluster::classify(&e);
                (Err(e), why)
            }
        };
        let Some(pause) = next_round(round, why) else {
            return result;
        };
        let what = match &result {
            Ok(r) => r.errors.join("; "),
            Err(e) => e.clone(),
        };
        tracing::info!(round, retry = ?why, "stream reconciliation round {round} did not settle ({what}); reading the streams again in {} ms", pause.as_millis());
        tokio::time::sleep(pause).await;
        round += 1;
    }
}

/// One pass: read, plan, apply. Also says whether an error calls for
/// another pass (the first retryable error's kind).
async fn reconcile_round(
    js: &jetstream::Context,
    desired: &BTreeMap<String, StreamConfig>,
) -> Result<(Report, Option<crate::cluster::Retry>), String> {
    use crate::cluster::{classify, Retry};
    let mut retry: Option<Retry> = None;
    let mut note = |e: &str| {
        let kind = classify(e);
        if kind != Retry::Fail && retry.is_none() {
            retry = Some(kind);
        }
    };
    let infos = list(js).await?;
    let existing: BTreeMap<String, stream::Config> = infos
        .into_iter()
        .map(|i| (i.config.name.clone(), i.config))
        .collect();
    let actual: BTreeMap<String, ActualStream> = existing
        .iter()
        .map(|(n, c)| (n.clone(), actual_from(c)))
        .collect();
    let mut report = Report::default();
    for change in plan(desired, &actual) {
        match change {
            Change::Create { stream } => {
                match create_stream(js, to_nats(&stream, &desired[&stream])).await {
                    Ok((true, subjects)) => {
                        let subjects = subjects.join(", ");
                        tracing::info!(stream = %stream, subjects = %subjects, "created stream {stream} ({subjects})");
                        report.created.push(stream);
                    }
                    Ok((false, _)) => {
                        tracing::info!(stream = %stream, "stream {stream} was created by another node at the same moment, with the same config; nothing to do");
                    }
                    Err(e) => {
                        if classify(&e.to_string()) == Retry::Fail {
                            tracing::error!(stream = %stream, error = %e, "cannot create stream {stream}: {e}");
                        } else {
                            tracing::info!(stream = %stream, error = %e, "creating stream {stream} raced another node or found no meta leader ({e}); reading the streams again");
                        }
                        note(&e.to_string());
                        report.errors.push(format!("{stream}: cannot create: {e}"));
                    }
                }
            }
            Change::Update { stream, diffs } => {
                let cfg = apply_mutable(&existing[&stream], &stream, &desired[&stream]);
                let what: Vec<String> = diffs
                    .iter()
                    .map(|d| format!("{} {} -> {}", d.field, d.actual, d.desired))
                    .collect();
                match js.update_stream(cfg).await {
                    Ok(_) => {
                        tracing::info!(stream = %stream, changes = %what.join(", "), "updated stream {stream}: {}", what.join(", "));
                        report.updated.push(stream);
                    }
                    Err(e) => {
                        tracing::error!(stream = %stream, changes = %what.join(", "), error = %e, "cannot update stream {stream} ({}): {e}", what.join(", "));
                        note(&e.to_string());
                        report
                            .errors
                            .push(format!("{stream}: cannot update {}: {e}", what.join(", ")));
                    }
                }
            }
            Change::Drift { stream, diffs } => {
                for d in diffs {
                    tracing::error!(
                        stream = %stream, field = d.field, desired = %d.desired, actual = %d.actual,
                        "stream {stream}: {} is {} but the config says {}; JetStream cannot change it in place, so the stream is left untouched (to apply it, back up and delete the stream; it will be recreated)",
                        d.field, d.actual, d.desired
                    );
                    report.drift.push(format!(
                        "{stream}: {} is {}, config says {}",
                        d.field, d.actual, d.desired
                    ));
                }
            }
            Change::Unmanaged { stream } => {
                tracing::debug!(stream = %stream, "stream is not declared in the config; leaving it alone");
            }
        }
    }
    report.streams = list(js)
        .await?
        .into_iter()
        .map(|i| (i.config.name, i.config.subjects))
        .collect();
    let version = js.client().server_info().version;
    for (stream, s) in desired {
        if !s.consumers.is_empty() && report.streams.contains_key(stream) {
            let before = report.errors.len();
            if let Err(e) =
                reconcile_consumers(js, stream, &s.consumers, &version, &mut report).await
            {
                tracing::error!(stream = %stream, error = %e, "{e}");
                report.errors.push(format!("{stream}: {e}"));
            }
            for e in &report.errors[before..] {
                note(e);
            }
        }
    }
    report.missing = desired
        .keys()
        .filter(|n| !report.streams.contains_key(*n))
        .cloned()
        .collect();
    Ok((report, retry))
}

// ---------------------------------------------------------- consumers ----

/// The fields of an existing consumer that the config manages, as text
/// where the config's enums cannot represent every server value.
#[derive(Debug, Clone, PartialEq)]
pub struct ActualConsumer {
    /// Set for a push consumer (e.g. one a client's `subscribe` created).
    pub deliver_subject: Option<String>,
    pub filters: Vec<String>,
    pub deliver_policy: String,
    pub opt_start_seq: Option<u64>,
    pub ack_policy: String,
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub max_ack_pending: i64,
    /// As nats-server reports it (0: the stream's).
    pub replicas: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerChange {
    Create {
        consumer: String,
    },
    /// Mutable fields to bring in line.
    Update {
        consumer: String,
        diffs: Vec<FieldDiff>,
    },
    /// Fields JetStream cannot change on an existing consumer: reported.
    Drift {
        consumer: String,
        diffs: Vec<FieldDiff>,
    },
    /// Exists on the stream but is not declared: left alone.
    Unmanaged {
        consumer: String,
    },
}

/// Compares one stream's declared consumers with the ones it has. A push
/// consumer cannot become a pull one: updating its limits would not make it
/// usable, and it belongs to whoever created it, so it only gets drift.
pub fn plan_consumers(
    desired: &BTreeMap<String, ConsumerConfig>,
    actual: &BTreeMap<String, ActualConsumer>,
) -> Vec<ConsumerChange> {
    plan_named(desired, actual, diff_consumer, |have| {
        have.deliver_subject.is_none()
    })
    .into_iter()
    .map(|(consumer, step)| match step {
        Step::Create => ConsumerChange::Create { consumer },
        Step::Update(diffs) => ConsumerChange::Update { consumer, diffs },
        Step::Drift(diffs) => ConsumerChange::Drift { consumer, diffs },
        Step::Unmanaged => ConsumerChange::Unmanaged { consumer },
    })
    .collect()
}

fn diff_consumer(want: &ConsumerConfig, have: &ActualConsumer) -> (Vec<FieldDiff>, Vec<FieldDiff>) {
    let mut diffs = Diffs::default();
    let mut push = |immutable, field, desired, actual| diffs.add(immutable, field, desired, actual);
    push(
        true,
        "delivery",
        "pull".into(),
        match &have.deliver_subject {
            Some(s) => format!("push (to {s})"),
            None => "pull".into(),
        },
    );
    push(
        true,
        "deliver_policy",
        want.deliver_policy.to_string(),
        have.deliver_policy.clone(),
    );
    if want.deliver_policy == DeliverPolicy::ByStartSequence {
        push(
            true,
            "opt_start_seq",
            format!("{:?}", want.opt_start_seq),
            format!("{:?}", have.opt_start_seq),
        );
    }
    push(
        true,
        "ack_policy",
        want.ack_policy.to_string(),
        have.ack_policy.clone(),
    );
    let wf: BTreeSet<String> = want.filters().into_iter().collect();
    let hf: BTreeSet<&String> = have.filters.iter().collect();
    push(false, "filter", format!("{wf:?}"), format!("{hf:?}"));
    push(
        false,
        "ack_wait",
        format!("{:?}", want.ack_wait.get()),
        format!("{:?}", have.ack_wait),
    );
    push(
        false,
        "max_deliver",
        norm_limit(want.max_deliver).to_string(),
        norm_limit(have.max_deliver).to_string(),
    );
    if want.ack_policy != AckPolicy::None {
        push(
            false,
            "max_ack_pending",
            norm_limit(want.max_ack_pending).to_string(),
            norm_limit(have.max_ack_pending).to_string(),
        );
    }
    // 0 means "as many as the stream": nats-server may report what that
    // came to, which is no difference.
    if want.replicas != 0 {
        push(
            false,
            "replicas",
            want.replicas.to_string(),
            have.replicas.max(1).to_string(),
        );
    }
    (diffs.mutable, diffs.immutable)
}

pub fn actual_consumer_from(c: &consumer::Config) -> ActualConsumer {
    let filters = if c.filter_subject.is_empty() {
        c.filter_subjects.clone()
    } else {
        vec![c.filter_subject.clone()]
    };
    let (deliver_policy, opt_start_seq) = match c.deliver_policy {
        consumer::DeliverPolicy::All => ("all", None),
        consumer::DeliverPolicy::Last => ("last", None),
        consumer::DeliverPolicy::New => ("new", None),
        consumer::DeliverPolicy::ByStartSequence { start_sequence } => {
            ("by_start_sequence", Some(start_sequence))
        }
        consumer::DeliverPolicy::ByStartTime { .. } => ("by_start_time", None),
        consumer::DeliverPolicy::LastPerSubject => ("last_per_subject", None),
    };
    ActualConsumer {
        deliver_subject: c.deliver_subject.clone(),
        filters,
        deliver_policy: deliver_policy.into(),
        opt_start_seq,
        ack_policy: ack_policy_name(c.ack_policy).into(),
        ack_wait: c.ack_wait,
        max_deliver: c.max_deliver,
        max_ack_pending: c.max_ack_pending,
        replicas: c.num_replicas,
    }
}

fn ack_policy_name(p: consumer::AckPolicy) -> &'static str {
    match p {
        consumer::AckPolicy::Explicit => "explicit",
        consumer::AckPolicy::None => "none",
        consumer::AckPolicy::All => "all",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

/// Whether a nats-server version ("2.9.10", "2.10.7-beta") knows
/// `filter_subjects` (2.10+). An older server ignores the key and would
/// create a consumer of the whole stream.
pub fn supports_filter_subjects(version: &str) -> bool {
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (2, 10)
}

/// The async-nats config for a declared consumer; Err when the server is
/// too old for what is declared.
pub fn consumer_to_nats(
    name: &str,
    k: &ConsumerConfig,
    server_version: &str,
) -> Result<consumer::Config, String> {
    let mut cfg = consumer::Config {
        durable_name: Some(name.to_string()),
        deliver_policy: match k.deliver_policy {
            DeliverPolicy::All => consumer::DeliverPolicy::All,
            DeliverPolicy::Last => consumer::DeliverPolicy::Last,
            DeliverPolicy::New => consumer::DeliverPolicy::New,
            DeliverPolicy::ByStartSequence => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: k.opt_start_seq.unwrap_or(1),
            },
            DeliverPolicy::LastPerSubject => consumer::DeliverPolicy::LastPerSubject,
        },
        ack_policy: match k.ack_policy {
            AckPolicy::Explicit => consumer::AckPolicy::Explicit,
            AckPolicy::None => consumer::AckPolicy::None,
            AckPolicy::All => consumer::AckPolicy::All,
        },
        ack_wait: k.ack_wait.get(),
        max_deliver: k.max_deliver,
        // 0: nats-server gives the consumer its stream's replicas.
        num_replicas: k.replicas as usize,
        ..Default::default()
    };
    if k.ack_policy != AckPolicy::None {
        cfg.max_ack_pending = k.max_ack_pending;
    }
    set_filters(&mut cfg, k, server_version)?;
    Ok(cfg)
}

fn set_filters(
    cfg: &mut consumer::Config,
    k: &ConsumerConfig,
    server_version: &str,
) -> Result<(), String> {
    let filters = k.filters();
    cfg.filter_subject = String::new();
    cfg.filter_subjects = Vec::new();
    match filters.len() {
        0 => {}
        1 => cfg.filter_subject = filters[0].clone(),
        _ if supports_filter_subjects(server_version) => cfg.filter_subjects = filters,
        n => {
            return Err(format!(
                "filter_subjects with {n} subjects needs nats-server 2.10 or later, but this one is {server_version}; declare one filter_subject (or one consumer per subject)"
            ))
        }
    }
    Ok(())
}

/// The declared values of mutable fields over an existing consumer's
/// config: the server refuses an update that touches anything else.
fn apply_consumer_mutable(
    existing: &consumer::Config,
    k: &ConsumerConfig,
    server_version: &str,
) -> Result<consumer::Config, String> {
    let mut cfg = existing.clone();
    set_filters(&mut cfg, k, server_version)?;
    cfg.ack_wait = k.ack_wait.get();
    cfg.max_deliver = k.max_deliver;
    if k.ack_policy != AckPolicy::None {
        cfg.max_ack_pending = k.max_ack_pending;
    }
    Ok(cfg)
}

/// Brings one stream's declared consumers in line; outcomes go into
/// `report` as `STREAM/CONSUMER` (created, updated) and
/// `STREAM: consumer CONSUMER: ...` (drift, errors).
async fn reconcile_consumers(
    js: &jetstream::Context,
    stream: &str,
    desired: &BTreeMap<String, ConsumerConfig>,
    server_version: &str,
    report: &mut Report,
) -> Result<(), String> {
    let handle = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| format!("stream {stream}: {e}"))?;
    let infos: Vec<consumer::Info> = handle
        .consumers()
        .try_collect()
        .await
        .map_err(|e| format!("cannot list the consumers of stream {stream}: {e}"))?;
    let existing: BTreeMap<String, consumer::Config> =
        infos.into_iter().map(|i| (i.name, i.config)).collect();
    let actual: BTreeMap<String, ActualConsumer> = existing
        .iter()
        .map(|(n, c)| (n.clone(), actual_consumer_from(c)))
        .collect();
    for change in plan_consumers(desired, &actual) {
        match change {
            ConsumerChange::Create { consumer } => {
                let made = match consumer_to_nats(&consumer, &desired[&consumer], server_version) {
                    Ok(cfg) => js
                        .create_consumer_on_stream(cfg, stream)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                match made {
                    Ok(()) => {
                        tracing::info!(stream = %stream, consumer = %consumer, "created consumer {consumer} on stream {stream}");
                        report.created.push(format!("{stream}/{consumer}"));
                    }
                    Err(e) => {
                        tracing::error!(stream = %stream, consumer = %consumer, error = %e, "cannot create consumer {consumer} on stream {stream}: {e}");
                        report
                            .errors
                            .push(format!("{stream}: consumer {consumer}: cannot create: {e}"));
                        report
                            .missing_consumers
                            .push(format!("{stream}/{consumer}"));
                    }
                }
            }
            ConsumerChange::Update { consumer, diffs } => {
                let what: Vec<String> = diffs
                    .iter()
                    .map(|d| format!("{} {} -> {}", d.field, d.actual, d.desired))
                    .collect();
                let what = what.join(", ");
                let done = match apply_consumer_mutable(
                    &existing[&consumer],
                    &desired[&consumer],
                    server_version,
                ) {
                    Ok(cfg) => js
                        .create_consumer_on_stream(cfg, stream)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                match done {
                    Ok(()) => {
                        tracing::info!(stream = %stream, consumer = %consumer, changes = %what, "updated consumer {consumer} on stream {stream}: {what}");
                        report.updated.push(format!("{stream}/{consumer}"));
                    }
                    Err(e) => {
                        tracing::error!(stream = %stream, consumer = %consumer, changes = %what, error = %e, "cannot update consumer {consumer} on stream {stream} ({what}): {e}");
                        report.errors.push(format!(
                            "{stream}: consumer {consumer}: cannot update {what}: {e}"
                        ));
                    }
                }
            }
            ConsumerChange::Drift { consumer, diffs } => {
                for d in diffs {
                    tracing::error!(
                        stream = %stream, consumer = %consumer, field = d.field, desired = %d.desired, actual = %d.actual,
                        "consumer {consumer} on stream {stream}: {} is {} but the config says {}; JetStream cannot change it in place, so the consumer is left untouched (to apply it, delete the consumer; it will be recreated, starting over by its deliver_policy)",
                        d.field, d.actual, d.desired
                    );
                    report.drift.push(format!(
                        "{stream}: consumer {consumer}: {} is {}, config says {}",
                        d.field, d.actual, d.desired
                    ));
                }
            }
            ConsumerChange::Unmanaged { consumer } => {
                tracing::debug!(stream = %stream, consumer = %consumer, "consumer is not declared in the config; leaving it alone");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{default_streams, Dur, Size};

    fn actual_of(s: &StreamConfig) -> ActualStream {
        actual_from(&to_nats("X", s))
    }

    #[test]
    fn a_stream_another_node_created_meanwhile_is_replanned_to_nothing() {
        // Three daemons plan "create" against an empty cluster; two lose
        // the race (10058). Their next round reads the winner's stream:
        // same config, so nothing is created or updated a second time.
        let mut desired = BTreeMap::new();
        let mut s = StreamConfig::new(&["clustered.>"], 0, -1);
        s.replicas = 3;
        desired.insert("CLUSTERED".to_string(), s.clone());
        assert_eq!(
            plan(&desired, &BTreeMap::new()),
            vec![Change::Create {
                stream: "CLUSTERED".into()
            }]
        );
        let mut actual = BTreeMap::new();
        actual.insert("CLUSTERED".to_string(), actual_of(&s));
        assert!(plan(&desired, &actual).is_empty());
        assert_eq!(
            crate::cluster::classify("stream name already in use (code 400, error code 10058)"),
            crate::cluster::Retry::Replan
        );
    }

    #[test]
    fn rounds_retry_races_at_once_elections_with_growing_pauses_and_end() {
        use crate::cluster::Retry;
        assert_eq!(
            next_round(1, Retry::Replan),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            next_round(1, Retry::Backoff),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            next_round(3, Retry::Backoff),
            Some(Duration::from_millis(750))
        );
        assert_eq!(next_round(9, Retry::Backoff), Some(Duration::from_secs(2)));
        assert_eq!(next_round(MAX_ROUNDS, Retry::Backoff), None);
        assert_eq!(next_round(1, Retry::Fail), None);
        let total: Duration = (1..MAX_ROUNDS)
            .filter_map(|r| next_round(r, Retry::Backoff))
            .sum();
        assert!(total < Duration::from_secs(15), "{total:?}");
    }

    #[test]
    fn missing_streams_are_created_and_undeclared_ones_left_alone() {
        let desired = default_streams();
        let mut actual = BTreeMap::new();
        actual.insert(
            "MARKET_DATA".to_string(),
            actual_of(&desired["MARKET_DATA"]),
        );
        actual.insert(
            "SOMEONE_ELSES".to_string(),
            actual_of(&StreamConfig::new(&["x.>"], 0, -1)),
        );
        assert_eq!(
            plan(&desired, &actual),
            vec![
                Change::Create {
                    stream: "SERVICE_LOGS".into()
                },
                Change::Create {
                    stream: "SYSTEM_EVENTS".into()
                },
                Change::Unmanaged {
                    stream: "SOMEONE_ELSES".into()
                },
            ]
        );
    }

    #[test]
    fn in_sync_streams_need_nothing() {
        let desired = default_streams();
        let actual = desired
            .iter()
            .map(|(n, s)| (n.clone(), actual_of(s)))
            .collect();
        assert_eq!(plan(&desired, &actual), vec![]);
    }

    #[test]
    fn mutable_changes_are_updates() {
        let mut desired = default_streams();
        let actual = desired
            .iter()
            .map(|(n, s)| (n.clone(), actual_of(s)))
            .collect();
        let md = desired.get_mut("MARKET_DATA").unwrap();
        md.max_age = Dur::secs(7200);
        md.max_bytes = Some(Size(1 << 30));
        md.subjects.push("ticks.>".into());
        match &plan(&desired, &actual)[..] {
            [Change::Update { stream, diffs }] => {
                assert_eq!(stream, "MARKET_DATA");
                let fields: Vec<&str> = diffs.iter().map(|d| d.field).collect();
                assert_eq!(fields, ["subjects", "max_age", "max_bytes"]);
                assert_eq!(diffs[1].actual, "3600s");
                assert_eq!(diffs[1].desired, "7200s");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn storage_and_workqueue_changes_are_drift_not_updates() {
        let mut desired = default_streams();
        let actual = desired
            .iter()
            .map(|(n, s)| (n.clone(), actual_of(s)))
            .collect();
        desired.get_mut("MARKET_DATA").unwrap().storage = Storage::Memory;
        desired.get_mut("SYSTEM_EVENTS").unwrap().retention = Retention::Workqueue;
        desired.get_mut("SERVICE_LOGS").unwrap().retention = Retention::Interest;
        let p = plan(&desired, &actual);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            matches!(&p[0], Change::Drift { stream, diffs } if stream == "MARKET_DATA" && diffs[0].field == "storage" && diffs[0].desired == "memory" && diffs[0].actual == "file")
        );
        assert!(
            matches!(&p[1], Change::Update { stream, diffs } if stream == "SERVICE_LOGS" && diffs[0].field == "retention")
        );
        assert!(
            matches!(&p[2], Change::Drift { stream, diffs } if stream == "SYSTEM_EVENTS" && diffs[0].field == "retention")
        );
    }

    #[test]
    fn zero_and_minus_one_both_mean_unlimited() {
        let mut s = StreamConfig::new(&["a.>"], 0, -1);
        let mut a = actual_of(&s);
        a.max_msgs = 0;
        a.max_bytes = 0;
        let desired = BTreeMap::from([("A".to_string(), s.clone())]);
        assert_eq!(
            plan(&desired, &BTreeMap::from([("A".to_string(), a.clone())])),
            vec![]
        );
        s.duplicate_window = None;
        a.duplicate_window = Duration::from_secs(120);
        assert_eq!(
            plan(&desired, &BTreeMap::from([("A".to_string(), a)])),
            vec![],
            "an unset duplicate_window is the server's business"
        );
    }

    #[test]
    fn updates_keep_unmanaged_fields_and_immutable_ones() {
        let want = StreamConfig::new(&["a.>"], 60, 10);
        let mut existing = to_nats("A", &StreamConfig::new(&["a.>"], 30, 5));
        existing.description = Some("kept".into());
        existing.storage = stream::StorageType::Memory;
        let cfg = apply_mutable(&existing, "A", &want);
        assert_eq!(cfg.description.as_deref(), Some("kept"));
        assert_eq!(cfg.storage, stream::StorageType::Memory);
        assert_eq!(
            (cfg.max_age, cfg.max_messages),
            (Duration::from_secs(60), 10)
        );
    }

    fn consumer(yaml_filter: Option<&str>) -> ConsumerConfig {
        ConsumerConfig {
            filter_subject: yaml_filter.map(str::to_string),
            ..Default::default()
        }
    }

    fn actual_consumer_of(k: &ConsumerConfig) -> ActualConsumer {
        actual_consumer_from(&consumer_to_nats("c", k, "2.10.0").unwrap())
    }

    #[test]
    fn missing_consumers_are_created_and_undeclared_ones_left_alone() {
        let desired = BTreeMap::from([
            ("a".to_string(), consumer(Some("market.>"))),
            ("b".to_string(), consumer(None)),
        ]);
        let actual = BTreeMap::from([
            ("a".to_string(), actual_consumer_of(&desired["a"])),
            ("clients".to_string(), actual_consumer_of(&consumer(None))),
        ]);
        assert_eq!(
            plan_consumers(&desired, &actual),
            vec![
                ConsumerChange::Create {
                    consumer: "b".into()
                },
                ConsumerChange::Unmanaged {
                    consumer: "clients".into()
                },
            ]
        );
    }

    #[test]
    fn consumer_limits_and_filters_are_updates() {
        let mut want = consumer(Some("market.>"));
        let actual = BTreeMap::from([("a".to_string(), actual_consumer_of(&want))]);
        want.filter_subject = Some("market.binance.>".into());
        want.ack_wait = Dur::secs(5);
        want.max_ack_pending = 10;
        let desired = BTreeMap::from([("a".to_string(), want)]);
        match &plan_consumers(&desired, &actual)[..] {
            [ConsumerChange::Update { consumer, diffs }] => {
                assert_eq!(consumer, "a");
                let fields: Vec<&str> = diffs.iter().map(|d| d.field).collect();
                assert_eq!(fields, ["filter", "ack_wait", "max_ack_pending"]);
                assert_eq!(
                    (diffs[1].actual.as_str(), diffs[1].desired.as_str()),
                    ("30s", "5s")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn explicit_consumer_replicas_are_an_update_inherited_ones_never_differ() {
        let mut want = consumer(Some("market.>"));
        want.replicas = 3;
        let mut have = actual_consumer_of(&want);
        have.replicas = 1;
        let desired = BTreeMap::from([("a".to_string(), want.clone())]);
        let actual = BTreeMap::from([("a".to_string(), have.clone())]);
        match &plan_consumers(&desired, &actual)[..] {
            [ConsumerChange::Update { diffs, .. }] => {
                assert_eq!(diffs[0].field, "replicas");
                assert_eq!(
                    (diffs[0].actual.as_str(), diffs[0].desired.as_str()),
                    ("1", "3")
                );
            }
            other => panic!("{other:?}"),
        }
        // Inherited (0): whatever the server reports is what it should be.
        want.replicas = 0;
        have.replicas = 3;
        let desired = BTreeMap::from([("a".to_string(), want)]);
        let actual = BTreeMap::from([("a".to_string(), have)]);
        assert_eq!(plan_consumers(&desired, &actual), vec![]);
    }

    #[test]
    fn policies_and_push_consumers_are_drift_never_updates() {
        let want = consumer(Some("market.>"));
        let mut have = actual_consumer_of(&want);
        have.ack_policy = "none".into();
        have.deliver_policy = "new".into();
        have.deliver_subject = Some("_INBOX.x".into());
        have.ack_wait = Duration::from_secs(1);
        let desired = BTreeMap::from([("market-consumer".to_string(), want)]);
        let p = plan_consumers(
            &desired,
            &BTreeMap::from([("market-consumer".to_string(), have)]),
        );
        match &p[..] {
            [ConsumerChange::Drift { consumer, diffs }] => {
                assert_eq!(consumer, "market-consumer");
                let fields: Vec<&str> = diffs.iter().map(|d| d.field).collect();
                assert_eq!(fields, ["delivery", "deliver_policy", "ack_policy"]);
                assert_eq!(diffs[0].actual, "push (to _INBOX.x)");
            }
            other => panic!("a push consumer is reported, not updated: {other:?}"),
        }
    }

    #[test]
    fn in_sync_consumers_need_nothing_and_unlimited_is_unlimited() {
        let mut want = consumer(None);
        want.max_deliver = -1;
        let mut have = actual_consumer_of(&want);
        have.max_deliver = 0;
        let desired = BTreeMap::from([("a".to_string(), want)]);
        assert_eq!(
            plan_consumers(&desired, &BTreeMap::from([("a".to_string(), have)])),
            vec![]
        );
    }

    #[test]
    fn several_filters_need_nats_server_2_10() {
        let k = ConsumerConfig {
            filter_subjects: vec!["a.>".into(), "b.>".into()],
            ..Default::default()
        };
        let e = consumer_to_nats("c", &k, "2.9.10").unwrap_err();
        assert!(
            e.contains("needs nats-server 2.10") && e.contains("2.9.10"),
            "{e}"
        );
        let cfg = consumer_to_nats("c", &k, "2.12.1").unwrap();
        assert_eq!(cfg.filter_subjects, ["a.>", "b.>"]);
        // One entry is sent as filter_subject, which every version knows.
        let one = ConsumerConfig {
            filter_subjects: vec!["a.>".into()],
            ..Default::default()
        };
        let cfg = consumer_to_nats("c", &one, "2.9.10").unwrap();
        assert_eq!(
            (cfg.filter_subject.as_str(), cfg.filter_subjects.len()),
            ("a.>", 0)
        );
        assert!(supports_filter_subjects("2.10.0-beta.1"));
        assert!(!supports_filter_subjects("2.9.25"));
        assert!(!supports_filter_subjects("garbage"));
    }

    #[test]
    fn consumer_updates_keep_fields_the_config_does_not_manage() {
        let mut existing = consumer_to_nats("c", &consumer(Some("a.>")), "2.10.0").unwrap();
        existing.max_waiting = 512;
        existing.description = Some("kept".into());
        let mut want = consumer(Some("a.b.>"));
        want.max_deliver = 3;
        let cfg = apply_consumer_mutable(&existing, &want, "2.10.0").unwrap();
        assert_eq!(
            (cfg.max_waiting, cfg.description.as_deref()),
            (512, Some("kept"))
        );
        assert_eq!((cfg.filter_subject.as_str(), cfg.max_deliver), ("a.b.>", 3));
        assert_eq!(cfg.durable_name.as_deref(), Some("c"));
    }
}
