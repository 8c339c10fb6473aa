//! POST /api/v1/publish and /api/v1/publish/batch: one parser and one
//! sender for an entry, so a batch entry means exactly what a single
//! publish means.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, ErrorCode};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::body::{connected, content_type_is, not_json, read_body, too_large};
use super::error::{json_bytes, ApiError};
use crate::app::{App, Lost, Nats};
use crate::config::{Config, Durability};
use crate::durability::{Coverage, Covered, FailureKind, SyncError};
use crate::stats::Endpoint;
use crate::subject;

type Resp = Response<http_body_util::Full<Bytes>>;

/// Acks a batch keeps in flight before it waits for the oldest ones.
const BATCH_WINDOW: usize = 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest<'a> {
    #[serde(borrow)]
    subject: Cow<'a, str>,
    #[serde(borrow)]
    message: &'a RawValue,
    #[serde(default)]
    headers: Option<BTreeMap<String, HeaderValues>>,
    #[serde(default, borrow)]
    msg_id: Option<Cow<'a, str>>,
}

/// A header's value: one string or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

/// One message ready for NATS. (`pub` for tests/fuzz.rs only.)
#[doc(hidden)]
pub struct Entry {
    pub subject: String,
    pub payload: Bytes,
    pub headers: Option<async_nats::HeaderMap>,
}

/// What a successful publish answers.
#[derive(Serialize)]
struct Outcome {
    success: bool,
    persisted: bool,
    /// The guarantee the answer carries: the message is on this machine's
    /// disk (a one-replica stream, `nats.durability: sync`, and a sync that
    /// began after the ack). False for core publishes, `lazy`, replicated
    /// streams and stores the daemon cannot reach (see README, Durability).
    durable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
}

impl Outcome {
    fn core() -> Outcome {
        Outcome {
            success: true,
            persisted: false,
            durable: false,
            stream: None,
            seq: None,
            duplicate: None,
        }
    }
}

/// Header names as NATS carries them: printable ASCII without ':' or
/// spaces; values on one line.
fn headers(map: BTreeMap<String, HeaderValues>) -> Result<async_nats::HeaderMap, ApiError> {
    let mut out = async_nats::HeaderMap::new();
    for (name, values) in map {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(ApiError::bad_request(
                "invalid_header",
                format!("header name {name:?}: use printable ASCII without ':' or spaces"),
            ));
        }
        let values = match values {
            HeaderValues::One(v) => vec![v],
            HeaderValues::Many(v) => v,
        };
        for v in values {
            if v.contains(['\r', '\n']) {
                return Err(ApiError::bad_request(
                    "invalid_header",
                    format!("header {name}: values may not contain line breaks"),
                ));
            }
            out.append(name.as_str(), v.as_str());
        }
    }
    Ok(out)
}

/// Whether `raw` is a JSON object without a `subject` key (asked only
/// once parsing the request failed, to name that case).
fn lacks_subject(raw: &[u8]) -> bool {
    serde_json::from_slice::<BTreeMap<Cow<'_, str>, serde::de::IgnoredAny>>(raw)
        .is_ok_and(|keys| !keys.contains_key("subject"))
}

