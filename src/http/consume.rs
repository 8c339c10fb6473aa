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

use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use async_nats::jetstream::consumer::{self, pull, Consumer, FromConsumer};
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
use async_nats::jetstream::ErrorCode;
use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt, TryStreamExt};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::body::{connected, json_body};
use super::error::{json_bytes, json_response, ApiError};
use super::message;
use crate::app::{App, Nats};
use crate::subject;

type Resp = Response<http_body_util::Full<Bytes>>;

/// What a fetch request without `batch` / `expires_ms` gets.
const DEFAULT_BATCH: u32 = 10;
const DEFAULT_EXPIRES_MS: u64 = 1000;
/// Bodies of fetch and ack requests are tiny; anything bigger is a mistake.
const FETCH_BODY_LIMIT: usize = 64 << 10;

/// Routes `{stream}/consumers...` (the part after `/api/v1/streams/`).
pub async fn route(app: &App, req: Request<Incoming>, rest: &str) -> Result<Resp, ApiError> {
    let parts: Vec<&str> = rest.split('/').collect();
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    let post = req.method() == Method::POST;
    match parts[..] {
        [stream, "consumers"] if get => list(app, stream).await,
        [stream, "consumers", name] if get && !name.is_empty() => detail(app, stream, name).await,
        [stream, "consumers", name, "fetch"] if post => fetch(app, req, stream, name).await,
        [stream, "consumers", name, verb @ ("ack" | "nak" | "term")] if post => {
            let kind = match verb {
                "ack" => Kind::Ack,
                "nak" => Kind::Nak,
                _ => Kind::Term,
            };
            acknowledge(app, req, stream, name, kind).await
        }
        [_, "consumers"] => Err(ApiError::method_not_allowed("GET, HEAD")),
        [_, "consumers", name] if !name.is_empty() => {
            Err(ApiError::method_not_allowed("GET, HEAD"))
        }
        [_, "consumers", _, "fetch" | "ack" | "nak" | "term"] => {
            Err(ApiError::method_not_allowed("POST"))
        }
        _ => Err(ApiError::not_found(format!(
            "no such endpoint: {} /api/v1/streams/{rest}",
            req.method()
        ))),
    }
}

/// Deadline for the JetStream API requests of one HTTP request.
fn api_timeout(app: &App) -> Duration {
    app.config().api.publish_timeout.get()
}

fn no_stream(stream: &str) -> ApiError {
    ApiError::not_found(format!("no stream named {stream:?}"))
}

fn no_consumer(stream: &str, name: &str) -> ApiError {
    ApiError::not_found(format!("stream {stream} has no consumer named {name:?}"))
}

/// One consumer's info, with 404 for an unknown stream or consumer.
async fn consumer_info(
    app: &App,
    nats: &Nats,
    stream: &str,
    name: &str,
) -> Result<consumer::Info, ApiError> {
    if subject::check_stream_name(stream).is_err() {
        return Err(no_stream(stream));
    }
    if subject::check_consumer_name(name).is_err() {
        return Err(no_consumer(stream, name));
    }
    let work = async {
        let handle = nats
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|_| no_stream(stream))?;
        handle
            .consumer_info(name)
            .await
            .map_err(|e| match e.kind() {
                ConsumerInfoErrorKind::StreamNotFound => no_stream(stream),
                ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::InvalidName => {
                    no_consumer(stream, name)
                }
                _ => ApiError::unavailable(format!("cannot get consumer {name} of {stream}: {e}")),
            })
    };
    let timeout = api_timeout(app);
    match app.while_connected(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::unavailable(format!(
            "JetStream did not answer about consumer {name} of {stream} within {timeout:?}"
        ))),
    }
}

fn rfc3339_nanos(nanos: i128) -> String {
    let t = if nanos >= 0 {
        UNIX_EPOCH + Duration::from_nanos(nanos.min(u64::MAX as i128) as u64)
    } else {
        UNIX_EPOCH
    };
    humantime::format_rfc3339_nanos(t).to_string()
}

