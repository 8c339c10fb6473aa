//! POST .../consumers/{name}/fetch: one pull from a pull consumer, each
//! message handed out with its ack token.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::{StatusCode, Subject};
use futures::stream::StreamExt;
use hyper::body::Incoming;
use hyper::Request;
use serde::{Deserialize, Serialize};

use super::info::{check_names, consumer_info};
use super::{AckSubject, Resp, FETCH_BODY_LIMIT};
use crate::app::{App, PULL_CHUNK};
use crate::http::body::{connected, json_body};
use crate::http::error::{json_bytes, ApiError};
use crate::http::message::{self, Rfc3339Nanos};

/// What a fetch request without `batch` / `expires_ms` gets.
const DEFAULT_BATCH: u32 = 10;
const DEFAULT_EXPIRES_MS: u64 = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchRequest {
    #[serde(default)]
    batch: Option<u32>,
    #[serde(default)]
    expires_ms: Option<u64>,
    #[serde(default)]
    max_bytes: Option<u64>,
}

/// One fetched message: `message::Out`'s fields, then the delivery's.
/// (Spelled out rather than `#[serde(flatten)]`, which serializes through
/// a map, at a cost paid per message.)
#[derive(Serialize)]
struct OutMessage<'a> {
    subject: &'a str,
    data: message::Data<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<BTreeMap<String, message::HeaderOut>>,
    stream_seq: u64,
    consumer_seq: u64,
    timestamp: Rfc3339Nanos,
    num_delivered: u64,
    num_pending: u64,
    ack_token: Option<&'a str>,
}

/// POST .../consumers/{name}/fetch: waits up to `expires_ms` for the first
/// message, then answers with what is there (at most `batch`).
pub(crate) async fn fetch(
    app: &App,
    req: Request<Incoming>,
    stream: &str,
    name: &str,
) -> Result<Resp, ApiError> {
    let expected = r#"{"batch": N, "expires_ms": M, "max_bytes": B}"#;
    let r: FetchRequest = json_body(
        app,
        req,
        FETCH_BODY_LIMIT,
        Some(FetchRequest {
            batch: None,
            expires_ms: None,
            max_bytes: None,
        }),
        expected,
    )
    .await?;
    let api = app.config().api.clone();
    let batch = r.batch.unwrap_or(DEFAULT_BATCH.min(api.fetch_max_batch));
    if batch == 0 || batch > api.fetch_max_batch {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!(
                "batch must be between 1 and {} (api.fetch_max_batch), got {batch}",
                api.fetch_max_batch
            ),
        ));
    }
    let expires = Duration::from_millis(r.expires_ms.unwrap_or(DEFAULT_EXPIRES_MS))
        .min(api.fetch_max_wait.get());
    if r.max_bytes == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_max_bytes",
            "max_bytes must be at least 1 (or left out: api.fetch_max_bytes)",
        ));
    }
    let max_bytes = r
        .max_bytes
        .unwrap_or(u64::MAX)
        .min(api.fetch_max_bytes.bytes()) as usize;

    check_names(stream, name)?;
    let nats = connected(app)?;
    let now = std::time::Instant::now();
    let known = nats.known_pulls.known(stream, name, now);
    if !known {
        let info = consumer_info(app, &nats, stream, name).await?;
        if let Some(ds) = &info.config.deliver_subject {
            return Err(ApiError::new(
                hyper::StatusCode::CONFLICT,
                "not_a_pull_consumer",
                format!("consumer {name} of {stream} is a push consumer (it delivers to {ds}); only pull consumers can be fetched from"),
            ));
        }
        nats.known_pulls.saw(stream, name, now);
    }
    let limits = Limits {
        batch: batch as usize,
        max_bytes,
        expires,
    };
    let pulled = match collect(app, &nats.js, stream, name, limits).await {
        Ok(p) => p,
        Err(e) => {
            nats.known_pulls.forget(stream, name);
            return Err(match e {
                // nats-server 2.10 says so when the consumer is gone.
                PullError::Refused(StatusCode::NO_RESPONDERS, d) => {
                    match consumer_info(app, &nats, stream, name).await {
                        Err(gone) => gone,
                        Ok(_) => pull_error(StatusCode::NO_RESPONDERS, d.as_deref()),
                    }
                }
                PullError::Refused(status, d) if too_large(status, d.as_deref()) => {
                    ApiError::new(
                        hyper::StatusCode::CONFLICT,
                        "message_too_large",
                        format!("the next message is larger than max_bytes ({max_bytes} bytes with its subject, headers and ack subject); ask for more, up to api.fetch_max_bytes ({})", api.fetch_max_bytes.bytes()),
                    )
                }
                PullError::Refused(status, d) => pull_error(status, d.as_deref()),
                PullError::Api(e) => e,
            });
        }
    };
    if !pulled.answered {
        // Not even a status came back: nothing listens for the pull, as
        // for a consumer deleted since it was looked up. The lookup says
        // what is the matter (404), or else that the server stayed silent.
        nats.known_pulls.forget(stream, name);
        consumer_info(app, &nats, stream, name).await?;
        return Err(ApiError::unavailable(format!(
            "consumer {name} of {stream} did not answer the pull within {:?}",
            expires + NO_ANSWER_GRACE
        )));
    }
    app.stats
        .consumed
        .fetch_add(pulled.answer.count as u64, Ordering::Relaxed);
    let body = pulled.answer.finish();
    Ok(json_bytes(hyper::StatusCode::OK, body))
}

