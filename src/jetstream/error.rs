//! A failed JetStream call during reconciliation, and what it calls for.
//!
//! What to do next is read from async-nats' error kinds and, for an answer
//! of the JetStream API, from the server's numeric `err_code`, at the point
//! where the error is still a typed value; the message kept beside it is
//! only for logs and the report.

use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind, RequestError,
    RequestErrorKind,
};
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind};
use async_nats::jetstream::{self, ErrorCode};

/// What a failed JetStream API call during reconciliation calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Another node created or changed the stream at the same moment
    /// (err_code 10058 "stream name already in use", or a consumer's
    /// counterpart): read the streams again and plan again.
    Replan,
    /// No meta leader yet (an election, a timeout, 10008 "JetStream system
    /// temporarily unavailable"): wait a little and try again.
    Backoff,
    /// No server can take a replica now (10005 "no suitable peers for
    /// placement"): another round at once would only fail again, so the
    /// reconciliation reports it; the daemon tries again later with a
    /// growing pause and checks its meta group (see
    /// `cluster::meta_shortfall`).
    NoPeers,
    /// A real refusal (a bad config): report it.
    Fail,
}

/// A failed JetStream call: the message it is logged and reported with,
/// and what it calls for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JsError {
    pub retry: Retry,
    pub message: String,
}

impl JsError {
    /// `error` classified, reported as `message` (which usually names it).
    pub fn new(error: &impl Classify, message: String) -> Self {
        JsError {
            retry: error.retry(),
            message,
        }
    }

    /// A refusal that never reached JetStream (a config this server is
    /// too old for).
    pub fn fail(message: String) -> Self {
        JsError {
            retry: Retry::Fail,
            message,
        }
    }
}

/// The async-nats errors reconciliation meets, each classified by its kind.
pub trait Classify {
    fn retry(&self) -> Retry;
}

/// An answer of the JetStream API: by its `err_code`.
impl Classify for jetstream::Error {
    fn retry(&self) -> Retry {
        match self.error_code() {
            // Someone else's create won: 10058 (and 10130, its restore
            // form) for a stream; 10148, 10013 "consumer name already in
            // use" and 10105 "consumer already exists and is still
            // active" for a consumer.
            ErrorCode::STREAM_NAME_EXIST
            | ErrorCode::STREAM_NAME_EXIST_RESTORE_FAILED
            | ErrorCode::CONSUMER_ALREADY_EXISTS
            | ErrorCode::CONSUMER_NAME_EXIST
            | ErrorCode::CONSUMER_EXISTING_ACTIVE => Retry::Replan,
            // No meta leader (10008), not enough peers up to place the
            // replicas (10023: a node still starting), or 10163 "expected
            // last sequence per subject temporarily unavailable".
            ErrorCode::CLUSTER_NOT_AVAILABLE
            | ErrorCode::INSUFFICIENT_RESOURCES
            | ErrorCode::STREAM_EXPECTED_LAST_SEQ_PER_SUBJECT_NOT_READY => Retry::Backoff,
            // 10005 "no suitable peers for placement".
            ErrorCode::CLUSTER_NO_PEERS => Retry::NoPeers,
            _ => Retry::Fail,
        }
    }
}

/// A $JS.API request. Listing streams or consumers fails with this type
/// too: async-nats wraps the failed page request, or the server's error
/// answer, as `Other` with it as the source.
impl Classify for RequestError {
    fn retry(&self) -> Retry {
        match self.kind() {
            RequestErrorKind::TimedOut => Retry::Backoff,
            // async-nats gives this kind no source and shows it as
            // "requested JetStream resource does not exist", which the
            // text rules this replaces never took for "no responders":
            // a refusal, as it was.
            RequestErrorKind::NoResponders | RequestErrorKind::InvalidSubject => Retry::Fail,
            RequestErrorKind::Other => wrapped(self),
        }
    }
}

/// Creating (our raw request aside) or updating a stream.
impl Classify for CreateStreamError {
    fn retry(&self) -> Retry {
        match self.kind() {
            CreateStreamErrorKind::JetStream(e) => e.retry(),
            // JetStreamUnavailable is no responders to the request.
            CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => {
                Retry::Backoff
            }
            CreateStreamErrorKind::Response => wrapped(self),
            CreateStreamErrorKind::EmptyStreamName
            | CreateStreamErrorKind::InvalidStreamName
            | CreateStreamErrorKind::DomainAndExternalSet
            | CreateStreamErrorKind::NotFound
            | CreateStreamErrorKind::ResponseParse => Retry::Fail,
        }
    }
}

