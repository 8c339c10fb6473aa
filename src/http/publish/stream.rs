//! POST /api/v1/publish/stream: a chunked NDJSON body of any length, one
//! publish per line, answered by a chunked NDJSON stream of one result per
//! line, in order, each sent as soon as it and the lines before it are
//! done, and a summary line at the end.
//!
//! Bounded everywhere, whatever the client does:
//! - at most [`WINDOW`] lines (and `api.batch_max_bytes` of them) are
//!   between their parse and their result; while the window is full the
//!   body is not read, so TCP pushes back on the sender;
//! - acks are taken as they arrive, whatever the client reads (an ack
//!   left waiting holds one of the NATS client's 5000 in-flight permits,
//!   which every publish of the daemon shares); finished results wait in
//!   order (they count in the window) and as at most [`OUT_CAP`] bytes of
//!   text plus one queued chunk; a client that does not read them fills
//!   that, which fills the window, which stops the reading; one that
//!   takes nothing for `api.header_read_timeout` is given up on (its
//!   lines in flight are still counted);
//! - a line is at most what a single publish body may be (its bytes past
//!   that are skipped, not kept) and gets a 413 result of its own.
//!
//! Each line means what a single publish body means (the same parser and
//! sender as the batch): JetStream publishes are pipelined like a batch's
//! (a stream is one ordered pipeline already, so the coalescer, which
//! groups concurrent requests, has nothing to add), `nats.durability:
//! sync` answers a line only after a sync that began after its ack (as
//! for a batch, one sync covers the lines acknowledged while the previous
//! one ran, and the group commit joins it with other requests'), and the
//! publish gate
//! ([`accepting`]) is checked per line: when it closes mid-stream (a
//! drain, a failed store write) reading stops and the summary says why.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishAckFuture;
use bytes::{BufMut, Bytes, BytesMut};
use futures::future::{self, Either};
use futures::stream::{FuturesOrdered, StreamExt};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::{header, Request, Response, StatusCode};
use serde::Serialize;
use tokio::sync::mpsc;

use super::durable::{make_durable, syncs};
use super::entry::{parse_entry, Outcome};
use super::ndjson::{Piece, Splitter};
use super::send::{accepting, await_ack, send_core, send_js};
use super::{EntryAnswer, ErrorBody};
use crate::app::{App, Nats};
use crate::config::Config;
use crate::http::body::{connected, content_type_is, too_large};
use crate::http::error::ApiError;
use crate::routing::StreamMatcher;
use crate::stats::Endpoint;

/// Lines between their parse and their result, at most.
pub(super) const WINDOW: usize = 1024;

/// Result bytes gathered before they are handed to the connection.
const OUT_CAP: usize = 64 << 10;

/// The response body: chunks of result lines. It ends cleanly only after
/// the summary line; a stream cut short (the handler gave up on a client
/// that stopped reading) ends with an error, so hyper closes the
/// connection instead of sending the last chunk, and the client sees a
/// truncated answer rather than a complete-looking one.
pub struct IngestBody {
    rx: mpsc::Receiver<Bytes>,
    complete: Arc<AtomicBool>,
}

/// The answer stream was cut short.
#[derive(Debug)]
pub struct Truncated;

impl std::fmt::Display for Truncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the ingest answer stream was cut short")
    }
}

impl std::error::Error for Truncated {}

impl hyper::body::Body for IngestBody {
    type Data = Bytes;
    type Error = Truncated;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Truncated>>> {
        self.rx.poll_recv(cx).map(|b| match b {
            Some(b) => Some(Ok(Frame::data(b))),
            None if self.complete.load(Ordering::Acquire) => None,
            None => Some(Err(Truncated)),
        })
    }
}