/// Parses and checks one publish object; `raw` is a slice of `body`, so a
/// JSON message goes to NATS as the very bytes that came (no copy, no
/// re-serialisation). (`pub` for tests/fuzz.rs only.)
#[doc(hidden)]
pub fn parse_entry(cfg: &Config, body: &Bytes, raw: &[u8]) -> Result<Entry, ApiError> {
    let parsed: PublishRequest = serde_json::from_slice(raw).map_err(|e| {
        let code = if lacks_subject(raw) {
            "missing_subject"
        } else {
            "invalid_json"
        };
        ApiError::bad_request(
            code,
            format!(
                "invalid publish request: {e}; expected {{\"subject\": \"...\", \"message\": ...}}"
            ),
        )
    })?;
    let subj: &str = &parsed.subject;
    if let Err(e) = subject::check(subj, false) {
        let code = match e.fault {
            subject::Fault::Wildcard => "wildcard_subject",
            subject::Fault::Malformed => "invalid_subject",
        };
        return Err(ApiError::bad_request(code, e.message));
    }
    if subj.starts_with('$') {
        return Err(ApiError::bad_request(
            "reserved_subject",
            format!("subject {subj:?}: subjects starting with `$` are reserved for NATS itself"),
        ));
    }
    let text = parsed.message.get();
    let payload = if text.starts_with('"') {
        let s: String = serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
        Bytes::from(s)
    } else {
        let start = text.as_ptr() as usize - body.as_ptr() as usize;
        body.slice(start..start + text.len())
    };
    let max_payload = cfg.nats.max_payload;
    if payload.len() as u64 > max_payload.bytes() {
        return Err(too_large(format!(
            "the message is larger than max_payload ({max_payload})"
        )));
    }
    let mut hdrs = parsed.headers.map(headers).transpose()?;
    if let Some(id) = parsed.msg_id {
        if id.is_empty() || id.contains(['\r', '\n']) {
            return Err(ApiError::bad_request(
                "invalid_msg_id",
                "msg_id must be a non-empty string on one line",
            ));
        }
        hdrs.get_or_insert_with(async_nats::HeaderMap::new)
            .insert(async_nats::header::NATS_MESSAGE_ID, id.as_ref());
    }
    Ok(Entry {
        subject: parsed.subject.into_owned(),
        payload,
        headers: hdrs,
    })
}

fn lost(stream: &str, l: Lost, timeout: Duration) -> ApiError {
    match l {
        Lost::TimedOut => ApiError::unavailable(format!(
            "no acknowledgement from stream {stream} within {timeout:?}"
        )),
        // Not acknowledged, so not promised: the client retries.
        Lost::Disconnected => ApiError::unavailable(format!(
            "the connection to nats-server dropped before stream {stream} acknowledged the message; it may not be stored"
        )),
    }
}

/// A JetStream publish that failed while the store's filesystem is full
/// failed because of it (nats-server itself may only time out or drop the
/// connection): 507 naming the cause instead of a bare 503.
fn store_full(app: &App, e: ApiError) -> ApiError {
    if e.status != StatusCode::SERVICE_UNAVAILABLE || !app.supervised {
        return e;
    }
    match crate::probe::store_space_problem(&app.config().data_dir()) {
        Some(full) => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            format!("{}: {full}", e.message),
        ),
        None => e,
    }
}

/// Whether answers wait for a sync: `nats.durability: sync` and a store
/// on this machine (a supervised nats-server with JetStream).
fn syncs(app: &App, cfg: &Config) -> bool {
    cfg.nats.durability == Durability::Sync && app.supervised && cfg.nats.jetstream_enabled
}

/// Waits for a sync that covers `acks` acknowledged publishes to `streams`
/// (see [`crate::durability`]); what each stream's messages got. A sync
/// that fails or does not end within `timeout` is an error: the messages
/// are stored but not promised to survive a power cut, so no 200.
async fn sync_acked<'a>(
    app: &App,
    timeout: Duration,
    streams: impl IntoIterator<Item = &'a str>,
    acks: u64,
) -> Result<Covered, ApiError> {
    match tokio::time::timeout(timeout, app.durability.commit(streams, acks)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(sync_failed(&e)),
        Err(_) => Err(ApiError {
            code: "sync_timeout",
            ..ApiError::unavailable(
                "the stream acknowledged the message, but syncing it to disk did not finish within api.publish_timeout; it may be lost by a power cut: retry (with a msg_id, nats-server drops the duplicate)",
            )
        }),
    }
}

fn sync_failed(e: &SyncError) -> ApiError {
    let message = format!(
        "the stream acknowledged the message, but syncing it to disk failed ({e}); it may be lost by a power cut: retry (with a msg_id, nats-server drops the duplicate)"
    );
    match e.kind {
        FailureKind::NoSpace => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            message,
        ),
        FailureKind::Io => ApiError {
            code: "sync_failed",
            ..ApiError::unavailable(message)
        },
    }
}

/// Hands a JetStream publish to the connection; the returned future is the
/// ack.
fn js_message(e: Entry) -> (String, PublishMessage) {
    let msg = PublishMessage::build().payload(e.payload);
    let msg = match e.headers {
        Some(h) => msg.headers(h),
        None => msg,
    };
    (e.subject, msg)
}

