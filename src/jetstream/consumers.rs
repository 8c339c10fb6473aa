//! Declared durable consumers vs the ones their stream has: their plan and
//! its apply.
//!
//! They get the same treatment as streams, after their stream: created when
//! missing, their filters and limits updated in place, and a difference
//! JetStream cannot change (deliver or ack policy, push vs pull) reported,
//! never "fixed" by deleting the consumer and its position. Undeclared
//! consumers (the seed's clients create their own) are left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::TryStreamExt;

use super::{norm_limit, plan_named, Diffs, Failure, FieldDiff, JsError, Report, Retry, Step};
use crate::config::{AckPolicy, ConsumerConfig, DeliverPolicy};

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

/// Creates or updates a consumer (one JetStream call does both), given
/// the config built for it or why none could be built.
async fn put_consumer(
    js: &jetstream::Context,
    stream: &str,
    cfg: Result<consumer::Config, String>,
) -> Result<(), JsError> {
    match cfg {
        Ok(cfg) => js
            .create_consumer_on_stream(cfg, stream)
            .await
            .map(|_| ())
            .map_err(|e| JsError::new(&e, e.to_string())),
        Err(e) => Err(JsError::fail(e)),
    }
}

/// Brings one stream's declared consumers in line; outcomes go into
/// `report` as `STREAM/CONSUMER` (created, updated) and
/// `STREAM: consumer CONSUMER: ...` (drift, errors), and what every failed
/// create or update calls for to `note`.
pub(super) async fn reconcile_consumers(
    js: &jetstream::Context,
    stream: &str,
    desired: &BTreeMap<String, ConsumerConfig>,
    server_version: &str,
    report: &mut Report,
    note: &mut impl FnMut(Retry),
) -> Result<(), JsError> {
    let handle = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| JsError::new(&e, format!("stream {stream}: {e}")))?;
    let infos: Vec<consumer::Info> = handle.consumers().try_collect().await.map_err(|e| {
        JsError::new(
            &e,
            format!("cannot list the consumers of stream {stream}: {e}"),
        )
    })?;
    let existing: BTreeMap<String, consumer::Config> =
        infos.into_iter().map(|i| (i.name, i.config)).collect();
    let actual: BTreeMap<String, ActualConsumer> = existing
        .iter()
        .map(|(n, c)| (n.clone(), actual_consumer_from(c)))
        .collect();
    for change in plan_consumers(desired, &actual) {
        match change {
            ConsumerChange::Create { consumer } => {
                let made = consumer_to_nats(&consumer, &desired[&consumer], server_version);
                match put_consumer(js, stream, made).await {
                    Ok(()) => {
                        tracing::info!(stream = %stream, consumer = %consumer, "created consumer {consumer} on stream {stream}");
                        report.created.push(format!("{stream}/{consumer}"));
                    }
                    Err(e) => {
                        tracing::error!(stream = %stream, consumer = %consumer, error = %e, "cannot create consumer {consumer} on stream {stream}: {e}");
                        note(e.retry);
                        report.errors.push(Failure {
                            stream: stream.to_string(),
                            consumer: Some(consumer.clone()),
                            what: format!("cannot create: {e}"),
                        });
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
                let changed = apply_consumer_mutable(
                    &existing[&consumer],
                    &desired[&consumer],
                    server_version,
                );
                match put_consumer(js, stream, changed).await {
                    Ok(()) => {
                        tracing::info!(stream = %stream, consumer = %consumer, changes = %what, "updated consumer {consumer} on stream {stream}: {what}");
                        report.updated.push(format!("{stream}/{consumer}"));
                    }
                    Err(e) => {
                        tracing::error!(stream = %stream, consumer = %consumer, changes = %what, error = %e, "cannot update consumer {consumer} on stream {stream} ({what}): {e}");
                        note(e.retry);
                        report.errors.push(Failure {
                            stream: stream.to_string(),
                            consumer: Some(consumer.clone()),
                            what: format!("cannot update {what}: {e}"),
                        });
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
    use crate::config::Dur;

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