/// POST /api/v1/publish/stream. Refusals that apply to the whole request
/// (media type, the publish gate, no connection) are answered as usual;
/// past them the answer is 200 and a stream of results.
pub async fn stream(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<IngestBody>, ApiError> {
    if !content_type_is(&req, "application/x-ndjson") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send one publish object per line as Content-Type: application/x-ndjson",
        ));
    }
    accepting(&app)?;
    connected(&app)?;
    let (tx, rx) = mpsc::channel(1);
    let complete = Arc::new(AtomicBool::new(false));
    tokio::spawn(run(app, req.into_body(), tx, complete.clone()));
    let mut resp = Response::new(IngestBody { rx, complete });
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    // Proxies such as nginx would otherwise hold the results back.
    h.insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    Ok(resp)
}

/// Why the body stopped being read before its end.
enum Stop {
    /// No body bytes for `api.header_read_timeout`.
    Idle(Duration),
    /// The body could not be read (the client went away, bad chunking).
    Body(String),
    /// The publish gate closed (draining, a failed store write).
    Gate(ApiError),
    /// The daemon stops.
    Closing,
    /// The client went away, or took no results for
    /// `api.header_read_timeout`: the lines in flight are still counted
    /// as their acks come, and nothing more is answered.
    Gone,
}

impl Stop {
    fn error(&self) -> ApiError {
        match self {
            Stop::Idle(idle) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("no body bytes for {idle:?} (api.header_read_timeout): the stream was ended; lines sent after this were not read"),
            ),
            Stop::Body(e) => ApiError::bad_request("bad_body", format!("cannot read the request body: {e}")),
            Stop::Gate(e) => e.clone(),
            Stop::Closing => ApiError::unavailable("the broker is stopping: lines after this one were not read; send them again to another node or once it is back"),
            Stop::Gone => ApiError::bad_request("gone", "the client went away"),
        }
    }
}

/// One line's result, when it is ready: its number, the bytes it holds in
/// the window, and the answer.
type Done = (u64, usize, Result<Outcome, ApiError>);

/// The summary line.
#[derive(Serialize)]
struct Summary {
    summary: bool,
    success: bool,
    count: u64,
    succeeded: u64,
    failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody>,
}

/// Appends `{"line":N,<the batch entry's answer>}` and a line break.
fn result_line(
    out: &mut BytesMut,
    scratch: &mut Vec<u8>,
    number: u64,
    r: Result<Outcome, ApiError>,
) {
    scratch.clear();
    let _ = serde_json::to_writer(&mut *scratch, &EntryAnswer::from(r));
    out.extend_from_slice(b"{\"line\":");
    out.extend_from_slice(number.to_string().as_bytes());
    out.extend_from_slice(b",");
    out.extend_from_slice(&scratch[1..]);
    out.extend_from_slice(b"\n");
}

/// The per-request state of one stream.
struct Ingest<'a> {
    app: &'a App,
    timeout: Duration,
    syncs: bool,
    /// A single publish body's limit; a longer line is 413.
    line_limit: usize,
    /// The config, the connection and the stream routing, refreshed per
    /// frame read, so a reload, a replaced client or a new stream applies
    /// to the lines after it.
    cfg: Arc<Config>,
    nats: Arc<Nats>,
    matcher: Arc<StreamMatcher>,
}

/// Where a line's publish stands once it is handed over.
enum Started {
    /// Answered already: a bad line, a core publish, a refused hand-over.
    Done(Result<Outcome, ApiError>),
    /// A JetStream publish whose ack is to come.
    Sent {
        stream: String,
        ack: PublishAckFuture,
        sent: Instant,
    },
}

impl Ingest<'_> {
    fn refresh(&mut self) {
        self.cfg = self.app.config();
        if let Some(n) = self.app.connected_nats() {
            self.nats = n;
        }
        self.matcher = self.app.matcher();
    }

    /// Parses one line and hands it to NATS.
    async fn start(&self, piece: Piece) -> Started {
        let bytes = match piece {
            Piece::TooLong { number, len } => {
                return Started::Done(Err(too_large(format!(
                    "line {number} has {len} bytes, more than a publish body may have ({} bytes, from max_payload)",
                    self.line_limit
                ))))
            }
            Piece::Line { bytes, .. } => bytes,
        };
        let entry = match parse_entry(&self.cfg, &bytes, &bytes) {
            Ok(e) => e,
            Err(e) => return Started::Done(Err(e)),
        };
        let Some(stream) = self.matcher.stream_for(&entry.subject) else {
            return Started::Done(send_core(self.timeout, &self.nats, entry).await);
        };
        let stream = stream.to_string();
        match send_js(self.app, self.timeout, &self.nats, &stream, entry).await {
            Ok(ack) => Started::Sent {
                stream,
                ack,
                sent: Instant::now(),
            },
            Err(e) => Started::Done(Err(e)),
        }
    }
}