fn acked(a: PublishAck) -> Outcome {
    Outcome {
        success: true,
        persisted: true,
        durable: false,
        stream: Some(a.stream),
        seq: Some(a.sequence),
        duplicate: Some(a.duplicate),
    }
}

/// One JetStream publish, awaited: a single watch on the connection and a
/// single timer cover both the hand-over and the ack.
async fn publish_js(
    app: &App,
    timeout: Duration,
    nats: &Nats,
    stream: &str,
    e: Entry,
) -> Result<Outcome, ApiError> {
    let (subject, msg) = js_message(e);
    let sent = Instant::now();
    let publish = nats.coalescer.publish(subject, msg);
    match app.while_connected(timeout, publish).await {
        Ok(Ok(a)) => {
            app.stats.ack_latency.observe_duration(sent.elapsed());
            Ok(acked(a))
        }
        Ok(Err(err)) => Err(store_full(app, publish_error(stream, err))),
        Err(l) => Err(store_full(app, lost(stream, l, timeout))),
    }
}

/// Hands a JetStream publish to the connection; the returned future is the
/// ack (a batch keeps many in flight).
async fn send_js(
    app: &App,
    timeout: Duration,
    nats: &Nats,
    stream: &str,
    e: Entry,
) -> Result<PublishAckFuture, ApiError> {
    let (subject, msg) = js_message(e);
    match app
        .while_connected(timeout, nats.js.send_publish(subject, msg))
        .await
    {
        Ok(Ok(ack)) => Ok(ack),
        Ok(Err(err)) => Err(store_full(app, publish_error(stream, err))),
        Err(l) => Err(store_full(app, lost(stream, l, timeout))),
    }
}

/// Awaits a batch entry's ack; `sent` is when it was handed over.
async fn await_ack(
    app: &App,
    timeout: Duration,
    stream: &str,
    ack: PublishAckFuture,
    sent: Instant,
) -> Result<Outcome, ApiError> {
    match app.while_connected(timeout, ack.into_future()).await {
        Ok(Ok(a)) => {
            app.stats.ack_latency.observe_duration(sent.elapsed());
            Ok(acked(a))
        }
        Ok(Err(err)) => Err(store_full(app, publish_error(stream, err))),
        Err(l) => Err(store_full(app, lost(stream, l, timeout))),
    }
}

async fn send_core(timeout: Duration, nats: &Nats, e: Entry) -> Result<Outcome, ApiError> {
    let fut = async {
        match e.headers {
            Some(h) => {
                nats.client
                    .publish_with_headers(e.subject, h, e.payload)
                    .await
            }
            None => nats.client.publish(e.subject, e.payload).await,
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(ApiError::unavailable(format!(
            "publish not accepted within {timeout:?}"
        ))),
        Ok(Err(err)) => Err(ApiError::unavailable(format!("publish failed: {err}"))),
        Ok(Ok(())) => Ok(Outcome::core()),
    }
}

/// What a failed JetStream publish was, as far as its answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Larger than nats-server's max_payload: 413.
    TooLarge,
    /// No ack in time: 503.
    TimedOut,
    /// No stream took the request (no responders): 503 stream_unavailable.
    NoStream,
    /// No room for the message: a stream limit with `discard: new`, the
    /// JetStream store's resources, or a stream's message or header size
    /// limit: 507 stream_full.
    StreamFull,
    /// Anything else: 503.
    Failed,
}

/// The errors of nats-server's store (server/store.go: ErrMaxMsgs,
/// ErrMaxBytes, ErrMaxMsgsPerSubject) that a stream with `discard: new`
/// answers a publish with, as error code 10077 (JSStreamStoreFailedF, whose
/// description is the store's error). The same code also carries "message
/// too large" and "store is closed", which are not a full stream.
const STORE_LIMITS: [&str; 3] = [
    "maximum messages exceeded",
    "maximum bytes exceeded",
    "maximum messages per subject exceeded",
];

