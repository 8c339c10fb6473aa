//! Handing an entry to NATS: a JetStream publish awaited on its own, or
//! sent with its ack kept in flight (a batch), or a core publish; a lost
//! connection or a full store named as such.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use hyper::StatusCode;

use super::entry::{Entry, Outcome};
use super::refusal::publish_error;
use crate::app::{App, Lost, Nats};
use crate::http::error::ApiError;

pub(super) fn lost(stream: &str, l: Lost, timeout: Duration) -> ApiError {
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

/// Whether this node takes publishes now, checked once per request before
/// anything is sent to NATS; else 503 + Retry-After (507 for a full disk):
/// - it drains (nats-server in lame-duck mode before a stop or a restart,
///   handing its streams away): the client goes to another node, or
///   comes back once this one has restarted;
/// - nats-server failed a store write and is not restarted yet
///   ([`store_trusted`]);
/// - the first stream sync has not run: which subjects streams capture is
///   not known (right after a restart, with the HTTP socket kept by
///   systemd, requests come in before it), and a stream's message would go
///   out as a core publish, answered "persisted": false while JetStream
///   stores it.
pub(super) fn accepting(app: &App) -> Result<(), ApiError> {
    if app.supervised && app.child.borrow().phase == crate::supervisor::Phase::Draining {
        return Err(ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "this node is draining (nats-server in lame-duck mode before a stop or restart): publish to another node, or retry shortly",
            )
        });
    }
    store_trusted(app)?;
    if app.syncs.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        return Err(ApiError::unavailable(
            "the streams are not known yet (the daemon is starting); retry shortly",
        ));
    }
    Ok(())
}

/// Refuses a JetStream publish, or its ack, while the supervised
/// nats-server cannot be trusted with it: it failed to write its store (a
/// full disk) and has not been restarted since. nats-server 2.10 then
/// acknowledges messages under sequence numbers that are already taken; the
/// supervisor restarts it as soon as there is room (see
/// `Supervisor::needs_store_restart`).
fn store_trusted(app: &App) -> Result<(), ApiError> {
    if !app.child.borrow().store_write_failed {
        return Ok(());
    }
    Err(
        match crate::probe::store_space_problem(&app.config().data_dir()) {
            Some(full) => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                format!("nats-server cannot write its JetStream store: {full}"),
            ),
            None => ApiError::unavailable(
                "nats-server failed to write its JetStream store while the disk was full and is being restarted to read it back; retry shortly",
            ),
        },
    )
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

pub(super) fn acked(a: PublishAck) -> Outcome {
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
pub(super) async fn publish_js(
    app: &App,
    timeout: Duration,
    nats: &Nats,
    stream: &str,
    e: Entry,
) -> Result<Outcome, ApiError> {
    let (subject, msg) = js_message(e);
    let sent = Instant::now();
    let publish = nats.coalescer.publish(subject, msg);
    let a = answer(
        app,
        stream,
        timeout,
        app.while_connected(timeout, publish).await,
    )?;
    store_trusted(app)?;
    app.stats.ack_latency.observe_duration(sent.elapsed());
    Ok(acked(a))
}

/// Hands a JetStream publish to the connection; the returned future is the
/// ack (a batch keeps many in flight).
pub(super) async fn send_js(
    app: &App,
    timeout: Duration,
    nats: &Nats,
    stream: &str,
    e: Entry,
) -> Result<PublishAckFuture, ApiError> {
    let (subject, msg) = js_message(e);
    let sent = app
        .while_connected(timeout, nats.js.send_publish(subject, msg))
        .await;
    answer(app, stream, timeout, sent)
}

/// Awaits a batch entry's ack; `sent` is when it was handed over.
pub(super) async fn await_ack(
    app: &App,
    timeout: Duration,
    stream: &str,
    ack: PublishAckFuture,
    sent: Instant,
) -> Result<Outcome, ApiError> {
    let acked_at = app.while_connected(timeout, ack.into_future()).await;
    let a = answer(app, stream, timeout, acked_at)?;
    store_trusted(app)?;
    app.stats.ack_latency.observe_duration(sent.elapsed());
    Ok(acked(a))
}

/// What a JetStream round trip to `stream` answers: its value, or the
/// refusal or the lost connection as the client's error (507 when the
/// store's disk is full). An ack from a nats-server that failed a store
/// write meanwhile is not passed on by the callers (its sequence may be
/// wrong): the client retries, as for a lost ack.
fn answer<T>(
    app: &App,
    stream: &str,
    timeout: Duration,
    r: Result<Result<T, PublishError>, Lost>,
) -> Result<T, ApiError> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(err)) => Err(store_full(app, publish_error(stream, err))),
        Err(l) => Err(store_full(app, lost(stream, l, timeout))),
    }
}

pub(super) async fn send_core(
    timeout: Duration,
    nats: &Nats,
    e: Entry,
) -> Result<Outcome, ApiError> {
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