fn seq_json(s: &consumer::SequenceInfo) -> Value {
    json!({
        "consumer_seq": s.consumer_sequence,
        "stream_seq": s.stream_sequence,
        "last_active": s.last_active.map(|t| rfc3339_nanos(t.unix_timestamp_nanos())),
    })
}

/// What GET .../consumers/{name} answers (and each entry of the list).
fn consumer_json(i: &consumer::Info, declared: bool) -> Value {
    let c = &i.config;
    let a = crate::jetstream::actual_consumer_from(c);
    json!({
        "stream": i.stream_name,
        "name": i.name,
        "declared": declared,
        "config": {
            "durable": c.durable_name.is_some(),
            "type": if c.deliver_subject.is_some() { "push" } else { "pull" },
            "deliver_subject": c.deliver_subject,
            "filter_subjects": a.filters,
            "deliver_policy": a.deliver_policy,
            "opt_start_seq": a.opt_start_seq,
            "ack_policy": a.ack_policy,
            "ack_wait_ms": c.ack_wait.as_millis() as u64,
            "max_deliver": c.max_deliver,
            "max_ack_pending": c.max_ack_pending,
        },
        "num_pending": i.num_pending,
        "num_ack_pending": i.num_ack_pending,
        "num_redelivered": i.num_redelivered,
        "num_waiting": i.num_waiting,
        "delivered": seq_json(&i.delivered),
        "ack_floor": seq_json(&i.ack_floor),
        "created": rfc3339_nanos(i.created.unix_timestamp_nanos()),
    })
}

fn is_declared(app: &App, stream: &str, name: &str) -> bool {
    app.config()
        .streams()
        .get(stream)
        .is_some_and(|s| s.consumers.contains_key(name))
}

// ------------------------------------------------------------ reading ----

async fn list(app: &App, stream: &str) -> Result<Resp, ApiError> {
    if subject::check_stream_name(stream).is_err() {
        return Err(no_stream(stream));
    }
    let nats = connected(app)?;
    let work = async {
        let s = nats
            .js
            .get_stream(stream)
            .await
            .map_err(|e| match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    no_stream(stream)
                }
                _ => ApiError::unavailable(format!("cannot get stream {stream}: {e}")),
            })?;
        s.consumers()
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| ApiError::unavailable(format!("cannot list consumers of {stream}: {e}")))
    };
    let timeout = api_timeout(app);
    let mut infos = match app.while_connected(timeout, work).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ApiError::unavailable(format!(
                "JetStream did not list the consumers of {stream} within {timeout:?}"
            )))
        }
    };
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    let list: Vec<Value> = infos
        .iter()
        .map(|i| consumer_json(i, is_declared(app, stream, &i.name)))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"stream": stream, "consumers": list}),
    ))
}

async fn detail(app: &App, stream: &str, name: &str) -> Result<Resp, ApiError> {
    let nats = connected(app)?;
    let info = consumer_info(app, &nats, stream, name).await?;
    Ok(json_response(
        StatusCode::OK,
        &consumer_json(&info, is_declared(app, stream, name)),
    ))
}

// -------------------------------------------------------------- fetch ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchRequest {
    #[serde(default)]
    batch: Option<u32>,
    #[serde(default)]
    expires_ms: Option<u64>,
}

#[derive(Serialize)]
struct OutMessage<'a> {
    #[serde(flatten)]
    message: message::Out<'a>,
    stream_seq: u64,
    consumer_seq: u64,
    timestamp: String,
    num_delivered: u64,
    num_pending: u64,
    ack_token: Option<&'a str>,
}

