//! One publish entry, as a single publish and each batch entry bring it:
//! the request object parsed and checked (subject, headers, message
//! bytes kept as they came), the split of a batch body into entries, and
//! the answer a successful entry gets.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::Config;
use crate::http::body::too_large;
use crate::http::error::ApiError;
use crate::subject;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest<'a> {
    #[serde(borrow)]
    subject: Cow<'a, str>,
    #[serde(borrow)]
    message: &'a RawValue,
    #[serde(default)]
    headers: Option<BTreeMap<String, HeaderValues>>,
    #[serde(default, borrow)]
    msg_id: Option<Cow<'a, str>>,
}

/// A header's value: one string or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

/// One message ready for NATS. (`pub` for tests/fuzz.rs only.)
#[doc(hidden)]
pub struct Entry {
    pub subject: String,
    pub payload: Bytes,
    pub headers: Option<async_nats::HeaderMap>,
}

/// What a successful publish answers.
#[derive(Serialize)]
pub(super) struct Outcome {
    pub(super) success: bool,
    pub(super) persisted: bool,
    /// The guarantee the answer carries: the message is on this machine's
    /// disk (a one-replica stream, `nats.durability: sync`, and a sync that
    /// began after the ack). False for core publishes, `lazy`, replicated
    /// streams and stores the daemon cannot reach (see README, Durability).
    pub(super) durable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) stream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) duplicate: Option<bool>,
}

impl Outcome {
    pub(super) fn core() -> Outcome {
        Outcome {
            success: true,
            persisted: false,
            durable: false,
            stream: None,
            seq: None,
            duplicate: None,
        }
    }
}

/// Header names as NATS carries them: printable ASCII without ':' or
/// spaces; values on one line.
fn headers(map: BTreeMap<String, HeaderValues>) -> Result<async_nats::HeaderMap, ApiError> {
    let mut out = async_nats::HeaderMap::new();
    for (name, values) in map {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(ApiError::bad_request(
                "invalid_header",
                format!("header name {name:?}: use printable ASCII without ':' or spaces"),
            ));
        }
        let values = match values {
            HeaderValues::One(v) => vec![v],
            HeaderValues::Many(v) => v,
        };
        for v in values {
            if v.contains(['\r', '\n']) {
                return Err(ApiError::bad_request(
                    "invalid_header",
                    format!("header {name}: values may not contain line breaks"),
                ));
            }
            out.append(name.as_str(), v.as_str());
        }
    }
    Ok(out)
}

/// Whether `raw` is a JSON object without a `subject` key (asked only
/// once parsing the request failed, to name that case).
fn lacks_subject(raw: &[u8]) -> bool {
    serde_json::from_slice::<BTreeMap<Cow<'_, str>, serde::de::IgnoredAny>>(raw)
        .is_ok_and(|keys| !keys.contains_key("subject"))
}

/// Parses and checks one publish object; `raw` is a slice of `body`, so a
/// JSON message goes to NATS as the very bytes that came (no copy, no
/// re-serialisation). (`pub` for tests/fuzz.rs only.)
#[doc(hidden)]
pub fn parse_entry(cfg: &Config, body: &Bytes, raw: &[u8]) -> Result<Entry, ApiError> {
    let parsed: PublishRequest = serde_json::from_slice(raw).map_err(|e| {
        let code = if lacks_subject(raw) {
            "missing_subject"
        } else {
            "invalid_json"
        };
        ApiError::bad_request(
            code,
            format!(
                "invalid publish request: {e}; expected {{\"subject\": \"...\", \"message\": ...}}"
            ),
        )
    })?;
    let subj: &str = &parsed.subject;
    if let Err(e) = subject::check(subj, false) {
        let code = match e.fault {
            subject::Fault::Wildcard => "wildcard_subject",
            subject::Fault::Malformed => "invalid_subject",
        };
        return Err(ApiError::bad_request(code, e.message));
    }
    if subj.starts_with('$') {
        return Err(ApiError::bad_request(
            "reserved_subject",
            format!("subject {subj:?}: subjects starting with `$` are reserved for NATS itself"),
        ));
    }
    let text = parsed.message.get();
    let payload = if text.starts_with('"') {
        let s: String = serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
        Bytes::from(s)
    } else {
        let start = text.as_ptr() as usize - body.as_ptr() as usize;
        body.slice(start..start + text.len())
    };
    let max_payload = cfg.nats.max_payload;
    if payload.len() as u64 > max_payload.bytes() {
        return Err(too_large(format!(
            "the message is larger than max_payload ({max_payload})"
        )));
    }
    let mut hdrs = parsed.headers.map(headers).transpose()?;
    if let Some(id) = parsed.msg_id {
        if id.is_empty() || id.contains(['\r', '\n']) {
            return Err(ApiError::bad_request(
                "invalid_msg_id",
                "msg_id must be a non-empty string on one line",
            ));
        }
        hdrs.get_or_insert_with(async_nats::HeaderMap::new)
            .insert(async_nats::header::NATS_MESSAGE_ID, id.as_ref());
    }
    Ok(Entry {
        subject: parsed.subject.into_owned(),
        payload,
        headers: hdrs,
    })
}

