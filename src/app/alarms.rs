//! The alarm monitor's I/O: ask nats-server about the streams and
//! consumers that have a threshold, let [`crate::alarms::evaluate`]
//! decide, keep the outcome for /health, /api/v1/status, /metrics and the
//! STATUS= line. Called by the daemon's status task (the one periodic
//! monitor), every [`crate::alarms::check_interval`].

use std::time::{Duration, SystemTime};

use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
use async_nats::jetstream::ErrorCode;

use super::App;
use crate::alarms::{self, Alarm, ConsumerSeen, Observation, Rules, StreamSeen};

/// How long one check may wait for JetStream.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The last check's outcome.
#[derive(Debug, Clone, Default)]
pub struct AlarmBoard {
    /// When nats-server last answered a check.
    pub checked_at: Option<SystemTime>,
    pub alarms: Vec<Alarm>,
    /// Why the last check failed (the alarms are then the previous
    /// check's); None after a good one.
    pub error: Option<String>,
}

/// A nats-server time, in nanoseconds since the epoch, as a SystemTime;
/// None for its zero time (year 1), which means "never".
fn system_time(unix_nanos: i128) -> Option<SystemTime> {
    let nanos = u64::try_from(unix_nanos).ok()?;
    (nanos > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
}

impl App {
    /// The last check's outcome.
    pub fn alarm_board(&self) -> AlarmBoard {
        self.alarms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One check: one stream info per stream with `alert_if_silent_for`,
    /// one consumer info per consumer with `alert_if_pending_over`, all at
    /// once within [`CHECK_TIMEOUT`]. Nothing is asked when no threshold is
    /// declared. A failed check keeps the previous alarms and says why.
    pub async fn check_alarms(&self) {
        let rules = Rules::of(&self.config());
        if rules.is_empty() {
            *self.alarms.lock().unwrap_or_else(|e| e.into_inner()) = AlarmBoard::default();
            return;
        }
        let observed = match self.connected_nats() {
            None => Err("not connected to nats-server".to_string()),
            Some(nats) => {
                let work = observe(&nats.js, &rules);
                match self.while_connected(CHECK_TIMEOUT, work).await {
                    Ok(r) => r,
                    Err(_) => Err(format!(
                        "JetStream did not answer within {} s",
                        CHECK_TIMEOUT.as_secs()
                    )),
                }
            }
        };
        let mut board = self.alarms.lock().unwrap_or_else(|e| e.into_inner());
        match observed {
            Ok(obs) => {
                let now = alarms::evaluate(&rules, &obs, self.started_at, &board.alarms);
                for a in now
                    .iter()
                    .filter(|a| !board.alarms.iter().any(|b| same(a, b)))
                {
                    tracing::warn!(stream = %a.stream, consumer = a.consumer.as_deref().unwrap_or(""), "alarm: {a}");
                }
                for a in board
                    .alarms
                    .iter()
                    .filter(|a| !now.iter().any(|b| same(a, b)))
                {
                    tracing::info!(stream = %a.stream, consumer = a.consumer.as_deref().unwrap_or(""), "alarm over: {}", a.short());
                }
                *board = AlarmBoard {
                    checked_at: Some(obs.at),
                    alarms: now,
                    error: None,
                };
            }
            Err(e) => {
                tracing::debug!(error = %e, "alarm check failed: {e}");
                board.error = Some(e);
            }
        }
    }
}

/// The same alarm (what and whose), whatever its figures.
fn same(a: &Alarm, b: &Alarm) -> bool {
    a.stream == b.stream && a.consumer == b.consumer && a.kind.as_str() == b.kind.as_str()
}

async fn observe(
    js: &async_nats::jetstream::Context,
    rules: &Rules,
) -> Result<Observation, String> {
    let streams = futures::future::join_all(rules.streams.iter().map(|r| async move {
        match js.get_stream(&r.stream).await {
            Ok(s) => {
                let info = s.cached_info();
                Ok(Some(StreamSeen {
                    stream: r.stream.clone(),
                    created: system_time(info.created.unix_timestamp_nanos())
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                    last_message: system_time(info.state.last_timestamp.unix_timestamp_nanos()),
                }))
            }
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(format!("stream {}: {e}", r.stream)),
            },
        }
    }));
    let consumers = futures::future::join_all(rules.consumers.iter().map(|r| async move {
        let stream = js
            .get_stream_no_info(&r.stream)
            .await
            .map_err(|e| format!("stream {}: {e}", r.stream))?;
        match stream.consumer_info(&r.consumer).await {
            Ok(i) => Ok(Some(ConsumerSeen {
                stream: r.stream.clone(),
                consumer: r.consumer.clone(),
                num_pending: i.num_pending,
                num_ack_pending: i.num_ack_pending as u64,
            })),
            Err(e) => match e.kind() {
                ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound => Ok(None),
                _ => Err(format!("consumer {} of {}: {e}", r.consumer, r.stream)),
            },
        }
    }));
    let (streams, consumers) = tokio::join!(streams, consumers);
    Ok(Observation {
        // Read after the answers: a message newer than the check's time
        // would otherwise look like a clock going backwards.
        at: SystemTime::now(),
        streams: streams
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect(),
        consumers: consumers
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect(),
    })
}