/// Classifies by the error's kind and, for an error nats-server answered,
/// by its JetStream error code (server/errors.json), not by its text.
fn refusal(e: &PublishError) -> Refusal {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => Refusal::TooLarge,
        PublishErrorKind::TimedOut => Refusal::TimedOut,
        PublishErrorKind::StreamNotFound => Refusal::NoStream,
        _ => {
            match std::error::Error::source(e).and_then(|s| s.downcast_ref::<jetstream::Error>()) {
                Some(j) if no_room(j) => Refusal::StreamFull,
                _ => Refusal::Failed,
            }
        }
    }
}

/// Whether nats-server refused the message for want of room.
fn no_room(e: &jetstream::Error) -> bool {
    match e.error_code() {
        // 10023 "insufficient resources": the server's JetStream limits.
        ErrorCode::INSUFFICIENT_RESOURCES
        // 10047 "insufficient storage resources available"
        | ErrorCode::STORAGE_RESOURCES_EXCEEDED
        // 10028 "insufficient memory resources available"
        | ErrorCode::MEMORY_RESOURCES_EXCEEDED
        // 10054 "message size exceeds maximum allowed" (max_msg_size)
        | ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
        // 10097 "header size exceeds maximum allowed of 64k"
        | ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM => true,
        ErrorCode::STREAM_STORE_FAILED => {
            description(e).is_some_and(|d| STORE_LIMITS.contains(&d.as_str()))
        }
        _ => false,
    }
}

/// The `description` nats-server sent with a JetStream API error
/// (async-nats keeps it private but serialises it as it came).
fn description(e: &jetstream::Error) -> Option<String> {
    match serde_json::to_value(e).ok()?.get_mut("description")?.take() {
        serde_json::Value::String(d) => Some(d),
        _ => None,
    }
}

pub fn publish_error(stream: &str, e: PublishError) -> ApiError {
    let text = e.to_string();
    match refusal(&e) {
        Refusal::TooLarge => too_large(text),
        Refusal::TimedOut => {
            ApiError::unavailable(format!("no acknowledgement from stream {stream}: {text}"))
        }
        Refusal::NoStream => ApiError {
            code: "stream_unavailable",
            ..ApiError::unavailable(format!("stream {stream} does not answer: {text}"))
        },
        Refusal::StreamFull => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "stream_full",
            format!("stream {stream} refused the message: {text}"),
        ),
        Refusal::Failed => {
            ApiError::unavailable(format!("publish to stream {stream} failed: {text}"))
        }
    }
}

// ------------------------------------------------------------- single ----

/// POST /api/v1/publish.
pub async fn single(app: &App, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let started = Instant::now();
    let r = single_inner(app, req).await;
    match &r {
        Ok(o) => {
            app.stats.published(Endpoint::Single, o.persisted);
            app.stats
                .publish_latency
                .observe_duration(started.elapsed());
        }
        Err(e) => app.stats.error(Endpoint::Single, e.status.as_u16()),
    }
    r.map(|o| json_bytes(StatusCode::OK, serde_json::to_vec(&o).unwrap_or_default()))
}

async fn single_inner(app: &App, req: Request<Incoming>) -> Result<Outcome, ApiError> {
    if !content_type_is(&req, "application/json") {
        return Err(not_json());
    }
    let cfg = app.config();
    let max_payload = cfg.nats.max_payload;
    // Room for JSON escaping of a payload right at the limit (a string of
    // control characters grows 6x) plus the envelope and headers.
    let limit = (max_payload.bytes() as usize)
        .saturating_mul(6)
        .saturating_add(64 << 10);
    let idle = cfg.api.header_read_timeout.get();
    let body = read_body(req, limit, idle, || {
        format!("the message is larger than max_payload ({max_payload})")
    })
    .await?;
    let entry = parse_entry(&cfg, &body, &body)?;
    let nats = connected(app)?;
    let timeout = cfg.api.publish_timeout.get();
    let matcher = app.matcher();
    match matcher.stream_for(&entry.subject) {
        Some(stream) => {
            let sent = Instant::now();
            let mut o = publish_js(app, timeout, &nats, stream, entry).await?;
            if syncs(app, &cfg) {
                // One deadline for the ack and the sync: api.publish_timeout
                // bounds the whole answer.
                let left = timeout.saturating_sub(sent.elapsed());
                let got = sync_acked(app, left, o.stream.as_deref(), 1).await?;
                o.durable = o
                    .stream
                    .as_ref()
                    .is_some_and(|s| got.of(s) == Coverage::Durable);
            }
            Ok(o)
        }
        None => send_core(timeout, &nats, entry).await,
    }
}

