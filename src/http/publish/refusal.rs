//! What a failed JetStream publish answers: classified by async-nats'
//! error kind and nats-server's JetStream error code, never by its text.

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use hyper::StatusCode;

use crate::http::body::too_large;
use crate::http::error::ApiError;

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
}
