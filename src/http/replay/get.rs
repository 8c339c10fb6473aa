//! One stored message by sequence, or the last one of a subject: JetStream's
//! `$JS.API.STREAM.MSG.GET.<stream>` (`seq` / `last_by_subj`). That API
//! request works on every stream of every nats-server release; direct get
//! needs `allow_direct` on the stream and is not used.

use async_nats::jetstream::stream::{LastRawMessageErrorKind, RawMessageError};
use async_nats::jetstream::ErrorCode;
use hyper::StatusCode;

use super::{entry_json, Resp};
use crate::app::App;
use crate::http::body::connected;
use crate::http::error::{json_bytes, ApiError};

/// What to read.
pub(super) enum Which {
    Seq(u64),
    LastOf(String),
}

pub(super) async fn get(app: &App, stream: &str, which: Which) -> Result<Resp, ApiError> {
    let nats = connected(app)?;
    let timeout = app.config().api.publish_timeout.get();
    let work = async {
        let s =
            nats.js.get_stream_no_info(stream).await.map_err(|e| {
                ApiError::unavailable(format!("cannot read from stream {stream}: {e}"))
            })?;
        let r = match &which {
            Which::Seq(seq) => s.get_raw_message(*seq).await,
            Which::LastOf(subject) => s.get_last_raw_message_by_subject(subject).await,
        };
        r.map_err(|e| get_error(stream, &which, e))
    };
    let m = match app.while_connected(timeout, work).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ApiError::unavailable(format!(
                "JetStream did not answer about stream {stream} within {timeout:?}"
            )))
        }
    };
    app.stats
        .consumed
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body = entry_json(
        m.subject.as_str(),
        &m.payload,
        Some(&m.headers),
        m.sequence,
        m.time.unix_timestamp_nanos(),
    );
    Ok(json_bytes(StatusCode::OK, body))
}

fn get_error(stream: &str, which: &Which, e: RawMessageError) -> ApiError {
    match e.kind() {
        LastRawMessageErrorKind::NoMessageFound => ApiError::not_found(match which {
            Which::Seq(seq) => format!(
                "stream {stream} holds no message {seq} (never stored, deleted, or expired)"
            ),
            Which::LastOf(subject) => format!("stream {stream} holds no message on {subject}"),
        }),
        LastRawMessageErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
            ApiError::not_found(format!("no stream named {stream:?}"))
        }
        LastRawMessageErrorKind::InvalidSubject => {
            ApiError::bad_request("invalid_subject", "not a valid subject")
        }
        _ => ApiError::unavailable(format!("cannot read from stream {stream}: {e}")),
    }
}