// -------------------------------------------------------------- batch ----

/// One entry's answer in a batch: the single publish's answer, or its
/// error with the status a single publish would have had.
#[derive(Serialize)]
#[serde(untagged)]
enum EntryAnswer {
    Ok(Outcome),
    Err {
        success: bool,
        status: u16,
        error: ErrorBody,
    },
}

#[derive(Serialize)]
struct ErrorBody {
    code: &'static str,
    message: String,
}

impl From<Result<Outcome, ApiError>> for EntryAnswer {
    fn from(r: Result<Outcome, ApiError>) -> Self {
        match r {
            Ok(o) => EntryAnswer::Ok(o),
            Err(e) => EntryAnswer::Err {
                success: false,
                status: e.status.as_u16(),
                error: ErrorBody {
                    code: e.code,
                    message: e.message,
                },
            },
        }
    }
}

#[derive(Serialize)]
struct BatchAnswer {
    success: bool,
    count: usize,
    succeeded: usize,
    failed: usize,
    results: Vec<EntryAnswer>,
}

/// The entries of a batch body, each a slice of it: a JSON array of
/// publish objects, or NDJSON (one per line; blank lines skipped).
/// (`pub` for tests/fuzz.rs only.)
#[doc(hidden)]
pub fn split_batch(body: &Bytes, ndjson: bool) -> Result<Vec<&[u8]>, ApiError> {
    if ndjson {
        return Ok(body
            .split(|&b| b == b'\n')
            .map(|l| l.trim_ascii())
            .filter(|l| !l.is_empty())
            .collect());
    }
    let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "not_a_batch",
            format!("the body is not a JSON array of publish objects: {e}"),
        )
    })?;
    Ok(items.into_iter().map(|r| r.get().as_bytes()).collect())
}

/// POST /api/v1/publish/batch: every entry is parsed and checked like a
/// single publish; JetStream publishes are pipelined (up to BATCH_WINDOW
/// acks in flight, in order on one connection) and answered per entry, in
/// order. 200 when all succeeded, 207 when any failed.
pub async fn batch(app: &App, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let ndjson = if content_type_is(&req, "application/json") {
        false
    } else if content_type_is(&req, "application/x-ndjson") {
        true
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send a JSON array as application/json, or one object per line as application/x-ndjson",
        ));
    };
    let cfg = app.config();
    let api = &cfg.api;
    let timeout = api.publish_timeout.get();
    let max_bytes = api.batch_max_bytes;
    let body = read_body(
        req,
        max_bytes.bytes() as usize,
        api.header_read_timeout.get(),
        || format!("the batch is larger than api.batch_max_bytes ({max_bytes})"),
    )
    .await?;
    let raws = split_batch(&body, ndjson)?;
    if raws.is_empty() {
        return Err(ApiError::bad_request(
            "empty_batch",
            "the batch has no entries",
        ));
    }
    if raws.len() > api.batch_max_entries as usize {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "the batch has {} entries, more than api.batch_max_entries ({})",
                raws.len(),
                api.batch_max_entries
            ),
        ));
    }
    app.stats.batch_entries.observe(raws.len() as u64);
    let nats = connected(app)?;
    let matcher = app.matcher();
    let mut results: Vec<Option<Result<Outcome, ApiError>>> = Vec::with_capacity(raws.len());
    results.resize_with(raws.len(), || None);
    let mut acks = FuturesUnordered::new();
    for (i, raw) in raws.into_iter().enumerate() {
        let entry = match parse_entry(&cfg, &body, raw) {
            Ok(e) => e,
            Err(e) => {
                results[i] = Some(Err(e));
                continue;
            }
        };
        match matcher.stream_for(&entry.subject) {
            Some(stream) => match send_js(app, timeout, &nats, stream, entry).await {
                Ok(ack) => {
                    let sent = Instant::now();
                    acks.push(async move { (i, await_ack(app, timeout, stream, ack, sent).await) });
                }
                Err(e) => results[i] = Some(Err(e)),
            },
            None => results[i] = Some(send_core(timeout, &nats, entry).await),
        }
        while acks.len() >= BATCH_WINDOW {
            if let Some((j, r)) = acks.next().await {
                results[j] = Some(r);
            }
        }
    }
    while let Some((j, r)) = acks.next().await {
        results[j] = Some(r);
    }
    if syncs(app, &cfg) {
        make_durable(app, timeout, &mut results).await;
    }
    let mut succeeded = 0;
    let results: Vec<EntryAnswer> = results
        .into_iter()
        .map(|r| {
            let r = r.expect("every entry has a result");
            match &r {
                Ok(o) => {
                    succeeded += 1;
                    app.stats.published(Endpoint::Batch, o.persisted);
                }
                Err(e) => app.stats.error(Endpoint::Batch, e.status.as_u16()),
            }
            r.into()
        })
        .collect();
    let count = results.len();
    let answer = BatchAnswer {
        success: succeeded == count,
        count,
        succeeded,
        failed: count - succeeded,
        results,
    };
    let status = if succeeded == count {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok(json_bytes(
        status,
        serde_json::to_vec(&answer).unwrap_or_default(),
    ))
}

