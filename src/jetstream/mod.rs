//! Declared streams and consumers vs what nats-server has: a pure plan,
//! then apply, in rounds until it settles.
//!
//! This file holds what streams and consumers share (the by-name planner,
//! field diffs, the report) and the reconciliation that runs the streams,
//! then each stream's consumers; `streams.rs` and `consumers.rs` each keep
//! their own diff, change type and apply, and do not depend on each other.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;

use crate::config::StreamConfig;

mod consumers;
mod error;
mod known;
mod streams;

pub use consumers::{
    actual_consumer_from, consumer_to_nats, plan_consumers, supports_filter_subjects,
    ActualConsumer, ConsumerChange,
};
pub use error::{JsError, Retry};
pub use known::KnownPulls;
pub use streams::{actual_from, list, plan, to_nats, ActualStream, Change};

/// One field that differs: name, wanted, found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDiff {
    pub field: &'static str,
    pub desired: String,
    pub actual: String,
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

/// 0 and -1 both mean "no limit" to JetStream.
fn norm_limit(v: i64) -> i64 {
    if v <= 0 {
        -1
    } else {
        v
    }
}

/// A declared stream or consumer that reconciliation could not create or
/// update, and why. Shown as `STREAM: why` or `STREAM: consumer NAME: why`
/// (also in /api/v1/status's JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub stream: String,
    pub consumer: Option<String>,
    /// What failed, with nats-server's reason.
    pub what: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.consumer {
            None => write!(f, "{}: {}", self.stream, self.what),
            Some(c) => write!(f, "{}: consumer {c}: {}", self.stream, self.what),
        }
    }
}

impl serde::Serialize for Failure {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
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
    pub errors: Vec<Failure>,
    /// Every stream nats-server has after reconciling, with subjects.
    pub streams: BTreeMap<String, Vec<String>>,
    /// Declared streams that still do not exist: their subjects are not
    /// persisted, which /health must not hide.
    pub missing: Vec<String>,
    /// Declared consumers (`STREAM/CONSUMER`) that could not be created:
    /// fetching from them fails, which /health must not hide either.
    pub missing_consumers: Vec<String>,
    /// Declared streams that could not be created or updated because no
    /// server could take a replica (10005 "no suitable peers for
    /// placement"); their failures are in `errors` too.
    pub no_peers: Vec<String>,
}

/// The pause before trying again after `failures` reconciliations in a
/// row could not place a stream (10005): 2 s, doubling, at most 10 s. A
/// cluster that is stuck this way does not heal by being asked every 2 s.
pub fn no_peers_pause(failures: u32) -> Duration {
    let doubled = 2u64.saturating_mul(1u64 << failures.saturating_sub(1).min(10));
    Duration::from_secs(doubled.min(10))
}

/// Whether the `failures`-th such failure in a row is logged: the first,
/// then a summary every sixth (about once a minute at 10 s pauses).
pub fn no_peers_logged(failures: u32) -> bool {
    failures == 1 || (failures > 1 && failures % 6 == 0)
}

/// Rounds of [`reconcile`] at most: a meta leader election takes a few
/// seconds, and the backoff below adds up to about 12 s over them.
pub const MAX_ROUNDS: u32 = 10;

/// The pause before round `round + 1` (rounds count from 1), or None when
/// the rounds are used up. A concurrent create (Replan) is settled at once:
/// the other node's stream is there to be read; an election (Backoff) needs
/// time.
pub fn next_round(round: u32, why: Retry) -> Option<Duration> {
    if round >= MAX_ROUNDS {
        return None;
    }
    match why {
        Retry::Fail | Retry::NoPeers => None,
        Retry::Replan => Some(Duration::from_millis(50)),
        Retry::Backoff => Some(Duration::from_millis((250 * round as u64).min(2000))),
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
) -> Result<Report, JsError> {
    let mut round = 1;
    loop {
        let (result, why) = match reconcile_round(js, desired).await {
            Ok((report, None)) => return Ok(report),
            Ok((report, Some(why))) => (Ok(report), why),
            Err(e) => {
                let why = e.retry;
                (Err(e), why)
            }
        };
        let Some(pause) = next_round(round, why) else {
            return result;
        };
        let what = match &result {
            Ok(r) => r
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            Err(e) => e.to_string(),
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
) -> Result<(Report, Option<Retry>), JsError> {
    let mut retry: Option<Retry> = None;
    let mut note = |kind: Retry| {
        if matches!(kind, Retry::Replan | Retry::Backoff) && retry.is_none() {
            retry = Some(kind);
        }
    };
    let mut report = Report::default();
    streams::reconcile_streams(js, desired, &mut report, &mut note).await?;
    report.streams = list(js)
        .await?
        .into_iter()
        .map(|i| (i.config.name, i.config.subjects))
        .collect();
    let version = js.client().server_info().version;
    for (stream, s) in desired {
        if !s.consumers.is_empty() && report.streams.contains_key(stream) {
            if let Err(e) = consumers::reconcile_consumers(
                js,
                stream,
                &s.consumers,
                &version,
                &mut report,
                &mut note,
            )
            .await
            {
                tracing::error!(stream = %stream, error = %e, "{e}");
                note(e.retry);
                report.errors.push(Failure {
                    stream: stream.clone(),
                    consumer: None,
                    what: e.to_string(),
                });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_retry_races_at_once_elections_with_growing_pauses_and_end() {
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
    fn placement_failures_back_off_from_2_s_to_10_s_and_log_a_summary_a_minute() {
        let pauses: Vec<u64> = (1..=6).map(|n| no_peers_pause(n).as_secs()).collect();
        assert_eq!(pauses, [2, 4, 8, 10, 10, 10]);
        assert_eq!(no_peers_pause(u32::MAX), Duration::from_secs(10));
        // No further rounds within one reconciliation: the caller waits.
        assert_eq!(next_round(1, Retry::NoPeers), None);
        let logged: Vec<u32> = (1..=25).filter(|n| no_peers_logged(*n)).collect();
        assert_eq!(logged, [1, 6, 12, 18, 24]);
        assert!(!no_peers_logged(0));
        // Over ten minutes stuck: a few lines, not hundreds.
        let mut t = Duration::ZERO;
        let mut lines = 0;
        let mut n = 0;
        while t < Duration::from_secs(600) {
            n += 1;
            lines += no_peers_logged(n) as u32;
            t += no_peers_pause(n);
        }
        assert!(lines <= 11, "{lines} lines in {n} attempts");
    }
}
