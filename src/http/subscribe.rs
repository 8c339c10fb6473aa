//! GET /api/v1/subscribe?subject=market.binance.> as Server-Sent Events: a
//! core NATS subscription (wildcards allowed), one `message` event per
//! message, heartbeat comments, a `shutdown` event when the daemon stops.
//!
//! A client that reads slower than messages arrive does not make the daemon
//! hold more than `api.sse_buffer` bytes for it: further messages are
//! dropped, counted, and the client is told with a `dropped` event before
//! the next message it gets.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hyper::body::{Frame, Incoming};
use hyper::{header, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::message;
use crate::app::App;
use crate::subject;

/// The event stream's body: what the subscription task queued.
pub struct SseBody {
    rx: mpsc::UnboundedReceiver<Bytes>,
    /// Bytes queued and not yet taken by hyper.
    queued: Arc<AtomicUsize>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| {
            b.map(|b| {
                self.queued.fetch_sub(b.len(), Relaxed);
                Ok(Frame::data(b))
            })
        })
    }
}

/// Frees the client's slot among `api.sse_max_clients` when its stream ends.
struct Slot(Arc<App>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.sse_clients.fetch_sub(1, Relaxed);
    }
}

/// The value of `subject` in a query string, percent-decoded; `Err` with
/// the raw value when the decoded bytes are not UTF-8 (replacing them would
/// follow a subject the client never asked for).
fn subject_param(query: &str) -> Option<Result<String, &str>> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == "subject").then(|| percent_decode(v).ok_or(v))
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = match b.get(i + 1..i + 3) {
            Some(&[h, l]) if b[i] == b'%' => hex(h).zip(hex(l)).map(|(h, l)| h * 16 + l),
            _ => None,
        };
        match (escaped, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, c) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// One SSE event; `data` is one line of JSON.
fn event(name: &str, id: Option<u64>, data: &Value) -> Bytes {
    let mut s = String::new();
    if let Some(id) = id {
        s.push_str(&format!("id: {id}\n"));
    }
    s.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    Bytes::from(s)
}

/// A `message` event (one line of JSON, as `event` writes it).
fn message_event(id: u64, m: &async_nats::Message) -> Bytes {
    let json = serde_json::to_string(&message::Out::of(m)).unwrap_or_default();
    Bytes::from(format!("id: {id}\nevent: message\ndata: {json}\n\n"))
}

/// GET /api/v1/subscribe.
pub async fn handle(
    app: &Arc<App>,
    req: &Request<Incoming>,
) -> Result<Response<SseBody>, ApiError> {
    let subj = subject_param(req.uri().query().unwrap_or(""))
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_subject",
                "give the subject to follow: /api/v1/subscribe?subject=market.binance.>",
            )
        })?
        .map_err(|raw| {
            ApiError::bad_request(
                "invalid_subject",
                format!("subject {raw:?} is not UTF-8 once percent-decoded"),
            )
        })?;
    subject::check(&subj, true).map_err(|e| ApiError::bad_request("invalid_subject", e.message))?;
    if subj.starts_with('$') || subj == ">" {
        return Err(ApiError::bad_request(
            "reserved_subject",
            format!("subject {subj:?} would include NATS's own `$` subjects; follow your application's subjects"),
        ));
    }
    let api = app.config().api.clone();
    let max = api.sse_max_clients as usize;
    if app.sse_clients.fetch_add(1, Relaxed) >= max {
        app.sse_clients.fetch_sub(1, Relaxed);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_subscribers",
            format!(
                "event streams are limited to {max} at once (api.sse_max_clients); try again later"
            ),
        ));
    }
    let slot = Slot(app.clone());
    let nats = app.connected_nats().ok_or_else(|| {
        ApiError::unavailable("nats-server is not available right now; retry shortly")
    })?;
    let sub = nats
        .client
        .subscribe(subj.clone())
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot subscribe to {subj:?}: {e}")))?;
    // The subscription is registered once the server has seen it: events
    // published after the client got its first event are not missed.
    let _ = tokio::time::timeout(Duration::from_secs(2), nats.client.flush()).await;

    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let heartbeat = api.sse_heartbeat.get();
    let hello = event(
        "subscribed",
        None,
        &json!({"subject": subj, "heartbeat_ms": heartbeat.as_millis() as u64}),
    );
    queued.fetch_add(hello.len(), Relaxed);
    let _ = tx.send(hello);
    tokio::spawn(pump(Pump {
        app: app.clone(),
        sub,
        tx,
        queued: queued.clone(),
        budget: api.sse_buffer.bytes() as usize,
        heartbeat,
        _slot: slot,
    }));
    let mut resp = Response::new(SseBody { rx, queued });
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    // Proxies such as nginx would otherwise buffer the stream.
    h.insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    Ok(resp)
}

