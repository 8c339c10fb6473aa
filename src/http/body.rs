//! The request helpers the POST handlers share: the body read within its
//! limits, its content type checked, a small JSON body parsed, and the
//! NATS client a handler about to publish or consume needs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{header, Request, StatusCode};
use serde::Deserialize;

use super::error::ApiError;
use crate::app::{App, Nats};

/// Whether the media type (parameters aside) is `want`, in any case.
pub(super) fn content_type_is(req: &Request<Incoming>, want: &str) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

pub(super) fn not_json() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the request as Content-Type: application/json",
    )
}

pub(super) fn too_large(what: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", what)
}

/// The body, at most `limit` bytes (413 past it, before reading it all
/// when Content-Length already tells). A client that stops sending for
/// `idle` gets 408: hyper bounds only the wait for headers, and a stalled
/// body would otherwise hold its connection (and a slot under
/// `api.max_connections`) forever.
pub(super) async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    idle: Duration,
    what: impl Fn() -> String,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|l| l > limit as u64) {
        return Err(too_large(what()));
    }
    let mut body = Limited::new(req.into_body(), limit);
    // The usual body is one frame that came with the headers: it is kept
    // as is (no copy), and no timer is armed for it.
    let mut first: Option<Bytes> = None;
    let mut more: Option<bytes::BytesMut> = None;
    loop {
        let next = match body.frame().now_or_never() {
            Some(f) => f,
            None => tokio::time::timeout(idle, body.frame())
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        format!("no body bytes for {idle:?} (api.header_read_timeout); send the body without pausing"),
                    )
                })?,
        };
        let frame = match next {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(e))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(too_large(what()))
            }
            Some(Err(e)) => {
                return Err(ApiError::bad_request(
                    "bad_body",
                    format!("cannot read the request body: {e}"),
                ))
            }
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        match (&first, &mut more) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let mut m = bytes::BytesMut::with_capacity(f.len() + data.len());
                m.extend_from_slice(f);
                m.extend_from_slice(&data);
                more = Some(m);
            }
            (Some(_), Some(m)) => m.extend_from_slice(&data),
        }
    }
    Ok(match (more, first) {
        (Some(m), _) => m.freeze(),
        (None, Some(f)) => f,
        (None, None) => Bytes::new(),
    })
}

/// The body of a request that must carry JSON, at most `limit` bytes:
/// refused unless it says `application/json`.
pub(super) async fn read_json_body(
    app: &App,
    req: Request<Incoming>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if !content_type_is(&req, "application/json") {
        return Err(not_json());
    }
    let idle = app.config().api.header_read_timeout.get();
    read_body(req, limit, idle, || {
        format!("the request body is larger than {limit} bytes")
    })
    .await
}

/// Parses a JSON body into `T`, which may borrow from it; 400 saying what
/// was `expected` otherwise.
pub(super) fn parse_json<'a, T: Deserialize<'a>>(
    body: &'a [u8],
    expected: &str,
) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("invalid request: {e}; expected {expected}"),
        )
    })
}

/// Reads an optional JSON body of at most `limit` bytes: empty means all
/// defaults; anything else must be `application/json`.
pub(super) async fn json_body<T: for<'de> Deserialize<'de>>(
    app: &App,
    req: Request<Incoming>,
    limit: usize,
    default: Option<T>,
    expected: &str,
) -> Result<T, ApiError> {
    let has_type = req.headers().contains_key(header::CONTENT_TYPE);
    if has_type && !content_type_is(&req, "application/json") {
        return Err(not_json());
    }
    let idle = app.config().api.header_read_timeout.get();
    let body = read_body(req, limit, idle, || {
        format!("the request body is larger than {limit} bytes")
    })
    .await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        if let Some(d) = default {
            return Ok(d);
        }
    }
    if !has_type {
        return Err(not_json());
    }
    parse_json(&body, expected)
}

/// The client, when connected; else 503 asking to retry shortly.
pub(super) fn connected(app: &App) -> Result<Arc<Nats>, ApiError> {
    app.connected_nats().ok_or_else(|| {
        ApiError::unavailable(
            "nats-server is not available right now (restarting or unreachable); retry shortly",
        )
    })
}
