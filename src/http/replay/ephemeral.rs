//! The ephemeral consumer behind one replay page: created for the request,
//! read in order, deleted before the answer.
//!
//! The consumer is an in-memory, one-replica pull consumer with
//! `ack_policy: none` (nothing to ack, nothing redelivered) and an
//! `inactive_threshold`, so nats-server removes it by itself should the
//! daemon die mid-request. The daemon deletes it as soon as the page is
//! read, also when the client hangs up (the drop of [`Ephemeral`]).
//!
//! Reading is ordered: each message's consumer sequence must follow the
//! last one; on a gap the page ends before it, so the cursor after it is
//! exact. Pulls are `no_wait` without `expires`: nats-server hands out
//! what it has and says 404/408 at the end instead of waiting, and the
//! `num_pending` in each message's reply subject says when nothing is left,
//! so a page never waits for messages that do not exist.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, BatchConfig};
use async_nats::jetstream::consumer::{AckPolicy, Consumer, DeliverPolicy};
use async_nats::jetstream::context::Context;
use async_nats::jetstream::ErrorCode;
use async_nats::{StatusCode, Subject};
use futures::StreamExt;
use tokio::time::Instant;

use crate::app::{App, Nats, PULL_CHUNK};
use crate::http::consume::AckSubject;
use crate::http::error::ApiError;

/// How long nats-server keeps a consumer nobody pulls from: longer than
/// any page takes (each is bounded by `api.publish_timeout`), short enough
/// that a crashed daemon leaves nothing behind for long.
pub const INACTIVE_THRESHOLD: Duration = Duration::from_secs(30);

/// Messages pulled beyond the page when earlier ones will be skipped (a
/// last-per-subject page after the first).
const SKIP_BATCH: usize = 256;

pub(super) struct Ephemeral {
    js: Context,
    stream: String,
    handle: Consumer<pull::Config>,
    deleted: bool,
}

fn no_stream(stream: &str) -> ApiError {
    ApiError::not_found(format!("no stream named {stream:?}"))
}

impl Ephemeral {
    /// A new consumer on `stream` from `policy`, over `filter` (all of
    /// the stream without one).
    pub async fn create(
        app: &App,
        nats: &Nats,
        stream: &str,
        policy: DeliverPolicy,
        filter: Option<&str>,
    ) -> Result<Ephemeral, ApiError> {
        // nats-server 2.9 wants a filter for last-per-subject; `>` is the
        // whole stream.
        let filter = match (filter, &policy) {
            (Some(f), _) => f.to_string(),
            (None, DeliverPolicy::LastPerSubject) => ">".to_string(),
            (None, _) => String::new(),
        };
        let config = pull::Config {
            description: Some("marketprism-broker replay page (ephemeral)".into()),
            deliver_policy: policy,
            ack_policy: AckPolicy::None,
            filter_subject: filter,
            inactive_threshold: INACTIVE_THRESHOLD,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        let timeout = app.config().api.publish_timeout.get();
        let made = app
            .while_connected(
                timeout,
                nats.js
                    .create_consumer_on_stream(config, stream.to_string()),
            )
            .await;
        let handle = match made {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(create_error(stream, e)),
            Err(_) => {
                return Err(ApiError::unavailable(format!(
                    "JetStream did not create a replay consumer on {stream} within {timeout:?}"
                )))
            }
        };
        Ok(Ephemeral {
            js: nats.js.clone(),
            stream: stream.to_string(),
            handle,
            deleted: false,
        })
    }

    /// Matching messages the consumer had to deliver when it was made.
    pub fn pending(&self) -> u64 {
        self.handle.cached_info().num_pending
    }

    /// The stream sequence it starts from (after nats-server clamped the
    /// start into the stream).
    pub fn start_seq(&self) -> u64 {
        self.handle.cached_info().delivered.stream_sequence + 1
    }

    /// Deletes it now, waiting (bounded) for nats-server to confirm.
    pub async fn delete(mut self, app: &App) {
        self.deleted = true;
        let name = self.handle.cached_info().name.clone();
        let timeout = app.config().api.publish_timeout.get();
        let r = app
            .while_connected(
                timeout,
                self.js.delete_consumer_from_stream(&name, &self.stream),
            )
            .await;
        if !matches!(r, Ok(Ok(_))) {
            // The inactive threshold removes it in any case.
            tracing::debug!(stream = %self.stream, consumer = %name, "could not delete a replay consumer; nats-server drops it after {INACTIVE_THRESHOLD:?}");
        }
    }
}

impl Drop for Ephemeral {
    /// A request dropped midway (the client hung up): delete in the
    /// background.
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        let js = self.js.clone();
        let stream = std::mem::take(&mut self.stream);
        let name = self.handle.cached_info().name.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    js.delete_consumer_from_stream(name, stream),
                )
                .await;
            });
        }
    }
}

fn create_error(stream: &str, e: async_nats::jetstream::stream::ConsumerError) -> ApiError {
    use async_nats::jetstream::stream::ConsumerErrorKind;
    match e.kind() {
        ConsumerErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
            no_stream(stream)
        }
        ConsumerErrorKind::JetStream(j)
            if j.error_code() == ErrorCode::CONSUMER_FILTER_NOT_SUBSET =>
        {
            ApiError::bad_request(
                "invalid_subject",
                format!("subject is not within the subjects of stream {stream} (nats-server: {j})"),
            )
        }
        // Anything else JetStream refuses as a bad request (400) is about
        // what the client asked for.
        ConsumerErrorKind::JetStream(j) if j.code() == 400 => ApiError::bad_request(
            "invalid_query",
            format!("nats-server refused the replay on {stream}: {j}"),
        ),
        _ => ApiError::unavailable(format!("cannot create a replay consumer on {stream}: {e}")),
    }
}

