//! Declared streams vs the streams nats-server has: their plan and its apply.
//!
//! Like nats-io/nack: create what is missing, update what JetStream lets
//! change, and for immutable differences (storage, retention to or from
//! workqueue) log an error naming the stream and field and leave the stream
//! untouched: recreating it would lose its messages. A stream that is not
//! declared is never deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures::TryStreamExt;

use super::error::Classify;
use super::{norm_limit, plan_named, Diffs, Failure, FieldDiff, JsError, Report, Retry, Step};
use crate::config::{Discard, Retention, Storage, StreamConfig};

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

/// Lists every stream's info.
pub async fn list(js: &jetstream::Context) -> Result<Vec<stream::Info>, JsError> {
    js.streams()
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| JsError::new(&e, format!("cannot list streams: {e}")))
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
) -> Result<(bool, Vec<String>), JsError> {
    use jetstream::response::Response;
    let subject = format!("STREAM.CREATE.{}", cfg.name);
    match js.request::<_, _, Response<Created>>(subject, &cfg).await {
        Ok(Response::Ok(c)) => Ok((c.did_create, c.config.subjects)),
        Ok(Response::Err { error }) => {
            Err(JsError::new(&error, format!("jetstream error: {error}")))
        }
        Err(e) => Err(JsError::new(&e, format!("jetstream request: {e}"))),
    }
}

/// Reads the streams, plans against `desired` and applies the plan; what
/// happened goes into `report`, and what every failure calls for to `note`
/// (so the caller can tell whether another round may settle it).
pub(super) async fn reconcile_streams(
    js: &jetstream::Context,
    desired: &BTreeMap<String, StreamConfig>,
    report: &mut Report,
    note: &mut impl FnMut(Retry),
) -> Result<(), JsError> {
    let infos = list(js).await?;
    let existing: BTreeMap<String, stream::Config> = infos
        .into_iter()
        .map(|i| (i.config.name.clone(), i.config))
        .collect();
    let actual: BTreeMap<String, ActualStream> = existing
        .iter()
        .map(|(n, c)| (n.clone(), actual_from(c)))
        .collect();
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
                    Err(e) if e.retry == Retry::NoPeers => {
                        // Logged by the caller, first and then throttled:
                        // a stuck cluster fails this on every retry.
                        tracing::debug!(stream = %stream, error = %e, "cannot create stream {stream}: {e}");
                        report.no_peers.push(stream.clone());
                        report.errors.push(Failure {
                            stream: stream.clone(),
                            consumer: None,
                            what: format!("cannot create: {e}"),
                        });
                    }
                    Err(e) => {
                        if e.retry == Retry::Fail {
                            tracing::error!(stream = %stream, error = %e, "cannot create stream {stream}: {e}");
                        } else {
                            tracing::info!(stream = %stream, error = %e, "creating stream {stream} raced another node or found no meta leader ({e}); reading the streams again");
                        }
                        note(e.retry);
                        report.errors.push(Failure {
                            stream: stream.clone(),
                            consumer: None,
                            what: format!("cannot create: {e}"),
                        });
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
                        if e.retry() == Retry::NoPeers {
                            // More replicas than can be placed: logged by
                            // the caller, like a create.
                            tracing::debug!(stream = %stream, error = %e, "cannot update stream {stream} ({}): {e}", what.join(", "));
                            report.no_peers.push(stream.clone());
                        } else {
                            tracing::error!(stream = %stream, changes = %what.join(", "), error = %e, "cannot update stream {stream} ({}): {e}", what.join(", "));
                        }
                        note(e.retry());
                        report.errors.push(Failure {
                            stream: stream.clone(),
                            consumer: None,
                            what: format!("cannot update {}: {e}", what.join(", ")),
                        });
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
}