/// POST .../consumers/{name}/fetch: waits up to `expires_ms` for the first
/// message, then answers with what is there (at most `batch`).
async fn fetch(
    app: &App,
    req: Request<Incoming>,
    stream: &str,
    name: &str,
) -> Result<Resp, ApiError> {
    let expected = r#"{"batch": N, "expires_ms": M}"#;
    let r: FetchRequest = json_body(
        app,
        req,
        FETCH_BODY_LIMIT,
        Some(FetchRequest {
            batch: None,
            expires_ms: None,
        }),
        expected,
    )
    .await?;
    let api = app.config().api.clone();
    let batch = r.batch.unwrap_or(DEFAULT_BATCH.min(api.fetch_max_batch));
    if batch == 0 || batch > api.fetch_max_batch {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!(
                "batch must be between 1 and {} (api.fetch_max_batch), got {batch}",
                api.fetch_max_batch
            ),
        ));
    }
    let expires = Duration::from_millis(r.expires_ms.unwrap_or(DEFAULT_EXPIRES_MS))
        .min(api.fetch_max_wait.get());

    let nats = connected(app)?;
    let info = consumer_info(app, &nats, stream, name).await?;
    if let Some(ds) = &info.config.deliver_subject {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_a_pull_consumer",
            format!("consumer {name} of {stream} is a push consumer (it delivers to {ds}); only pull consumers can be fetched from"),
        ));
    }
    let cfg = pull::Config::try_from_consumer_config(info.config.clone()).map_err(|e| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_a_pull_consumer",
            format!("consumer {name} of {stream}: {e}"),
        )
    })?;
    let handle: Consumer<pull::Config> = Consumer::new(cfg, info, nats.js.clone());

    let messages = collect(app, &handle, batch as usize, expires).await?;
    app.stats
        .consumed
        .fetch_add(messages.len() as u64, Ordering::Relaxed);
    let out: Vec<OutMessage> = messages.iter().map(out_message).collect();
    let body = serde_json::to_vec(&FetchResponse {
        messages: &out,
        count: out.len(),
    })
    .unwrap_or_default();
    Ok(json_bytes(StatusCode::OK, body))
}

#[derive(Serialize)]
struct FetchResponse<'a> {
    messages: &'a [OutMessage<'a>],
    count: usize,
}

/// Pulls up to `batch` messages: the server answers at once with what it
/// has, or waits up to `expires` for the first message and then answers.
async fn collect(
    app: &App,
    handle: &Consumer<pull::Config>,
    batch: usize,
    expires: Duration,
) -> Result<Vec<async_nats::jetstream::Message>, ApiError> {
    let lost = app.connection_lost.notified();
    tokio::pin!(lost);
    lost.as_mut().enable();
    if !app.is_connected() {
        return Err(ApiError::unavailable("not connected to nats-server"));
    }
    let mut stream = handle
        .fetch()
        .max_messages(batch)
        .expires(expires)
        .messages()
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot send the pull request: {e}")))?;
    // The server ends the pull itself after `expires`; this only guards
    // against its answer getting lost.
    let deadline = tokio::time::Instant::now() + expires + Duration::from_secs(2);
    let mut out = Vec::new();
    loop {
        tokio::select! {
            m = stream.next() => match m {
                None => break,
                Some(Ok(m)) => out.push(m),
                Some(Err(e)) if out.is_empty() => return Err(pull_error(&e.to_string())),
                // What came is delivered; the rest waits for the next fetch.
                Some(Err(_)) => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = &mut lost => {
                if out.is_empty() {
                    return Err(ApiError::unavailable(
                        "the connection to nats-server dropped during the fetch",
                    ));
                }
                break;
            }
        }
    }
    Ok(out)
}

/// A pull the server refused (status 409 and friends: max_ack_pending
/// reached, consumer deleted meanwhile...). By its text: async-nats hands
/// the pull's status over only inside an io::Error's message.
fn pull_error(text: &str) -> ApiError {
    if text.contains("409") {
        ApiError::new(
            StatusCode::CONFLICT,
            "pull_refused",
            format!("JetStream refused the pull: {text}"),
        )
    } else {
        ApiError::unavailable(format!("the pull failed: {text}"))
    }
}

fn out_message(m: &async_nats::jetstream::Message) -> OutMessage<'_> {
    let reply = m.message.reply.as_ref().map(|r| r.as_str());
    let ack = reply.and_then(AckSubject::parse);
    OutMessage {
        message: message::Out::of(&m.message),
        stream_seq: ack.as_ref().map_or(0, |a| a.stream_seq),
        consumer_seq: ack.as_ref().map_or(0, |a| a.consumer_seq),
        timestamp: rfc3339_nanos(ack.as_ref().map_or(0, |a| a.timestamp_ns as i128)),
        num_delivered: ack.as_ref().map_or(1, |a| a.delivered),
        num_pending: ack.as_ref().map_or(0, |a| a.pending),
        ack_token: reply,
    }
}