/// One message of a page, with where it sits in the stream.
pub(super) struct Read {
    pub message: async_nats::Message,
    pub stream_seq: u64,
    pub timestamp_ns: u64,
}

pub(super) struct Page {
    pub messages: Vec<Read>,
    /// Matching messages left after the page when it was read.
    pub pending: u64,
    /// Nothing was left to read.
    pub end_reached: bool,
}

/// Reads up to `limit` messages in order, dropping those stored before
/// `skip_below` (pulling more at a time when `expect_skips`); stops early
/// at the end of what exists, on a gap, or at `deadline`.
pub(super) async fn read(
    app: &App,
    eph: &Ephemeral,
    limit: usize,
    skip_below: u64,
    expect_skips: bool,
    deadline: Instant,
) -> Result<Page, ApiError> {
    let mut page = Page {
        messages: Vec::new(),
        pending: eph.pending(),
        end_reached: false,
    };
    if page.pending == 0 {
        page.end_reached = true;
        return Ok(page);
    }
    let lost = app.connection_lost.notified();
    tokio::pin!(lost);
    lost.as_mut().enable();
    if !app.is_connected() {
        return Err(ApiError::unavailable("not connected to nats-server"));
    }
    let client = eph.js.client();
    let inbox = Subject::from(client.new_inbox());
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot start the replay: {e}")))?;
    let mut expected_cseq = 1;
    let mut skipping = expect_skips;
    // Bytes of the page's messages so far, against api.fetch_max_bytes
    // (counted as nats-server counts a pull's max_bytes:
    // `Message::length`). Each pull may bring what is left of it; skipped
    // messages use up a pull's bytes, not the page's.
    let max_bytes = app.config().api.fetch_max_bytes.bytes() as usize;
    let mut kept = 0;
    'pulls: while page.messages.len() < limit {
        // At most PULL_CHUNK a pull: past its buffer the inbox would drop
        // messages, and the page would end at the gap.
        let batch =
            (limit - page.messages.len() + if skipping { SKIP_BATCH } else { 0 }).min(PULL_CHUNK);
        let pull_max = max_bytes - kept;
        let request = BatchConfig {
            batch,
            no_wait: true,
            max_bytes: pull_max,
            ..BatchConfig::default()
        };
        // Bytes this pull brought, skipped messages too.
        let mut pulled = 0;
        eph.handle
            .request_batch(request, inbox.clone())
            .await
            .map_err(|e| ApiError::unavailable(format!("cannot pull for the replay: {e}")))?;
        let mut received = 0;
        while received < batch {
            let m = tokio::select! {
                m = replies.next() => m,
                _ = tokio::time::sleep_until(deadline) => break 'pulls,
                _ = &mut lost => {
                    if page.messages.is_empty() {
                        return Err(ApiError::unavailable(
                            "the connection to nats-server dropped during the replay",
                        ));
                    }
                    break 'pulls;
                }
            };
            let Some(m) = m else { break 'pulls };
            match m.status.unwrap_or(StatusCode::OK) {
                StatusCode::OK => {}
                StatusCode::IDLE_HEARTBEAT => continue,
                // No more now (404), or the end of the stream after some (408).
                StatusCode::NOT_FOUND | StatusCode::TIMEOUT => {
                    page.end_reached = true;
                    page.pending = 0;
                    break 'pulls;
                }
                // nats-server 2.10 and later: the previous pull brought its
                // whole batch with bytes to spare (it is a pull with
                // max_bytes). Nothing to do with this one.
                StatusCode::REQUEST_TERMINATED
                    if m.description.as_deref() == Some("Batch Completed") =>
                {
                    continue;
                }
                // The next message would pass the pull's bytes: the page
                // ends here, or, when skipped messages used them up, a
                // new pull goes on.
                StatusCode::REQUEST_TERMINATED
                    if m.description
                        .as_deref()
                        .is_some_and(|d| d.contains("Message Size Exceeds MaxBytes")) =>
                {
                    if page.messages.is_empty() {
                        continue 'pulls;
                    }
                    break 'pulls;
                }
                status => {
                    if page.messages.is_empty() {
                        return Err(ApiError::unavailable(format!(
                            "nats-server ended the replay: {status} {:?}",
                            m.description
                        )));
                    }
                    break 'pulls;
                }
            }
            let Some((cseq, stream_seq, timestamp_ns, pending)) = m
                .reply
                .as_deref()
                .and_then(AckSubject::parse)
                .map(|a| (a.consumer_seq, a.stream_seq, a.timestamp_ns, a.pending))
            else {
                break 'pulls;
            };
            if cseq != expected_cseq {
                // Lost on the way: end the page before the gap.
                break 'pulls;
            }
            expected_cseq += 1;
            received += 1;
            pulled += m.length;
            page.pending = pending;
            if stream_seq >= skip_below {
                skipping = false;
                kept += m.length;
                page.messages.push(Read {
                    message: m,
                    stream_seq,
                    timestamp_ns,
                });
            }
            if pending == 0 {
                page.end_reached = true;
                break 'pulls;
            }
            if page.messages.len() == limit {
                break 'pulls;
            }
            if kept >= max_bytes {
                // The page's bytes are used up: the cursor goes on from
                // here.
                break 'pulls;
            }
            if pulled >= pull_max {
                // Skipped messages used up the pull's bytes (nats-server
                // ended it with this message, without a word): pull again.
                continue 'pulls;
            }
        }
    }
    if page.messages.is_empty() && !page.end_reached {
        return Err(ApiError::unavailable(
            "nats-server did not deliver the replay in time (api.publish_timeout); retry",
        ));
    }
    Ok(page)
}
