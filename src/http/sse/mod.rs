//! GET /api/v1/subscribe?subject=market.binance.> as Server-Sent Events: a
//! core NATS subscription (wildcards allowed), one `message` event per
//! message, heartbeat comments, a `shutdown` event when the daemon stops.
//!
//! Every client of one subject string shares one subscription and one
//! fan-out task (`topic`), which encodes each message once. A client that
//! reads slower than messages arrive does not make the daemon hold more
//! than `api.sse_buffer` bytes for it: further messages are dropped,
//! counted, and the client is told with a `dropped` event before the next
//! message it gets (`ledger`).
//!
//! This file is the handler; `query` reads the subject, `event` writes
//! the events, `body` is the response body, `topic` the fan-out.

mod body;
mod event;
mod ledger;
mod query;
mod topic;

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{header, Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::mpsc;

pub use body::SseBody;

use super::error::ApiError;
use crate::app::{App, Lane};
use crate::subject;

/// How long a new event stream waits for nats-server to confirm its
/// subscription before it answers 503.
const SUBSCRIBE_CONFIRM: Duration = Duration::from_secs(5);

/// GET /api/v1/subscribe.
pub async fn handle(
    app: &Arc<App>,
    req: &Request<Incoming>,
) -> Result<Response<SseBody>, ApiError> {
    let subj = query::subject_param(req.uri().query().unwrap_or(""))
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
    let slot = body::Slot(app.clone());
    let unavailable =
        || ApiError::unavailable("nats-server is not available right now; retry shortly");
    let nats = app.connected_nats().ok_or_else(unavailable)?;
    let events = app
        .events_client(&nats)
        .await
        .map_err(|e| ApiError::unavailable(format!("{e}; retry shortly")))?;

    // The first event is queued before the client joins its topic: no
    // message can come before it.
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let heartbeat = api.sse_heartbeat.get();
    let hello = event::event(
        "subscribed",
        None,
        &json!({"subject": subj, "heartbeat_ms": heartbeat.as_millis() as u64}),
    );
    queued.fetch_add(hello.len(), Relaxed);
    let _ = tx.send(hello);
    let lane = Lane {
        tx,
        queued: queued.clone(),
        budget: api.sse_buffer.bytes() as usize,
    };
    let member = topic::join(
        app,
        &events,
        nats.events_resumed.subscribe(),
        nats.gen,
        &subj,
        lane,
    )
    .await
    .map_err(|e| ApiError::unavailable(format!("cannot subscribe to {subj:?}: {e}")))?;
    // nats-server has taken the subscription up (whether this client made
    // it or joined one still being made) before the client gets its first
    // event: what is published after that is not missed. (A flush alone
    // let a publish from another connection overtake the SUB.)
    match tokio::time::timeout(SUBSCRIBE_CONFIRM, crate::app::server_read_all(&events)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(ApiError::unavailable(format!(
                "nats-server did not confirm the subscription to {subj:?}: {e}; retry shortly"
            )))
        }
        Err(_) => {
            return Err(ApiError::unavailable(format!(
                "nats-server did not confirm the subscription to {subj:?} within {SUBSCRIBE_CONFIRM:?}; retry shortly"
            )))
        }
    }

    let mut resp = Response::new(SseBody {
        rx,
        queued,
        _member: member,
        _slot: slot,
    });
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
