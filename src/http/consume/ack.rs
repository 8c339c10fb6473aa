//! POST .../consumers/{name}/ack|nak|term: ack tokens checked against the
//! stream and consumer in the URL, then sent back to nats-server.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};

use super::info::{check_names, consumer_info};
use super::send::{send_all, send_unconfirmed, Answer};
use super::token::{ack_body_limit, AckSubject};
use super::{api_timeout, Resp};
use crate::app::{App, Nats};
use crate::http::body::{connected, parse_json, read_json_body};
use crate::http::error::{json_bytes, ApiError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Ack,
    Nak,
    Term,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRequest<'a> {
    /// Borrowed from the body where they need no unescaping (always, for
    /// tokens a fetch handed out).
    #[serde(borrow)]
    tokens: Vec<Cow<'a, str>>,
    /// nak only: redeliver no sooner than this.
    #[serde(default)]
    delay_ms: Option<u64>,
    /// false: answer once nats-server has received the tokens, without
    /// waiting for each one's confirmation (what a client library's plain
    /// `ack()` does).
    #[serde(default = "yes")]
    confirm: bool,
}

fn yes() -> bool {
    true
}

/// Checks every token before anything is sent: all belong to this stream
/// and consumer, or the request is refused.
fn check_tokens<S: AsRef<str>>(tokens: &[S], stream: &str, name: &str) -> Result<(), ApiError> {
    for (i, t) in tokens.iter().enumerate() {
        match AckSubject::parse(t.as_ref()) {
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

/// One token's outcome in the answer.
#[derive(Serialize)]
struct TokenResult<'a> {
    token: &'a str,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct AckResponse<'a> {
    success: bool,
    processed: usize,
    results: Vec<TokenResult<'a>>,
}

fn result_of<'a>(token: &'a str, a: Answer, timeout: Duration) -> TokenResult<'a> {
    let error = match a {
        Answer::Done => None,
        Answer::NoResponders => {
            Some("no responders: the consumer is gone or has no leader right now".to_string())
        }
        Answer::Failed(why) => Some(why),
        Answer::Silent => Some(format!("no answer from nats-server within {timeout:?}")),
    };
    TokenResult {
        token,
        ok: error.is_none(),
        error,
    }
}

/// POST .../ack, .../nak, .../term: one answer per token, in order. Each
/// is sent as a request, so `ok: true` means nats-server processed it
/// (JetStream's "double ack"), not merely that it left the daemon.
pub(crate) async fn acknowledge(
    app: &App,
    req: Request<Incoming>,
    stream: &str,
    name: &str,
    kind: Kind,
) -> Result<Resp, ApiError> {
    let limit = ack_body_limit(app.config().api.fetch_max_batch);
    let body = read_json_body(app, req, limit).await?;
    let r: AckRequest = parse_json(&body, r#"{"tokens": ["..."]}"#)?;
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
    check_names(stream, name)?;
    let nats = connected(app)?;
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
    let tokens: Vec<&str> = r.tokens.iter().map(|t| t.as_ref()).collect();
    if !r.confirm {
        return unconfirmed(app, &nats, stream, name, &tokens, payload).await;
    }
    let answers = match app
        .while_connected(
            timeout + Duration::from_secs(1),
            send_all(&nats.client, &tokens, payload, timeout),
        )
        .await
    {
        Ok(a) => a,
        Err(_) => {
            return Err(ApiError::unavailable(
                "the connection to nats-server dropped; some tokens may not be processed (an unacknowledged message is redelivered after ack_wait)",
            ))
        }
    };
    // Nobody listened to any token: the consumer (or its stream) is most
    // likely gone; its lookup says so with a 404, or else why.
    if answers.iter().all(|a| *a == Answer::NoResponders) {
        consumer_info(app, &nats, stream, name).await?;
    }
    let results: Vec<TokenResult> = tokens
        .iter()
        .zip(answers)
        .map(|(t, a)| result_of(t, a, timeout))
        .collect();
    let ok = results.iter().filter(|r| r.ok).count();
    let all = ok == results.len();
    let status = if all {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    let body = serde_json::to_vec(&AckResponse {
        success: all,
        processed: ok,
        results,
    })
    .unwrap_or_default();
    Ok(json_bytes(status, body))
}

/// `confirm: false`: the tokens go out and the answer (202) comes once
/// nats-server has received them all (a PING after the last one answered),
/// not once it processed each. A consumer not fetched from in the last
/// second is looked up first, so one that does not exist is still 404.
async fn unconfirmed(
    app: &App,
    nats: &Nats,
    stream: &str,
    name: &str,
    tokens: &[&str],
    payload: Bytes,
) -> Result<Resp, ApiError> {
    let now = std::time::Instant::now();
    if !nats.known_pulls.known(stream, name, now) {
        let info = consumer_info(app, nats, stream, name).await?;
        if info.config.deliver_subject.is_none() {
            nats.known_pulls.saw(stream, name, now);
        }
    }
    let timeout = api_timeout(app);
    match app
        .while_connected(timeout, send_unconfirmed(&nats.client, tokens, payload))
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return Err(ApiError::unavailable(why)),
        Err(_) => {
            return Err(ApiError::unavailable(
                "the connection to nats-server dropped before it received every token (an unacknowledged message is redelivered after ack_wait)",
            ))
        }
    }
    let body = serde_json::to_vec(&Received {
        success: true,
        received: tokens.len(),
    })
    .unwrap_or_default();
    Ok(json_bytes(StatusCode::ACCEPTED, body))
}

/// The answer to `confirm: false`.
#[derive(Serialize)]
struct Received {
    success: bool,
    /// Tokens nats-server received.
    received: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_belong_to_the_consumer_in_the_url() {
        let mine = "$JS.ACK.S.c.1.2.3.4.5".to_string();
        check_tokens(std::slice::from_ref(&mine), "S", "c").unwrap();
        let other = "$JS.ACK.S.d.1.2.3.4.5".to_string();
        let e = check_tokens(&[mine.clone(), other], "S", "c").unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "invalid_token"));
        assert!(e.message.contains("tokens[1]"), "{}", e.message);
        let e = check_tokens(&["foo.bar"], "S", "c").unwrap_err();
        assert_eq!(e.code, "invalid_token");
    }
}