/// A sent line's ack.
async fn acked(
    app: &App,
    timeout: Duration,
    line: (u64, usize),
    stream: String,
    ack: PublishAckFuture,
    sent: Instant,
) -> Done {
    (
        line.0,
        line.1,
        await_ack(app, timeout, &stream, ack, sent).await,
    )
}

/// Results in order, after their acks, waiting for the sync that covers
/// them.
type Group = Vec<(u64, Result<Outcome, ApiError>)>;

/// Under `nats.durability: sync`: one sync for a group of acknowledged
/// lines, as for a batch (begun after the last of their acks; the group
/// commit joins it with other requests'); each line then carries what its
/// stream got, or the sync's error.
fn sync_group(
    app: &App,
    timeout: Duration,
    group: Group,
) -> Pin<Box<dyn Future<Output = Group> + Send + '_>> {
    Box::pin(async move {
        let (numbers, mut results): (Vec<u64>, Vec<_>) =
            group.into_iter().map(|(n, r)| (n, Some(r))).unzip();
        make_durable(app, timeout, &mut results).await;
        numbers
            .into_iter()
            .zip(results.into_iter().flatten())
            .collect()
    })
}

/// Results taken from the in-flight lines as soon as they are there (so
/// each ack's permit goes back to the NATS connection at once, whatever
/// the client reads), synced in groups under `nats.durability: sync`,
/// counted, and kept in order until the answer has room for them.
#[derive(Default)]
struct Answers {
    syncs: bool,
    /// Acknowledged, waiting for the next sync.
    unsynced: Group,
    /// Lines in the sync under way.
    syncing: usize,
    ready: VecDeque<(u64, Result<Outcome, ApiError>)>,
    /// Line bytes in the window.
    held: usize,
    succeeded: u64,
    failed: u64,
    /// True once the client is gone: results are only counted.
    gone: bool,
}

impl Answers {
    /// A line's result from `inflight`.
    fn take(&mut self, app: &App, (number, len, r): Done) {
        self.held -= len;
        if self.syncs && !self.gone {
            self.unsynced.push((number, r));
        } else {
            self.deliver(app, number, r);
        }
    }

    /// Lines past their ack, in the window still.
    fn waiting(&self) -> usize {
        self.unsynced.len() + self.syncing + self.ready.len()
    }

    /// The client is gone: what waits is counted, and nothing more is
    /// kept.
    fn give_up(&mut self, app: &App) {
        self.gone = true;
        for (number, r) in std::mem::take(&mut self.unsynced) {
            self.deliver(app, number, r);
        }
        self.ready.clear();
    }

    /// A line's final result: counted, and kept for the answer.
    fn deliver(&mut self, app: &App, number: u64, r: Result<Outcome, ApiError>) {
        match &r {
            Ok(o) => {
                self.succeeded += 1;
                app.stats.published(Endpoint::Stream, o.persisted);
            }
            Err(e) => {
                self.failed += 1;
                app.stats.error(Endpoint::Stream, e.status.as_u16());
            }
        }
        if !self.gone {
            self.ready.push_back((number, r));
        }
    }
}

