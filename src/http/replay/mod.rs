//! Reading a stream without a durable consumer: replay in pages, the last
//! message of a subject, a message by sequence, the last message of every
//! subject matching a wildcard. All GETs, so read-only tokens may call them.
//!
//! - `GET /api/v1/streams/{stream}/replay?start_seq=N|start_time=T|last=N|last_per_subject=true&subject=F&limit=L&cursor=C`
//! - `GET /api/v1/streams/{stream}/latest?subject=F&limit=L`
//! - `GET /api/v1/streams/{stream}/subjects/{subject}/last`
//! - `GET /api/v1/streams/{stream}/messages/{seq}`
//!
//! Replay and latest read through an ephemeral consumer per request
//! ([`ephemeral`]); the two single-message reads use JetStream's message
//! get ([`get`]). Messages look as a fetch hands them out (`subject`,
//! `data` or base64 `data` with `data_encoding`, `headers`) plus
//! `stream_seq` and `timestamp`.

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde::Serialize;
use tokio::time::Instant;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::ErrorCode;

use super::body::connected;
use super::error::{json_bytes, ApiError};
use super::message::{self, rfc3339_nanos};
use crate::app::{App, Nats};
use crate::subject;

pub mod cursor;
mod ephemeral;
mod get;
pub mod lastn;
pub mod query;

use cursor::{Cursor, Mode};
use ephemeral::Ephemeral;
use lastn::{LastN, Step};
use query::Start;

type Resp = Response<http_body_util::Full<Bytes>>;

/// GET .../replay: one page.
pub(crate) async fn replay(app: &App, stream: &str, query: Option<&str>) -> Result<Resp, ApiError> {
    check_stream(stream)?;
    let q = query::replay(query, stream, app.config().api.fetch_max_batch)?;
    replay_page(app, stream, q).await
}

/// GET .../latest: the newest message per matching subject, bounded.
pub(crate) async fn latest(app: &App, stream: &str, query: Option<&str>) -> Result<Resp, ApiError> {
    check_stream(stream)?;
    let (filter, limit) = query::latest(query, app.config().api.fetch_max_batch)?;
    latest_page(app, stream, filter, limit).await
}

/// GET .../subjects/{subject}/last.
pub(crate) async fn subject_last(
    app: &App,
    stream: &str,
    subject: &str,
    query: Option<&str>,
) -> Result<Resp, ApiError> {
    check_stream(stream)?;
    no_query(query)?;
    let subject = query::path_subject(subject, stream)?;
    get::get(app, stream, get::Which::LastOf(subject)).await
}

/// GET .../messages/{seq}.
pub(crate) async fn message(
    app: &App,
    stream: &str,
    seq: &str,
    query: Option<&str>,
) -> Result<Resp, ApiError> {
    check_stream(stream)?;
    no_query(query)?;
    let seq = query::seq("the sequence in the path", seq)?;
    get::get(app, stream, get::Which::Seq(seq)).await
}

fn no_stream(stream: &str) -> ApiError {
    ApiError::not_found(format!("no stream named {stream:?}"))
}

/// A name nats-server cannot have is an unknown stream.
fn check_stream(stream: &str) -> Result<(), ApiError> {
    subject::check_stream_name(stream).map_err(|_| no_stream(stream))
}

fn no_query(query: Option<&str>) -> Result<(), ApiError> {
    match query {
        Some(q) if !q.is_empty() => Err(ApiError::bad_request(
            "invalid_query",
            format!("this endpoint takes no query parameters, got {q:?}"),
        )),
        _ => Ok(()),
    }
}

/// A message as the API shows it: a fetch's message fields plus where it
/// sits in the stream.
#[derive(Serialize)]
struct Entry<'a> {
    #[serde(flatten)]
    message: message::Out<'a>,
    stream_seq: u64,
    timestamp: String,
}

