//! Consuming over HTTP: durable consumers' state, and pull/ack through the
//! daemon for clients that speak only HTTP.
//!
//! - `GET  /api/v1/streams/{stream}/consumers` and `.../consumers/{name}`
//! - `POST .../consumers/{name}/fetch` `{"batch", "expires_ms"}`
//! - `POST .../consumers/{name}/ack|nak|term` `{"tokens": [...]}`
//!
//! A fetched message's `ack_token` is its JetStream ack subject
//! (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream_seq>.<consumer_seq>.<ns>.<pending>`,
//! or the longer form with domain and account hash): nothing is kept in the
//! daemon, so a token can be acked by any later request, even after a
//! daemon restart, and a message the client never acks is redelivered by
//! JetStream after the consumer's `ack_wait`. A token is checked to be an
//! ack subject of *this* stream and consumer before anything is sent, so
//! the endpoint cannot be used to publish to arbitrary subjects.

use std::time::Duration;

use bytes::Bytes;
use hyper::Response;

use super::message::rfc3339_nanos;
use crate::app::App;

mod ack;
mod fetch;
mod info;
mod send;
mod token;

pub use token::AckSubject;

pub(crate) use ack::{acknowledge, Kind};
pub(crate) use fetch::fetch;
pub(crate) use info::{detail, list};

type Resp = Response<http_body_util::Full<Bytes>>;

/// Fetch bodies are tiny; anything bigger is a mistake. (Ack, nak and term
/// bodies carry up to `api.fetch_max_batch` tokens: `token::ack_body_limit`.)
const FETCH_BODY_LIMIT: usize = 64 << 10;

/// Deadline for the JetStream API requests of one HTTP request.
fn api_timeout(app: &App) -> Duration {
    app.config().api.publish_timeout.get()
}
