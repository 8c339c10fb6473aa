//! A NATS message as the HTTP API hands it out (fetch answers and event
//! stream events alike): the payload verbatim when it is JSON, else base64
//! with `"data_encoding": "base64"`, and the headers as name -> value or
//! list of values.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;
use serde_json::value::RawValue;

/// A payload: the JSON itself (not re-serialised, so key order and number
/// text stay as published), or base64.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Data<'a> {
    Json(&'a RawValue),
    Base64(String),
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum HeaderOut {
    One(String),
    Many(Vec<String>),
}

/// A payload and, when it is not JSON, how it is encoded.
pub fn data(payload: &[u8]) -> (Data<'_>, Option<&'static str>) {
    match serde_json::from_slice::<&RawValue>(payload) {
        Ok(raw) => (Data::Json(raw), None),
        Err(_) => (Data::Base64(base64(payload)), Some("base64")),
    }
}

/// Headers, or None when there are none.
pub fn headers(h: Option<&async_nats::HeaderMap>) -> Option<BTreeMap<String, HeaderOut>> {
    h.filter(|h| !h.is_empty()).map(|h| {
        h.iter()
            .map(|(k, vs)| {
                let mut vs: Vec<String> = vs.iter().map(|v| v.as_str().to_string()).collect();
                let v = if vs.len() == 1 {
                    HeaderOut::One(vs.remove(0))
                } else {
                    HeaderOut::Many(vs)
                };
                (k.to_string(), v)
            })
            .collect()
    })
}

/// A message's subject, payload and headers as the API shows them (an
/// event's data; flattened into a fetch answer's entry).
#[derive(Serialize)]
pub struct Out<'a> {
    pub subject: &'a str,
    pub data: Data<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, HeaderOut>>,
}

impl<'a> Out<'a> {
    pub fn of(m: &'a async_nats::Message) -> Out<'a> {
        Out::parts(m.subject.as_str(), &m.payload, m.headers.as_ref())
    }

    /// From a message's parts: a stored message read back by sequence or
    /// subject has no `async_nats::Message` around them.
    pub fn parts(
        subject: &'a str,
        payload: &'a [u8],
        h: Option<&async_nats::HeaderMap>,
    ) -> Out<'a> {
        let (data, data_encoding) = data(payload);
        Out {
            subject,
            data,
            data_encoding,
            headers: headers(h),
        }
    }
}

/// A time as RFC 3339 with nanoseconds in UTC (`timestamp` fields);
/// the epoch for a time before it.
pub fn rfc3339_nanos(nanos: i128) -> String {
    Rfc3339Nanos(nanos).to_string()
}

/// Nanoseconds since the epoch that display (and serialize) as
/// `rfc3339_nanos` does, without a String of their own: a fetch writes one
/// per message.
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339Nanos(pub i128);

impl std::fmt::Display for Rfc3339Nanos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::time::{Duration, UNIX_EPOCH};
        let t = if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_nanos(self.0.min(u64::MAX as i128) as u64)
        } else {
            UNIX_EPOCH
        };
        humantime::format_rfc3339_nanos(t).fmt(f)
    }
}

impl Serialize for Rfc3339Nanos {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Standard base64 with padding (RFC 4648 section 4).
pub fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_serializes_as_its_text() {
        for n in [0i128, -5, 1_700_000_000_123_456_789, i128::MAX] {
            let json = serde_json::to_string(&Rfc3339Nanos(n)).unwrap();
            assert_eq!(json, format!("\"{}\"", rfc3339_nanos(n)));
        }
        assert_eq!(
            rfc3339_nanos(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(rfc3339_nanos(-5), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn json_payloads_are_kept_verbatim() {
        let (d, enc) = data(br#"{"b":1,"a":2.50}"#);
        assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"b":1,"a":2.50}"#);
        assert_eq!(enc, None);
        let (d, enc) = data(b"plain text");
        assert_eq!(serde_json::to_string(&d).unwrap(), r#""cGxhaW4gdGV4dA==""#);
        assert_eq!(enc, Some("base64"));
    }
}