/// The answer's JSON, `{"messages": [...], "count": n}`, written a
/// message at a time as each arrives: encoding overlaps async-nats reading
/// the next ones, and a message is not kept once it is written.
struct Answer {
    body: Vec<u8>,
    count: usize,
    /// Bytes the answer may still grow by, about, for the first reserve.
    batch: usize,
    max_bytes: usize,
}

impl Answer {
    const HEAD: &'static [u8] = br#"{"messages":["#;
    const FIRST_RESERVE: usize = 256 * 1024;

    fn new(batch: usize, max_bytes: usize) -> Answer {
        Answer {
            body: Self::HEAD.to_vec(),
            count: 0,
            batch,
            max_bytes,
        }
    }

    fn push(&mut self, m: &async_nats::Message) {
        if self.count == 0 {
            // Sized for the first message's text times the batch (within
            // what max_bytes lets come; payloads grow by a third in base64,
            // and each has some 256 bytes of names and numbers), up to
            // FIRST_RESERVE: a long poll that brings one message of a batch
            // of 1000 does not hold the room of 1000, and a full one grows
            // (and copies) only a few times past it.
            let one = m.length * 4 / 3 + 256;
            let most = self.max_bytes.saturating_mul(4) / 3 + self.batch * 256;
            let want = one.saturating_mul(self.batch).min(most);
            self.body.reserve(want.min(Self::FIRST_RESERVE));
        } else {
            self.body.push(b',');
        }
        let _ = serde_json::to_writer(&mut self.body, &out_message(m));
        self.count += 1;
    }

    fn finish(mut self) -> Vec<u8> {
        let _ = write!(self.body, r#"],"count":{}}}"#, self.count);
        self.body
    }
}

/// How long past `expires` a pull's answer may take before the fetch
/// stops waiting for it.
const NO_ANSWER_GRACE: Duration = Duration::from_secs(2);

/// Why a pull brought nothing.
enum PullError {
    /// nats-server answered this status (and description).
    Refused(StatusCode, Option<String>),
    Api(ApiError),
}

impl From<ApiError> for PullError {
    fn from(e: ApiError) -> Self {
        PullError::Api(e)
    }
}

/// What a pull brought.
struct Pulled {
    answer: Answer,
    /// Whether the server answered at all (messages or a status).
    answered: bool,
}

/// The subject a pull request for consumer `name` of `stream` goes to.
/// The daemon's JetStream context uses the default API prefix (no domain).
fn next_subject(stream: &str, name: &str) -> String {
    format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}")
}

/// What one fetch may bring: messages, bytes (as nats-server counts them:
/// `async_nats::Message::length`) and how long to wait for the first.
#[derive(Debug, Clone, Copy)]
struct Limits {
    batch: usize,
    max_bytes: usize,
    expires: Duration,
}

/// Whether nats-server ended a pull because the next message would pass
/// the pull's max_bytes.
fn too_large(status: StatusCode, description: Option<&str>) -> bool {
    status == StatusCode::REQUEST_TERMINATED
        && description.is_some_and(|d| d.contains("Message Size Exceeds MaxBytes"))
}

/// How many messages the next pull of a fetch asks for, `got` of `batch`
/// being in: none once the fetch is complete.
fn next_pull(batch: usize, got: usize) -> usize {
    batch.saturating_sub(got).min(PULL_CHUNK)
}

