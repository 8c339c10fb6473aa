//! POST /api/v1/publish, /api/v1/publish/batch and /api/v1/publish/stream:
//! one parser (`entry.rs`) and one sender (`send.rs`) for an entry, so a
//! batch entry or a streamed line means exactly what a single publish
//! means; `refusal.rs` says what a failed publish answers, `durable.rs`
//! waits for the sync; `stream.rs` (with `ndjson.rs` splitting its body)
//! is the streaming ingest.

mod durable;
mod entry;
mod ndjson;
mod refusal;
mod send;
mod stream;

use std::time::Instant;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use super::body::{connected, content_type_is, not_json, read_body};
use super::error::{json_bytes, ApiError};
use crate::app::App;
use crate::durability::Coverage;
use crate::stats::Endpoint;
use durable::{make_durable, sync_acked, syncs};
use entry::Outcome;
use send::{accepting, await_ack, publish_js, send_core, send_js};

#[doc(hidden)]
pub use entry::{parse_entry, split_batch, Entry};
pub use refusal::publish_error;
pub use stream::{stream, IngestBody};

type Resp = Response<http_body_util::Full<Bytes>>;

/// Acks a batch keeps in flight before it waits for the oldest ones.
const BATCH_WINDOW: usize = 1024;

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
    accepting(app)?;
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
    accepting(app)?;
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