impl<'a> Entry<'a> {
    fn new(
        subject: &'a str,
        payload: &'a [u8],
        headers: Option<&async_nats::HeaderMap>,
        stream_seq: u64,
        timestamp_ns: i128,
    ) -> Entry<'a> {
        Entry {
            message: message::Out::parts(subject, payload, headers),
            stream_seq,
            timestamp: rfc3339_nanos(timestamp_ns),
        }
    }
}

/// One message's JSON (the answer of the single-message reads).
fn entry_json(
    subject: &str,
    payload: &[u8],
    headers: Option<&async_nats::HeaderMap>,
    stream_seq: u64,
    timestamp_ns: i128,
) -> Vec<u8> {
    serde_json::to_vec(&Entry::new(
        subject,
        payload,
        headers,
        stream_seq,
        timestamp_ns,
    ))
    .unwrap_or_default()
}

/// The stream's info: 404 when it does not exist.
async fn stream_info(
    app: &App,
    nats: &Nats,
    stream: &str,
) -> Result<async_nats::jetstream::stream::Info, ApiError> {
    let timeout = app.config().api.publish_timeout.get();
    match app
        .while_connected(timeout, nats.js.get_stream(stream))
        .await
    {
        Ok(Ok(s)) => Ok(s.cached_info().clone()),
        Ok(Err(e)) => Err(match e.kind() {
            GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                no_stream(stream)
            }
            _ => ApiError::unavailable(format!("cannot get stream {stream}: {e}")),
        }),
        Err(_) => Err(ApiError::unavailable(format!(
            "JetStream did not answer about stream {stream} within {timeout:?}"
        ))),
    }
}

/// A filter none of the stream's subjects can match would read nothing,
/// forever: say so instead.
fn check_filter(info: &async_nats::jetstream::stream::Info, filter: &str) -> Result<(), ApiError> {
    let subjects = &info.config.subjects;
    // A mirror or a stream of sources has no subjects of its own.
    if subjects.is_empty() || subjects.iter().any(|s| subject::overlaps(s, filter)) {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "invalid_subject",
        format!(
            "subject {filter:?} matches none of stream {}'s subjects {subjects:?}",
            info.config.name
        ),
    ))
}

/// A page read: the messages and where the next one starts.
struct Read {
    page: ephemeral::Page,
    next: Cursor,
}