/// Which pull a status on `<inbox>.<k>` answers.
fn pull_of(reply_subject: &str, inbox: &str) -> Option<usize> {
    reply_subject
        .strip_prefix(inbox)?
        .strip_prefix('.')?
        .parse()
        .ok()
}

/// Pulls up to `batch` messages: the server answers at once with what it
/// has, or waits up to `expires` for the first message and then answers.
/// A batch above PULL_CHUNK is pulled in pulls of at most PULL_CHUNK, each
/// on a reply subject of its own (`<inbox>.<k>`), so a late status of an
/// earlier pull is told apart from the current pull's. (Messages come in
/// under their own subjects; only statuses name the pull.)
async fn collect(
    app: &App,
    js: &async_nats::jetstream::Context,
    stream: &str,
    name: &str,
    limits: Limits,
) -> Result<Pulled, PullError> {
    let Limits {
        batch,
        max_bytes,
        expires,
    } = limits;
    let lost = app.connection_lost.notified();
    tokio::pin!(lost);
    lost.as_mut().enable();
    if !app.is_connected() {
        return Err(ApiError::unavailable("not connected to nats-server").into());
    }
    // The pull async-nats' fetch() sends (no_wait: the server answers at
    // once with what it has, 404 when nothing), read here so that the
    // server's status comes as a StatusCode: async-nats' own stream hands
    // a refusal over only as an io::Error's text.
    let cannot_send =
        |e: String| ApiError::unavailable(format!("cannot send the pull request: {e}"));
    let client = js.client();
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(format!("{inbox}.*"))
        .await
        .map_err(|e| cannot_send(e.to_string()))?;
    let subject = Subject::from(next_subject(stream, name));
    let client = &client;
    // Pull `size` messages of at most `bytes` as pull number `k`: the
    // first may wait up to `expires` for a message; later ones only take
    // what is there.
    let pull = |k: usize, size: usize, bytes: usize| {
        let request = BatchConfig {
            batch: size,
            expires: (k == 0).then_some(expires),
            no_wait: true,
            max_bytes: bytes,
            ..BatchConfig::default()
        };
        let reply = Subject::from(format!("{inbox}.{k}"));
        let subject = subject.clone();
        async move {
            let request = serde_json::to_vec(&request).map_err(|e| cannot_send(e.to_string()))?;
            client
                .publish_with_reply(subject, reply, request.into())
                .await
                .map_err(|e| cannot_send(e.to_string()))
        }
    };
    // The server ends the pull itself after `expires`; this only guards
    // against its answer getting lost. One timer for the whole fetch, not
    // one per message.
    let deadline = tokio::time::sleep(expires + NO_ANSWER_GRACE);
    tokio::pin!(deadline);
    let mut out = Answer::new(batch, max_bytes);
    let mut answered = false;
    let (mut k, mut size) = (0, next_pull(batch, 0));
    // Message bytes in so far.
    let mut used = 0;
    pull(k, size, max_bytes).await?;
    // Messages in of the current pull.
    let mut got = 0;
    loop {
        tokio::select! {
            m = replies.next() => {
                let Some(m) = m else { break };
                let status = m.status.unwrap_or(StatusCode::OK);
                // A message keeps its own subject; a status comes on the
                // pull's reply subject. One of an earlier pull (complete:
                // every message it asked for came) is a late word to skip.
                if status != StatusCode::OK && pull_of(m.subject.as_str(), &inbox) != Some(k) {
                    continue;
                }
                answered = true;
                match status {
                    StatusCode::OK => {
                        used += m.length;
                        out.push(&m);
                        got += 1;
                        if used >= max_bytes {
                            // The pull's bytes are used up: nats-server
                            // ended it with this message, without a word.
                            break;
                        }
                        if got == size {
                            size = next_pull(batch, out.count);
                            if size == 0 {
                                break;
                            }
                            k += 1;
                            got = 0;
                            if pull(k, size, max_bytes - used).await.is_err() {
                                // What came is delivered; the rest waits.
                                break;
                            }
                        }
                    }
                    StatusCode::IDLE_HEARTBEAT => {}
                    // Nothing (more) to deliver now, or the pull expired.
                    StatusCode::NOT_FOUND | StatusCode::TIMEOUT => break,
                    status if out.count == 0 => {
                        return Err(PullError::Refused(status, m.description))
                    }
                    // What came is delivered; the rest waits for the next fetch.
                    _ => break,
                }
            }
            _ = &mut deadline => break,
            _ = &mut lost => {
                if out.count == 0 {
                    return Err(ApiError::unavailable(
                        "the connection to nats-server dropped during the fetch",
                    )
                    .into());
                }
                break;
            }
        }
    }
    Ok(Pulled {
        answer: out,
        answered,
    })
}