async fn run(
    app: Arc<App>,
    mut body: Incoming,
    tx: mpsc::Sender<Bytes>,
    complete: Arc<AtomicBool>,
) {
    let app: &App = &app;
    let cfg = app.config();
    let max_payload = cfg.nats.max_payload.bytes() as usize;
    let idle = cfg.api.header_read_timeout.get();
    let window_bytes = cfg.api.batch_max_bytes.bytes() as usize;
    let Some(nats) = app.connected_nats() else {
        return;
    };
    let mut ing = Ingest {
        app,
        timeout: cfg.api.publish_timeout.get(),
        syncs: syncs(app, &cfg),
        // As for POST /api/v1/publish: room for JSON escaping of a
        // payload right at the limit plus the envelope and headers.
        line_limit: max_payload.saturating_mul(6).saturating_add(64 << 10),
        cfg,
        nats,
        matcher: app.matcher(),
    };
    let mut split = Splitter::new(ing.line_limit);
    let mut inflight = FuturesOrdered::new();
    let mut answers = Answers {
        syncs: ing.syncs,
        ..Answers::default()
    };
    let mut syncing: Option<Pin<Box<dyn Future<Output = Group> + Send + '_>>> = None;
    let mut out = BytesMut::with_capacity(OUT_CAP);
    let mut scratch = Vec::new();
    let mut eof = false;
    let mut stop: Option<Stop> = None;
    let mut closing = app.closing.subscribe();
    // When the wait for body bytes began (None while not waiting), and
    // since when results have waited for the client to take them.
    let mut waiting_since: Option<tokio::time::Instant> = None;
    let mut unsent_since: Option<tokio::time::Instant> = None;
    loop {
        // Results into the answer while it has room.
        while out.len() < OUT_CAP {
            let Some((number, r)) = answers.ready.pop_front() else {
                break;
            };
            result_line(&mut out, &mut scratch, number, r);
        }
        // One sync at a time for what was acknowledged meanwhile.
        if syncing.is_none() && !answers.unsynced.is_empty() {
            let group = std::mem::take(&mut answers.unsynced);
            answers.syncing = group.len();
            syncing = Some(sync_group(app, ing.timeout, group));
        }
        // Start lines while the window has room.
        while stop.is_none()
            && inflight.len() + answers.waiting() < WINDOW
            && answers.held < window_bytes
        {
            let piece = match split.next_piece() {
                Some(p) => p,
                None if eof && split.drained() => match split.finish() {
                    Some(p) => p,
                    None => break,
                },
                None => break,
            };
            let (number, len) = match &piece {
                Piece::Line { number, bytes } => (*number, bytes.len()),
                Piece::TooLong { number, .. } => (*number, 0),
            };
            if let Err(e) = accepting(app) {
                inflight.push_back(Either::Left(future::ready((number, 0, Err(e.clone())))));
                stop = Some(Stop::Gate(e));
                break;
            }
            answers.held += len;
            // While the line is handed over (which may wait for the
            // connection), the acks that arrive are taken.
            let start = ing.start(piece);
            tokio::pin!(start);
            let started = loop {
                tokio::select! {
                    biased;
                    s = &mut start => break s,
                    Some(d) = inflight.next(), if !inflight.is_empty() => answers.take(app, d),
                }
            };
            inflight.push_back(match started {
                Started::Done(r) => Either::Left(future::ready((number, len, r))),
                Started::Sent { stream, ack, sent } => {
                    Either::Right(acked(app, ing.timeout, (number, len), stream, ack, sent))
                }
            });
        }
        let reading = stop.is_none()
            && !eof
            && split.drained()
            && inflight.len() + answers.waiting() < WINDOW
            && answers.held < window_bytes;
        if !reading {
            waiting_since = None;
        } else if waiting_since.is_none() {
            waiting_since = Some(tokio::time::Instant::now());
        }
        let body_done = stop.is_some() || (eof && split.drained() && !split.mid_line());
        if inflight.is_empty() && answers.waiting() == 0 && body_done {
            break;
        }
        if out.is_empty() {
            unsent_since = None;
        } else if unsent_since.is_none() {
            unsent_since = Some(tokio::time::Instant::now());
        }
        let gone = answers.gone;
        tokio::select! {
            biased;
            Some(d) = inflight.next(), if !inflight.is_empty() => answers.take(app, d),
            group = async { syncing.as_mut().expect("a sync").await }, if syncing.is_some() => {
                syncing = None;
                answers.syncing = 0;
                for (number, r) in group {
                    answers.deliver(app, number, r);
                }
            }
            permit = tx.reserve(), if !out.is_empty() => match permit {
                Ok(p) => {
                    p.send(out.split().freeze());
                    unsent_since = None;
                }
                Err(_) => stop = Some(Stop::Gone),
            },
            frame = body.frame(), if reading => {
                waiting_since = None;
                match frame {
                    None => eof = true,
                    Some(Err(e)) => stop = Some(Stop::Body(e.to_string())),
                    Some(Ok(f)) => {
                        if let Ok(data) = f.into_data() {
                            split.push(data);
                        }
                        ing.refresh();
                    }
                }
            }
            _ = tokio::time::sleep_until(waiting_since.unwrap_or_else(tokio::time::Instant::now) + idle), if reading => {
                stop = Some(Stop::Idle(idle));
            }
            _ = tokio::time::sleep_until(unsent_since.unwrap_or_else(tokio::time::Instant::now) + idle), if unsent_since.is_some() => {
                tracing::debug!("POST /api/v1/publish/stream: the client took no results for {idle:?}; giving up on it");
                stop = Some(Stop::Gone);
            }
            // A body read to its end is answered to its end.
            _ = crate::flag_set(&mut closing), if stop.is_none() && !eof => stop = Some(Stop::Closing),
            _ = tx.closed(), if !gone => stop = Some(Stop::Gone),
        }
        if matches!(stop, Some(Stop::Gone)) && !answers.gone {
            // Nothing more is answered; what is in flight is still counted.
            answers.give_up(app);
            out.clear();
        }
    }
    if answers.gone {
        return;
    }
    // A line begun and not ended when reading stopped (the body paused
    // in it, or the daemon stops) gets the reason. (Lines of a frame not
    // yet split when the gate closed get no result: the summary's error
    // says that reading stopped.)
    let error = stop.map(|s| s.error());
    if let Some(e) = &error {
        if split.drained() && split.mid_line() {
            answers.failed += 1;
            app.stats.error(Endpoint::Stream, e.status.as_u16());
            result_line(&mut out, &mut scratch, split.line(), Err(e.clone()));
        }
    }
    let (succeeded, failed) = (answers.succeeded, answers.failed);
    let summary = Summary {
        summary: true,
        success: failed == 0 && error.is_none(),
        count: succeeded + failed,
        succeeded,
        failed,
        error: error.map(|e| ErrorBody {
            code: e.code,
            message: e.message,
        }),
    };
    let _ = serde_json::to_writer((&mut out).writer(), &summary);
    out.extend_from_slice(b"\n");
    // The rest of the answer (results may wait here for a slow reader),
    // as long as the client keeps taking it.
    while !out.is_empty() {
        let n = out.len().min(OUT_CAP);
        let last = n == out.len();
        match tokio::time::timeout(idle, tx.reserve()).await {
            Ok(Ok(p)) => {
                if last {
                    complete.store(true, Ordering::Release);
                }
                p.send(out.split_to(n).freeze());
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_line_is_the_batch_entrys_answer_with_the_line_number_first() {
        let (mut out, mut scratch) = (BytesMut::new(), Vec::new());
        result_line(&mut out, &mut scratch, 7, Ok(Outcome::core()));
        let e = ApiError::bad_request("invalid_json", "bad");
        result_line(&mut out, &mut scratch, 12, Err(e));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "{\"line\":7,\"success\":true,\"persisted\":false,\"durable\":false}\n\
             {\"line\":12,\"success\":false,\"status\":400,\"error\":{\"code\":\"invalid_json\",\"message\":\"bad\"}}\n"
        );
    }

    #[test]
    fn the_reasons_to_stop_reading_are_named_for_the_client() {
        let idle = Stop::Idle(Duration::from_secs(10)).error();
        assert_eq!((idle.status.as_u16(), idle.code), (408, "request_timeout"));
        let closing = Stop::Closing.error();
        assert_eq!(closing.status.as_u16(), 503);
        let gate = Stop::Gate(ApiError::unavailable("draining")).error();
        assert_eq!(gate.message, "draining");
    }
}