/// The entries of a batch body, each a slice of it: a JSON array of
/// publish objects, or NDJSON (one per line; blank lines skipped).
/// (`pub` for tests/fuzz.rs only.)
#[doc(hidden)]
pub fn split_batch(body: &Bytes, ndjson: bool) -> Result<Vec<&[u8]>, ApiError> {
    if ndjson {
        return Ok(body
            .split(|&b| b == b'\n')
            .map(|l| l.trim_ascii())
            .filter(|l| !l.is_empty())
            .collect());
    }
    let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "not_a_batch",
            format!("the body is not a JSON array of publish objects: {e}"),
        )
    })?;
    Ok(items.into_iter().map(|r| r.get().as_bytes()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_publish_object_is_named_by_what_is_wrong_with_it() {
        let cfg = Config::default();
        let code = |raw: &str| {
            let body = Bytes::copy_from_slice(raw.as_bytes());
            parse_entry(&cfg, &body, &body).err().map(|e| e.code)
        };
        assert_eq!(code(r#"{"subject": "a.b", "message": 1}"#), None);
        assert_eq!(code(r#"{"message": 1}"#), Some("missing_subject"));
        assert_eq!(code(r#"{}"#), Some("missing_subject"));
        assert_eq!(
            code(r#"{"subject": null, "message": 1}"#),
            Some("invalid_json")
        );
        assert_eq!(code(r#"{"subject": "a.b"}"#), Some("invalid_json"));
        assert_eq!(code(r#"[1, 2]"#), Some("invalid_json"));
        assert_eq!(
            code(r#"{"subject": "a.*", "message": 1}"#),
            Some("wildcard_subject")
        );
        assert_eq!(
            code(r#"{"subject": "a..b", "message": 1}"#),
            Some("invalid_subject")
        );
        assert_eq!(
            code(r#"{"subject": "a*.b", "message": 1}"#),
            Some("invalid_subject")
        );
    }

    #[test]
    fn ndjson_entries_are_the_non_blank_lines() {
        let body = Bytes::from_static(b"{\"a\":1}\n\n  {\"b\":2}\r\n");
        let e = split_batch(&body, true).unwrap();
        assert_eq!(e, vec![&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]);
    }

    #[test]
    fn a_json_batch_must_be_an_array() {
        let e = split_batch(&Bytes::from_static(b"{\"subject\":\"a\"}"), false).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "not_a_batch"));
        let body = Bytes::from_static(b"[{\"x\":1}, 2]");
        let ok = split_batch(&body, false).unwrap();
        assert_eq!(ok, vec![&b"{\"x\":1}"[..], &b"2"[..]]);
    }

    #[test]
    fn header_names_and_values_are_checked() {
        let m = |k: &str, v: &str| BTreeMap::from([(k.to_string(), HeaderValues::One(v.into()))]);
        assert!(headers(m("X-Trace", "abc")).is_ok());
        assert_eq!(
            headers(m("bad name", "x")).unwrap_err().code,
            "invalid_header"
        );
        assert_eq!(headers(m("X:y", "x")).unwrap_err().code, "invalid_header");
        assert_eq!(
            headers(m("X", "a\r\nb")).unwrap_err().code,
            "invalid_header"
        );
        let many = BTreeMap::from([(
            "X-Tag".to_string(),
            HeaderValues::Many(vec!["a".into(), "b".into()]),
        )]);
        let h = headers(many).unwrap();
        assert_eq!(h.get_all("X-Tag").count(), 2);
    }
}