/// A pull the server refused: 409 (max_ack_pending reached, consumer
/// deleted meanwhile, leadership change...) is the client's to resolve;
/// anything else (503 no responders...) is ours.
fn pull_error(status: StatusCode, description: Option<&str>) -> ApiError {
    let text =
        format!("error while processing messages from the stream: {status}, {description:?}");
    if status == StatusCode::REQUEST_TERMINATED {
        ApiError::new(
            hyper::StatusCode::CONFLICT,
            "pull_refused",
            format!("JetStream refused the pull: {text}"),
        )
    } else {
        ApiError::unavailable(format!("the pull failed: {text}"))
    }
}

fn out_message(m: &async_nats::Message) -> OutMessage<'_> {
    let reply = m.reply.as_ref().map(|r| r.as_str());
    let ack = reply.and_then(AckSubject::parse);
    let out = message::Out::of(m);
    OutMessage {
        subject: out.subject,
        data: out.data,
        data_encoding: out.data_encoding,
        headers: out.headers,
        stream_seq: ack.as_ref().map_or(0, |a| a.stream_seq),
        consumer_seq: ack.as_ref().map_or(0, |a| a.consumer_seq),
        timestamp: Rfc3339Nanos(ack.as_ref().map_or(0, |a| a.timestamp_ns as i128)),
        num_delivered: ack.as_ref().map_or(1, |a| a.delivered),
        num_pending: ack.as_ref().map_or(0, |a| a.pending),
        ack_token: reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_pulled_in_pulls_that_fit_the_reply_buffer() {
        assert_eq!(next_pull(10, 0), 10);
        assert_eq!(next_pull(1000, 0), 1000);
        let sizes: Vec<usize> = [0, PULL_CHUNK, 2 * PULL_CHUNK, 5000]
            .iter()
            .map(|&got| next_pull(5000, got))
            .collect();
        assert_eq!(sizes, [PULL_CHUNK, PULL_CHUNK, 5000 - 2 * PULL_CHUNK, 0]);
        assert_eq!(next_pull(5, 7), 0, "never a pull past the batch");
    }

    fn message(subject: &str, payload: &'static [u8], reply: Option<&str>) -> async_nats::Message {
        async_nats::Message {
            subject: subject.into(),
            reply: reply.map(Into::into),
            payload: bytes::Bytes::from_static(payload),
            headers: None,
            status: None,
            description: None,
            length: subject.len() + payload.len() + reply.map_or(0, str::len),
        }
    }

    #[test]
    fn the_answer_is_written_a_message_at_a_time() {
        let empty: serde_json::Value =
            serde_json::from_slice(&Answer::new(10, 1 << 20).finish()).unwrap();
        assert_eq!(empty, serde_json::json!({"messages": [], "count": 0}));
        let mut a = Answer::new(10, 1 << 20);
        let token = "$JS.ACK.S.C.1.7.3.1700000000000000000.0";
        a.push(&message("a.b", br#"{"p": 1}"#, Some(token)));
        a.push(&message("a.c", b"\xffraw", None));
        let v: serde_json::Value = serde_json::from_slice(&a.finish()).unwrap();
        assert_eq!(v["count"], 2);
        let ms = v["messages"].as_array().unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[0]["data"], serde_json::json!({"p": 1}));
        assert_eq!(
            (
                &ms[0]["stream_seq"],
                &ms[0]["consumer_seq"],
                &ms[0]["ack_token"]
            ),
            (
                &serde_json::json!(7),
                &serde_json::json!(3),
                &serde_json::json!(token)
            )
        );
        assert_eq!(ms[1]["data_encoding"], "base64");
        assert_eq!(ms[1]["ack_token"], serde_json::Value::Null);
    }

    #[test]
    fn a_reply_names_its_pull() {
        let inbox = "_INBOX.abc";
        assert_eq!(pull_of("_INBOX.abc.0", inbox), Some(0));
        assert_eq!(pull_of("_INBOX.abc.12", inbox), Some(12));
        assert_eq!(pull_of("_INBOX.abcd.1", inbox), None);
        assert_eq!(pull_of("_INBOX.abc", inbox), None);
        assert_eq!(pull_of("_INBOX.abc.x", inbox), None);
        assert_eq!(pull_of("market.a.b", inbox), None);
    }
}