struct Pump {
    app: Arc<App>,
    sub: async_nats::Subscriber,
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    budget: usize,
    heartbeat: Duration,
    _slot: Slot,
}

impl Pump {
    /// Queues `b`; false once the client is gone.
    fn send(&self, b: Bytes) -> bool {
        self.queued.fetch_add(b.len(), Relaxed);
        self.tx.send(b).is_ok()
    }

    /// Whether `len` more bytes fit the client's budget (one message always
    /// does when nothing is queued, however big).
    fn fits(&self, len: usize) -> bool {
        let q = self.queued.load(Relaxed);
        q == 0 || q + len <= self.budget
    }
}

fn dropped_event(n: u64) -> Bytes {
    event(
        "dropped",
        None,
        &json!({"dropped": n, "message": format!("{n} message(s) were dropped: this client reads slower than they arrive")}),
    )
}

async fn pump(mut p: Pump) {
    let start = tokio::time::Instant::now() + p.heartbeat;
    let mut tick = tokio::time::interval_at(start, p.heartbeat);
    let mut closing = p.app.closing.subscribe();
    let (mut id, mut dropped) = (0u64, 0u64);
    loop {
        tokio::select! {
            m = p.sub.next() => {
                let Some(m) = m else {
                    p.send(event("error", None, &json!({"message": "the subscription ended (the daemon's connection to nats-server was replaced); reconnect"})));
                    break;
                };
                // Judged before encoding, from an upper bound of the
                // event's size, so that dropping costs next to nothing and
                // the subscription's own buffer never fills while this
                // client lags.
                let bound = m.payload.len() / 3 * 4 + m.subject.len() + 256;
                let fits = p.fits(bound);
                let ev = fits.then(|| message_event(id + 1, &m));
                let notice = (dropped > 0).then(|| dropped_event(dropped));
                let need = ev.as_ref().map_or(0, Bytes::len) + notice.as_ref().map_or(0, Bytes::len);
                let Some(ev) = ev.filter(|_| p.fits(need)) else {
                    dropped += 1;
                    p.app.stats.sse_dropped.fetch_add(1, Relaxed);
                    continue;
                };
                if let Some(n) = notice {
                    p.send(n);
                    dropped = 0;
                }
                id += 1;
                if !p.send(ev) {
                    break;
                }
                p.app.stats.consumed.fetch_add(1, Relaxed);
            }
            _ = tick.tick() => {
                let beat = if dropped > 0 && p.fits(128) {
                    let n = dropped_event(dropped);
                    dropped = 0;
                    n
                } else {
                    Bytes::from_static(b": heartbeat\n\n")
                };
                if !p.send(beat) {
                    break;
                }
            }
            _ = p.tx.closed() => break,
            _ = crate::flag_set(&mut closing) => {
                p.send(event("shutdown", None, &json!({"message": "the broker is stopping"})));
                break;
            }
        }
    }
    // Dropping the subscriber unsubscribes.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_comes_from_the_query_string_percent_decoded() {
        assert_eq!(
            subject_param("subject=market.binance.%3E"),
            Some(Ok("market.binance.>".into()))
        );
        assert_eq!(subject_param("x=1&subject=a.*&y=2"), Some(Ok("a.*".into())));
        assert_eq!(subject_param("subject=a.%2"), Some(Ok("a.%2".into())));
        assert_eq!(subject_param("subject=a.%C3%A9"), Some(Ok("a.é".into())));
        assert_eq!(subject_param("subjects=a"), None);
        assert_eq!(subject_param(""), None);
    }

    #[test]
    fn a_subject_that_is_not_utf8_once_decoded_is_refused_not_replaced() {
        assert_eq!(subject_param("subject=a.%FF"), Some(Err("a.%FF")));
        assert_eq!(subject_param("subject=a.%C3"), Some(Err("a.%C3")));
    }

    #[test]
    fn events_are_one_json_line_each() {
        let e = event("message", Some(7), &json!({"data": "two\nlines"}));
        assert_eq!(
            &e[..],
            b"id: 7\nevent: message\ndata: {\"data\":\"two\\nlines\"}\n\n"
        );
    }
}
