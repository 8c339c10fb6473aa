//! POST .../consumers/{name}/ack|nak|term: ack tokens checked against the
//! stream and consumer in the URL, then sent back to nats-server.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::info::consumer_info;
use super::{api_timeout, Resp};
use crate::app::App;
use crate::http::body::{connected, json_body};
use crate::http::error::{json_response, ApiError};
use crate::subject;

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

/// The longest a name in an ack subject can be: nats-server refuses
/// longer stream and consumer names (`JSMaxNameLen`), and no JetStream
/// domain is longer in practice.
const MAX_NAME_LEN: usize = 255;

/// The longest ack token a fetch can hand out (ADR-15): the long form
/// `$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>.<random>`
/// with every name at its longest, every number at u64's 20 digits, the
/// account hash at nats-server's 8 characters and room for ADR-15's
/// trailing random token (a NUID, 22 characters).
pub(super) const fn max_ack_token_len() -> usize {
    const ACCOUNT_HASH: usize = 8;
    const RANDOM: usize = 22;
    const NUMBERS: usize = 5;
    const U64_DIGITS: usize = 20;
    let names = 3 * MAX_NAME_LEN + ACCOUNT_HASH + RANDOM;
    let numbers = NUMBERS * U64_DIGITS;
    // Nine dots between the ten tokens after the prefix.
    "$JS.ACK.".len() + names + numbers + 9
}

/// The largest ack, nak or term body to read: every token a fetch of
/// `fetch_max_batch` messages can hand out, at its longest, as a JSON
/// string with a comma and some whitespace (pretty-printed bodies), plus
/// the object around them and `delay_ms`. Never below 64 KiB, the limit
/// before it was derived. Read per request, so a reloaded
/// `api.fetch_max_batch` applies at once.
pub(super) fn ack_body_limit(fetch_max_batch: u32) -> usize {
    /// Two quotes, a comma, a line break and four spaces of indentation.
    const PER_TOKEN: usize = 8;
    /// `{"tokens": [], "delay_ms": 18446744073709551615}` and whitespace.
    const ENVELOPE: usize = 1024;
    (fetch_max_batch as usize)
        .saturating_mul(max_ack_token_len() + PER_TOKEN)
        .saturating_add(ENVELOPE)
        .max(64 << 10)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
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
pub(crate) async fn acknowledge(
    app: &App,
    req: Request<Incoming>,
    stream: &str,
    name: &str,
    kind: Kind,
) -> Result<Resp, ApiError> {
    let limit = ack_body_limit(app.config().api.fetch_max_batch);
    let r: AckRequest = json_body(app, req, limit, None, r#"{"tokens": ["..."]}"#).await?;
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
    fn the_longest_token_is_the_long_form_with_every_part_at_its_longest() {
        let name = "n".repeat(MAX_NAME_LEN);
        let n = u64::MAX;
        let longest = format!(
            "$JS.ACK.{name}.ABCDEFGH.{name}.{name}.{n}.{n}.{n}.{n}.{n}.{}",
            "r".repeat(22)
        );
        assert!(AckSubject::parse(&longest).is_some(), "a valid token");
        assert_eq!(longest.len(), max_ack_token_len());
        // The short form nats-server 2.9 and 2.10 hand out is far shorter.
        let short = format!("$JS.ACK.{name}.{name}.{n}.{n}.{n}.{n}.{n}");
        assert!(short.len() < max_ack_token_len());
    }

    #[test]
    fn an_ack_body_for_a_whole_fetch_of_longest_tokens_fits_the_limit() {
        let name = "n".repeat(MAX_NAME_LEN);
        let n = u64::MAX;
        let token = format!(
            "$JS.ACK.{name}.ABCDEFGH.{name}.{name}.{n}.{n}.{n}.{n}.{n}.{}",
            "r".repeat(22)
        );
        for batch in [1u32, 70, 1000, 5000] {
            let tokens = vec![token.clone(); batch as usize];
            let body = json!({"tokens": tokens, "delay_ms": u64::MAX});
            for text in [
                serde_json::to_string(&body).unwrap(),
                serde_json::to_string_pretty(&body).unwrap(),
            ] {
                assert!(
                    text.len() <= ack_body_limit(batch),
                    "batch {batch}: {} > {}",
                    text.len(),
                    ack_body_limit(batch)
                );
            }
            // The old fixed limit held only about 70 such tokens.
            if batch >= 1000 {
                assert!(ack_body_limit(batch) > 64 << 10);
            }
        }
        // A batch one bigger than configured may not fit: the limit follows
        // the setting rather than being a fixed large number.
        assert!(ack_body_limit(1000) < ack_body_limit(1001));
        assert_eq!(ack_body_limit(1), 64 << 10, "never below the old floor");
        assert_eq!(
            ack_body_limit(u32::MAX),
            (u32::MAX as usize) * (max_ack_token_len() + 8) + 1024
        );
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