/// Creating or updating a consumer.
impl Classify for ConsumerError {
    fn retry(&self) -> Retry {
        match self.kind() {
            ConsumerErrorKind::JetStream(e) => e.retry(),
            ConsumerErrorKind::TimedOut => Retry::Backoff,
            ConsumerErrorKind::Request => wrapped(self),
            ConsumerErrorKind::InvalidConsumerType
            | ConsumerErrorKind::InvalidName
            | ConsumerErrorKind::Other => Retry::Fail,
        }
    }
}

/// A stream handle (`get_stream_no_info` only checks the name).
impl Classify for GetStreamError {
    fn retry(&self) -> Retry {
        match self.kind() {
            GetStreamErrorKind::JetStream(e) => e.retry(),
            GetStreamErrorKind::Request => wrapped(self),
            GetStreamErrorKind::EmptyName | GetStreamErrorKind::InvalidStreamName => Retry::Fail,
        }
    }
}

/// What the error async-nats wrapped into `error` calls for: the server's
/// answer or a request error; anything else (a connection gone, an answer
/// that does not parse) is a refusal.
fn wrapped(error: &dyn std::error::Error) -> Retry {
    let Some(source) = error.source() else {
        return Retry::Fail;
    };
    if let Some(e) = source.downcast_ref::<jetstream::Error>() {
        e.retry()
    } else if let Some(e) = source.downcast_ref::<RequestError>() {
        e.retry()
    } else if let Some(e) = source.downcast_ref::<async_nats::RequestError>() {
        match e.kind() {
            async_nats::RequestErrorKind::TimedOut | async_nats::RequestErrorKind::NoResponders => {
                Retry::Backoff
            }
            _ => Retry::Fail,
        }
    } else {
        Retry::Fail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer of the JetStream API as nats-server sends it.
    fn api(code: u64, err_code: u64, description: &str) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": code, "err_code": err_code, "description": description,
        }))
        .unwrap()
    }

    fn name_in_use() -> jetstream::Error {
        api(
            400,
            10058,
            "stream name already in use with a different configuration",
        )
    }

    fn no_leader() -> jetstream::Error {
        api(503, 10008, "JetStream system temporarily unavailable")
    }

    fn overlap() -> jetstream::Error {
        api(400, 10065, "subjects overlap with an existing stream")
    }

    #[test]
    fn a_lost_create_race_replans_for_streams_and_consumers() {
        assert_eq!(name_in_use().retry(), Retry::Replan);
        for (err_code, description) in [
            (10148, "consumer already exists"),
            (10013, "consumer name already in use"),
            (10105, "consumer already exists and is still active"),
            (10130, "stream name already in use, cannot restore"),
        ] {
            assert_eq!(api(400, err_code, description).retry(), Retry::Replan);
        }
    }

    #[test]
    fn no_meta_leader_and_too_few_peers_back_off() {
        assert_eq!(no_leader().retry(), Retry::Backoff);
        assert_eq!(
            api(503, 10023, "insufficient resources").retry(),
            Retry::Backoff
        );
        assert_eq!(
            api(
                503,
                10163,
                "expected last sequence per subject temporarily unavailable"
            )
            .retry(),
            Retry::Backoff
        );
    }

    #[test]
    fn no_peers_for_placement_is_told_apart_from_a_refusal() {
        // nats-server 2.10.27's answer while its meta group misses a peer.
        let e = api(500, 10005, "no suitable peers for placement");
        assert_eq!(e.retry(), Retry::NoPeers);
        assert_eq!(CreateStreamError::from(e).retry(), Retry::NoPeers);
    }

    #[test]
    fn a_refusal_of_the_config_fails_whatever_its_description_says() {
        assert_eq!(overlap().retry(), Retry::Fail);
        // The code decides, not words in the description.
        assert_eq!(
            api(400, 10052, "timeout unavailable already in use").retry(),
            Retry::Fail
        );
    }

    #[test]
    fn a_timed_out_request_backs_off_and_an_unanswered_one_fails() {
        assert_eq!(
            RequestError::new(RequestErrorKind::TimedOut).retry(),
            Retry::Backoff
        );
        let unanswered = RequestError::new(RequestErrorKind::NoResponders);
        assert_eq!(unanswered.retry(), Retry::Fail);
        // Why: nothing in what was logged said "no responders".
        assert_eq!(
            unanswered.to_string(),
            "requested JetStream resource does not exist"
        );
        assert_eq!(
            RequestError::new(RequestErrorKind::InvalidSubject).retry(),
            Retry::Fail
        );
    }

    #[test]
    fn a_failed_listing_is_classified_by_what_it_wraps() {
        // What Streams and Consumers yield: the page request's error, or
        // the server's answer inside one, wrapped as Other.
        let page = |inner: RequestError| RequestError::with_source(RequestErrorKind::Other, inner);
        let timed_out = RequestError::new(RequestErrorKind::TimedOut);
        assert_eq!(page(timed_out).retry(), Retry::Backoff);
        let answered = |e| RequestError::with_source(RequestErrorKind::Other, e);
        assert_eq!(page(answered(no_leader())).retry(), Retry::Backoff);
        assert_eq!(page(answered(name_in_use())).retry(), Retry::Replan);
        assert_eq!(page(answered(overlap())).retry(), Retry::Fail);
        assert_eq!(
            page(RequestError::new(RequestErrorKind::NoResponders)).retry(),
            Retry::Fail
        );
        // A connection gone or an answer that does not parse: a refusal.
        let broken = async_nats::RequestError::with_source(
            async_nats::RequestErrorKind::Other,
            "broken pipe",
        );
        assert_eq!(page(RequestError::from(broken)).retry(), Retry::Fail);
        assert_eq!(
            RequestError::new(RequestErrorKind::Other).retry(),
            Retry::Fail
        );
    }

    #[test]
    fn a_core_request_timing_out_or_unanswered_under_a_listing_backs_off() {
        for kind in [
            async_nats::RequestErrorKind::TimedOut,
            async_nats::RequestErrorKind::NoResponders,
        ] {
            let core = async_nats::RequestError::new(kind);
            let e = RequestError::with_source(RequestErrorKind::Other, core);
            assert_eq!(e.retry(), Retry::Backoff, "{e}");
        }
    }

    #[test]
    fn a_stream_update_backs_off_on_timeouts_and_no_responders_and_follows_the_server() {
        let update = CreateStreamError::new;
        assert_eq!(
            update(CreateStreamErrorKind::TimedOut).retry(),
            Retry::Backoff
        );
        assert_eq!(
            update(CreateStreamErrorKind::JetStreamUnavailable).retry(),
            Retry::Backoff
        );
        assert_eq!(
            CreateStreamError::from(RequestError::new(RequestErrorKind::NoResponders)).retry(),
            Retry::Backoff
        );
        assert_eq!(CreateStreamError::from(no_leader()).retry(), Retry::Backoff);
        assert_eq!(
            CreateStreamError::from(name_in_use()).retry(),
            Retry::Replan
        );
        assert_eq!(CreateStreamError::from(overlap()).retry(), Retry::Fail);
        // 10059 becomes NotFound: a refusal.
        assert_eq!(
            CreateStreamError::from(api(404, 10059, "stream not found")).retry(),
            Retry::Fail
        );
        let other = RequestError::with_source(RequestErrorKind::Other, "bad answer");
        assert_eq!(CreateStreamError::from(other).retry(), Retry::Fail);
        assert_eq!(
            update(CreateStreamErrorKind::InvalidStreamName).retry(),
            Retry::Fail
        );
    }

    #[test]
    fn a_consumer_create_follows_the_server_and_backs_off_on_a_timeout() {
        let consumer = |e| ConsumerError::new(ConsumerErrorKind::JetStream(e));
        assert_eq!(
            consumer(api(400, 10148, "consumer already exists")).retry(),
            Retry::Replan
        );
        assert_eq!(consumer(no_leader()).retry(), Retry::Backoff);
        assert_eq!(consumer(overlap()).retry(), Retry::Fail);
        assert_eq!(
            ConsumerError::from(RequestError::new(RequestErrorKind::TimedOut)).retry(),
            Retry::Backoff
        );
        assert_eq!(
            ConsumerError::from(RequestError::new(RequestErrorKind::NoResponders)).retry(),
            Retry::Fail
        );
        assert_eq!(
            ConsumerError::new(ConsumerErrorKind::InvalidName).retry(),
            Retry::Fail
        );
    }

    #[test]
    fn an_invalid_stream_name_fails() {
        assert_eq!(
            GetStreamError::new(GetStreamErrorKind::InvalidStreamName).retry(),
            Retry::Fail
        );
        assert_eq!(
            GetStreamError::new(GetStreamErrorKind::JetStream(no_leader())).retry(),
            Retry::Backoff
        );
    }

    #[test]
    fn a_js_error_shows_its_message_alone() {
        let e = JsError::new(&no_leader(), format!("jetstream error: {}", no_leader()));
        assert_eq!(e.retry, Retry::Backoff);
        assert_eq!(
            e.to_string(),
            "jetstream error: JetStream system temporarily unavailable (code 503, error code 10008)"
        );
        assert_eq!(
            JsError::fail("too old".into()),
            JsError {
                retry: Retry::Fail,
                message: "too old".into()
            }
        );
    }
}