/// Reads one page: the consumer for `start` is made, read and deleted.
async fn page(
    app: &App,
    stream: &str,
    start: Start,
    filter: Option<String>,
    limit: u32,
) -> Result<Read, ApiError> {
    let deadline = Instant::now() + app.config().api.publish_timeout.get();
    let nats = connected(app)?;
    let info = stream_info(app, &nats, stream).await?;
    if let Some(f) = &filter {
        check_filter(&info, f)?;
    }
    let mode = query::mode_of(&start);
    // Sequences below this are not handed out: an lps cursor's earlier
    // pages, or a start past the stream's end that nats-server moved back
    // to its end.
    let (policy, skip_below) = match &start {
        Start::All => (DeliverPolicy::All, 0),
        Start::Seq(s) => (seq_policy(*s), *s),
        Start::Time(t) => (DeliverPolicy::ByStartTime { start_time: *t }, 0),
        Start::Last(n) => {
            let from = last_n(app, &nats, &info, *n, filter.as_deref(), deadline).await?;
            (seq_policy(from), from)
        }
        Start::LastPerSubject => (DeliverPolicy::LastPerSubject, 0),
        Start::Cursor(c) => match c.mode {
            Mode::Seq => (seq_policy(c.next), c.next),
            Mode::LastPerSubject => (DeliverPolicy::LastPerSubject, c.next),
        },
    };
    let eph = Ephemeral::create(app, &nats, stream, policy, filter.as_deref()).await?;
    let expect_skips = mode == Mode::LastPerSubject && skip_below > 0;
    let read = ephemeral::read(
        app,
        &eph,
        limit as usize,
        skip_below,
        expect_skips,
        deadline,
    )
    .await;
    let start_seq = eph.start_seq();
    eph.delete(app).await;
    let page = read?;
    let next = match page.messages.last() {
        Some(m) => m.stream_seq + 1,
        None if mode == Mode::Seq => start_seq.max(skip_below),
        None => skip_below,
    };
    app.stats.consumed.fetch_add(
        page.messages.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    Ok(Read {
        page,
        next: Cursor {
            stream: stream.to_string(),
            filter,
            mode,
            next,
        },
    })
}

fn seq_policy(start_sequence: u64) -> DeliverPolicy {
    DeliverPolicy::ByStartSequence {
        start_sequence: start_sequence.max(1),
    }
}

/// The start of the last `n` matching messages: probes with throwaway
/// consumers (see [`lastn`]).
async fn last_n(
    app: &App,
    nats: &Nats,
    info: &async_nats::jetstream::stream::Info,
    n: u64,
    filter: Option<&str>,
    deadline: Instant,
) -> Result<u64, ApiError> {
    let stream = info.config.name.as_str();
    let (mut search, mut step) = LastN::new(n, info.state.first_sequence, info.state.last_sequence);
    loop {
        match step {
            Step::Start(s) => return Ok(s),
            Step::Probe(at) => {
                if Instant::now() >= deadline {
                    return Err(ApiError::unavailable(format!(
                        "finding the last {n} messages of {stream} took longer than api.publish_timeout; retry, or start from a sequence or time"
                    )));
                }
                let probe = Ephemeral::create(app, nats, stream, seq_policy(at), filter).await?;
                let pending = probe.pending();
                probe.delete(app).await;
                step = search.observe(at, pending);
            }
        }
    }
}

#[derive(Serialize)]
struct ReplayAnswer<'a> {
    stream: &'a str,
    subject: Option<&'a str>,
    messages: Vec<Entry<'a>>,
    count: usize,
    /// Matching messages after this page when it was read.
    pending: u64,
    end_reached: bool,
    next_cursor: String,
}

fn entries(page: &ephemeral::Page) -> Vec<Entry<'_>> {
    page.messages
        .iter()
        .map(|r| {
            Entry::new(
                r.message.subject.as_str(),
                &r.message.payload,
                r.message.headers.as_ref(),
                r.stream_seq,
                r.timestamp_ns as i128,
            )
        })
        .collect()
}

async fn replay_page(app: &App, stream: &str, q: query::Replay) -> Result<Resp, ApiError> {
    let Read { page, next } = page(app, stream, q.start, q.filter, q.limit).await?;
    let messages = entries(&page);
    let body = serde_json::to_vec(&ReplayAnswer {
        stream,
        subject: next.filter.as_deref(),
        count: messages.len(),
        messages,
        pending: page.pending,
        end_reached: page.end_reached,
        next_cursor: next.encode(),
    })
    .unwrap_or_default();
    Ok(json_bytes(StatusCode::OK, body))
}

#[derive(Serialize)]
struct LatestAnswer<'a> {
    stream: &'a str,
    subject: Option<&'a str>,
    messages: Vec<Entry<'a>>,
    count: usize,
    /// More subjects match than `limit`: the rest follow from
    /// `next_cursor` on .../replay.
    truncated: bool,
    next_cursor: String,
}

async fn latest_page(
    app: &App,
    stream: &str,
    filter: Option<String>,
    limit: u32,
) -> Result<Resp, ApiError> {
    let Read { page, next } = page(app, stream, Start::LastPerSubject, filter, limit).await?;
    let messages = entries(&page);
    let body = serde_json::to_vec(&LatestAnswer {
        stream,
        subject: next.filter.as_deref(),
        count: messages.len(),
        messages,
        truncated: !page.end_reached,
        next_cursor: next.encode(),
    })
    .unwrap_or_default();
    Ok(json_bytes(StatusCode::OK, body))
}