/// One sync for every acknowledged entry of a batch: each then carries
/// what its stream got, or, when the sync failed, the error.
async fn make_durable(
    app: &App,
    timeout: Duration,
    results: &mut [Option<Result<Outcome, ApiError>>],
) {
    let acked = || {
        results
            .iter()
            .filter_map(|r| r.as_ref()?.as_ref().ok()?.stream.as_deref())
    };
    let count = acked().count() as u64;
    if count == 0 {
        return;
    }
    let streams: std::collections::BTreeSet<&str> = acked().collect();
    let got = sync_acked(app, timeout, streams, count).await;
    for r in results.iter_mut() {
        let Some(Ok(o)) = r else { continue };
        let Some(stream) = &o.stream else { continue };
        match &got {
            Ok(c) => o.durable = c.of(stream) == Coverage::Durable,
            Err(e) => *r = Some(Err(e.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error nats-server answered a publish with (as async-nats parses
    /// the pub ack).
    fn answered(kind: PublishErrorKind, err_code: u64, description: &str) -> PublishError {
        let status = if err_code == 10077 { 503 } else { 400 };
        let j: jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": status, "err_code": err_code, "description": description,
        }))
        .unwrap();
        PublishError::with_source(kind, j)
    }

    #[test]
    fn a_bad_publish_object_is_named_by_what_is_wrong_with_it() {
        let cfg = Config::default();
        let code = |raw: &str| {
            let body = Bytes::copy_from_slice(raw.as_bytes());
            parse_entry(&cfg, &body, &body).err().map(|e| e.code)
        };
        assert_eq!(code(r#"{"subject": "a.b", "message": 1}"#), None);
        assert_eq!(code(r#"{"message": 1}"#), Some("missing_subject"));
        assert_eq!(code(r#"{}"#), Some("missing_subject"));
        assert_eq!(
            code(r#"{"subject": null, "message": 1}"#),
            Some("invalid_json")
        );
        assert_eq!(code(r#"{"subject": "a.b"}"#), Some("invalid_json"));
        assert_eq!(code(r#"[1, 2]"#), Some("invalid_json"));
        assert_eq!(
            code(r#"{"subject": "a.*", "message": 1}"#),
            Some("wildcard_subject")
        );
        assert_eq!(
            code(r#"{"subject": "a..b", "message": 1}"#),
            Some("invalid_subject")
        );
        assert_eq!(
            code(r#"{"subject": "a*.b", "message": 1}"#),
            Some("invalid_subject")
        );
    }

    #[test]
    fn a_stream_or_store_without_room_is_507_stream_full() {
        let full = [
            (10077, "maximum messages exceeded"),
            (10077, "maximum bytes exceeded"),
            (10077, "maximum messages per subject exceeded"),
            (10023, "insufficient resources"),
            (10047, "insufficient storage resources available"),
            (10028, "insufficient memory resources available"),
            (10054, "message size exceeds maximum allowed"),
            (10097, "header size exceeds maximum allowed of 64k"),
        ];
        for (code, description) in full {
            let e = answered(PublishErrorKind::Other, code, description);
            assert_eq!(refusal(&e), Refusal::StreamFull, "{e}");
            let a = publish_error("S", e);
            assert_eq!((a.status.as_u16(), a.code), (507, "stream_full"), "{a:?}");
            assert!(a.message.contains(description), "{}", a.message);
        }
    }

    #[test]
    fn other_refusals_are_503_whatever_their_text_says() {
        let failed = [
            (PublishErrorKind::Other, 10077, "message too large"),
            (PublishErrorKind::Other, 10077, "store is closed"),
            (
                PublishErrorKind::Other,
                10002,
                "resource limits exceeded for account",
            ),
            (
                PublishErrorKind::Other,
                10060,
                "expected stream does not match",
            ),
            // The stream's last msg id is the client's own text.
            (
                PublishErrorKind::WrongLastMessageId,
                10070,
                "wrong last msg ID: maximum-storage",
            ),
        ];
        for (kind, code, description) in failed {
            let e = answered(kind, code, description);
            assert_eq!(refusal(&e), Refusal::Failed, "{e}");
            let a = publish_error("S", e);
            assert_eq!(
                (a.status.as_u16(), a.code),
                (503, "nats_unavailable"),
                "{a:?}"
            );
        }
        // Not an answer from nats-server at all.
        let local = PublishError::with_source(PublishErrorKind::Other, "insufficient storage");
        assert_eq!(refusal(&local), Refusal::Failed);
        assert_eq!(
            refusal(&PublishError::new(PublishErrorKind::BrokenPipe)),
            Refusal::Failed
        );
    }

    #[test]
    fn the_error_kind_decides_size_timeouts_and_missing_streams() {
        let e = PublishError::with_source(PublishErrorKind::MaxPayloadExceeded, "maximum");
        assert_eq!(refusal(&e), Refusal::TooLarge);
        assert_eq!(publish_error("S", e).status.as_u16(), 413);
        let e = PublishError::new(PublishErrorKind::TimedOut);
        assert_eq!(refusal(&e), Refusal::TimedOut);
        assert_eq!(publish_error("S", e).code, "nats_unavailable");
        let e = PublishError::new(PublishErrorKind::StreamNotFound);
        assert_eq!(refusal(&e), Refusal::NoStream);
        let a = publish_error("S", e);
        assert_eq!((a.status.as_u16(), a.code), (503, "stream_unavailable"));
    }

    #[test]
    fn ndjson_entries_are_the_non_blank_lines() {
        let body = Bytes::from_static(b"{\"a\":1}\n\n  {\"b\":2}\r\n");
        let e = split_batch(&body, true).unwrap();
        assert_eq!(e, vec![&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]);
    }

    #[test]
    fn a_json_batch_must_be_an_array() {
        let e = split_batch(&Bytes::from_static(b"{\"subject\":\"a\"}"), false).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "not_a_batch"));
        let body = Bytes::from_static(b"[{\"x\":1}, 2]");
        let ok = split_batch(&body, false).unwrap();
        assert_eq!(ok, vec![&b"{\"x\":1}"[..], &b"2"[..]]);
    }

    #[test]
    fn header_names_and_values_are_checked() {
        let m = |k: &str, v: &str| BTreeMap::from([(k.to_string(), HeaderValues::One(v.into()))]);
        assert!(headers(m("X-Trace", "abc")).is_ok());
        assert_eq!(
            headers(m("bad name", "x")).unwrap_err().code,
            "invalid_header"
        );
        assert_eq!(headers(m("X:y", "x")).unwrap_err().code, "invalid_header");
        assert_eq!(
            headers(m("X", "a\r\nb")).unwrap_err().code,
            "invalid_header"
        );
        let many = BTreeMap::from([(
            "X-Tag".to_string(),
            HeaderValues::Many(vec!["a".into(), "b".into()]),
        )]);
        let h = headers(many).unwrap();
        assert_eq!(h.get_all("X-Tag").count(), 2);
    }
}