// -------------------------------------------------------- ack / nak ----

/// A parsed JetStream ack subject (ADR-15): the 9-token form
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`
/// and the 11-or-more-token form with domain and account hash after
/// `$JS.ACK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckSubject<'a> {
    pub stream: &'a str,
    pub consumer: &'a str,
    pub delivered: u64,
    pub stream_seq: u64,
    pub consumer_seq: u64,
    pub timestamp_ns: u64,
    pub pending: u64,
}

impl<'a> AckSubject<'a> {
    pub fn parse(s: &'a str) -> Option<AckSubject<'a>> {
        let rest = s.strip_prefix("$JS.ACK.")?;
        if subject::check(s, false).is_err() {
            return None;
        }
        let t: Vec<&str> = rest.split('.').collect();
        let t = match t.len() {
            7 => &t[..],
            n if n >= 9 => &t[2..9],
            _ => return None,
        };
        let num = |i: usize| t[i].parse::<u64>().ok();
        Some(AckSubject {
            stream: t[0],
            consumer: t[1],
            delivered: num(2)?,
            stream_seq: num(3)?,
            consumer_seq: num(4)?,
            timestamp_ns: num(5)?,
            pending: num(6)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ack,
    Nak,
    Term,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRequest {
    tokens: Vec<String>,
    /// nak only: redeliver no sooner than this.
    #[serde(default)]
    delay_ms: Option<u64>,
}

/// Checks every token before anything is sent: all belong to this stream
/// and consumer, or the request is refused.
fn check_tokens(tokens: &[String], stream: &str, name: &str) -> Result<(), ApiError> {
    for (i, t) in tokens.iter().enumerate() {
        match AckSubject::parse(t) {
            Some(a) if a.stream == stream && a.consumer == name => {}
            Some(a) => {
                return Err(ApiError::bad_request(
                    "invalid_token",
                    format!(
                    "tokens[{i}] belongs to consumer {} of stream {}, not to {name} of {stream}",
                    a.consumer, a.stream
                ),
                ))
            }
            None => {
                return Err(ApiError::bad_request(
                    "invalid_token",
                    format!("tokens[{i}] is not an ack token from a fetch of this consumer"),
                ))
            }
        }
    }
    Ok(())
}

/// POST .../ack, .../nak, .../term: one answer per token, in order. Each
/// is sent as a request, so `ok: true` means nats-server processed it
/// (JetStream's "double ack"), not merely that it left the daemon.
async fn acknowledge(
    app: &App,
    req: Request<Incoming>,
    stream: &str,
    name: &str,
    kind: Kind,
) -> Result<Resp, ApiError> {
    let r: AckRequest =
        json_body(app, req, FETCH_BODY_LIMIT, None, r#"{"tokens": ["..."]}"#).await?;
    if r.delay_ms.is_some() && kind != Kind::Nak {
        return Err(ApiError::bad_request(
            "invalid_json",
            "delay_ms applies to nak only",
        ));
    }
    let max = app.config().api.fetch_max_batch as usize;
    if r.tokens.is_empty() || r.tokens.len() > max {
        return Err(ApiError::bad_request(
            "invalid_tokens",
            format!(
                "tokens must hold 1 to {max} tokens (api.fetch_max_batch), got {}",
                r.tokens.len()
            ),
        ));
    }
    let nats = connected(app)?;
    consumer_info(app, &nats, stream, name).await?;
    check_tokens(&r.tokens, stream, name)?;
    let payload: Bytes = match (kind, r.delay_ms) {
        (Kind::Ack, _) => Bytes::from_static(b"+ACK"),
        (Kind::Nak, None) => Bytes::from_static(b"-NAK"),
        (Kind::Nak, Some(ms)) => format!(
            "-NAK {{\"delay\":{}}}",
            Duration::from_millis(ms).as_nanos()
        )
        .into(),
        (Kind::Term, _) => Bytes::from_static(b"+TERM"),
    };
    let timeout = api_timeout(app);
    let sends: FuturesOrdered<_> = r
        .tokens
        .iter()
        .map(|t| {
            let client = nats.client.clone();
            let payload = payload.clone();
            let t = t.clone();
            async move {
                let answer =
                    tokio::time::timeout(timeout, client.request(t.clone(), payload)).await;
                match answer {
                    Ok(Ok(_)) => json!({"token": t, "ok": true}),
                    Ok(Err(e)) => json!({"token": t, "ok": false, "error": e.to_string()}),
                    Err(_) => json!({"token": t, "ok": false,
                        "error": format!("no answer from nats-server within {timeout:?}")}),
                }
            }
        })
        .collect();
    let results: Vec<Value> = match app
        .while_connected(timeout + Duration::from_secs(1), sends.collect())
        .await
    {
        Ok(r) => r,
        Err(_) => {
            return Err(ApiError::unavailable(
                "the connection to nats-server dropped; some tokens may not be processed (an unacknowledged message is redelivered after ack_wait)",
            ))
        }
    };
    let ok = results.iter().filter(|v| v["ok"] == true).count();
    let status = if ok == results.len() {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok(json_response(
        status,
        &json!({"success": ok == results.len(), "processed": ok, "results": results}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_in_both_forms_parse() {
        let v1 = "$JS.ACK.MARKET_DATA.market-consumer.2.17.5.1700000000000000000.3";
        let a = AckSubject::parse(v1).unwrap();
        assert_eq!(
            a,
            AckSubject {
                stream: "MARKET_DATA",
                consumer: "market-consumer",
                delivered: 2,
                stream_seq: 17,
                consumer_seq: 5,
                timestamp_ns: 1_700_000_000_000_000_000,
                pending: 3,
            }
        );
        let v2 = "$JS.ACK._.ACCHASH.MARKET_DATA.market-consumer.2.17.5.1700000000000000000.3.rnd";
        assert_eq!(AckSubject::parse(v2), Some(a));
        for bad in [
            "market.x",
            "$JS.ACK.MARKET_DATA.c.1.2.3",
            "$JS.ACK.MARKET_DATA.c.x.2.3.4.5",
            "$JS.ACK.MARKET_DATA.c.1.2.3.4.>",
            "$JS.ACK.MARKET_DATA.*.1.2.3.4.5",
            "$JS.ACK.MARKET_DATA.c.1.2.3.4.5 extra",
            "$JS.API.CONSUMER.DELETE.MARKET_DATA.c.1",
        ] {
            assert_eq!(AckSubject::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn tokens_must_belong_to_the_consumer_in_the_url() {
        let mine = "$JS.ACK.S.c.1.2.3.4.5".to_string();
        check_tokens(std::slice::from_ref(&mine), "S", "c").unwrap();
        let other = "$JS.ACK.S.d.1.2.3.4.5".to_string();
        let e = check_tokens(&[mine.clone(), other], "S", "c").unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "invalid_token"));
        assert!(e.message.contains("tokens[1]"), "{}", e.message);
        let e = check_tokens(&["foo.bar".into()], "S", "c").unwrap_err();
        assert_eq!(e.code, "invalid_token");
    }
}
