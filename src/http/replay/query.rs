//! Reading replay and latest-value requests (pure): the query string, the
//! subject or sequence in the path, and their bounds. Everything wrong is
//! a 400 naming the parameter.
//!
//! Percent-decoding: query keys and values and the `{subject}` path
//! segment are percent-decoded (`%3E` is `>`, `%2A` is `*`, `%2B` is
//! `+`); `+` itself stays `+` (this is RFC 3986, not an HTML form), so a
//! `start_time` offset like `+02:00` may be written as is. hyper refuses a
//! raw `>` (and space, `<`, ...) in a URL before any handler runs, so
//! clients must send `>` as `%3E`.

use std::collections::BTreeMap;

use async_nats::datetime::DateTime;

use super::cursor::{Cursor, Mode};
use crate::http::error::ApiError;
use crate::subject::{self, Fault};

/// A page's size when the request names none (or less under a smaller
/// `api.fetch_max_batch`).
pub const DEFAULT_LIMIT: u32 = 100;

/// Where a replay starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// No start given: the stream's first message.
    All,
    Seq(u64),
    /// From `start_time` (RFC 3339, normalised to UTC).
    Time(DateTime),
    /// The last N matching messages.
    Last(u64),
    LastPerSubject,
    Cursor(Cursor),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    pub start: Start,
    pub filter: Option<String>,
    pub limit: u32,
}

fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

/// `%XX` decoded (and the result UTF-8); `+` is kept.
pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The query's parameters, each once, each one of `allowed`.
fn params(
    query: Option<&str>,
    allowed: &[&'static str],
) -> Result<BTreeMap<&'static str, String>, ApiError> {
    let mut out = BTreeMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (percent_decode(k), percent_decode(v)) else {
            return Err(invalid(
                "invalid_query",
                format!("query parameter {pair:?} is not valid percent-encoded UTF-8"),
            ));
        };
        let Some(key) = allowed.iter().find(|a| **a == k) else {
            return Err(invalid(
                "invalid_query",
                format!(
                    "unknown query parameter {k:?}; this endpoint takes {}",
                    allowed.join(", ")
                ),
            ));
        };
        if out.insert(*key, v).is_some() {
            return Err(invalid(
                "invalid_query",
                format!("query parameter {k} is given more than once"),
            ));
        }
    }
    Ok(out)
}

fn limit(p: &BTreeMap<&str, String>, max: u32) -> Result<u32, ApiError> {
    let Some(v) = p.get("limit") else {
        return Ok(DEFAULT_LIMIT.min(max));
    };
    match v.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(invalid(
            "invalid_limit",
            format!(
                "limit must be a whole number from 1 to {max} (api.fetch_max_batch), got {v:?}"
            ),
        )),
    }
}

/// A subject filter: wildcards allowed.
fn filter(p: &BTreeMap<&str, String>) -> Result<Option<String>, ApiError> {
    let Some(f) = p.get("subject") else {
        return Ok(None);
    };
    subject::check(f, true).map_err(|e| invalid("invalid_subject", format!("subject: {e}")))?;
    Ok(Some(f.clone()))
}

/// A stream sequence: a whole number from 1.
pub fn seq(what: &str, v: &str) -> Result<u64, ApiError> {
    match v.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(invalid(
            "invalid_seq",
            format!("{what} must be a stream sequence (a whole number from 1), got {v:?}"),
        )),
    }
}

/// `start_time`: RFC 3339 with a `Z` or numeric offset. nats-server
/// compares times as int64 nanoseconds since 1970; a later time wraps
/// around (nats-server 2.9 then starts at the first message), so it is
/// refused.
fn time(v: &str) -> Result<DateTime, ApiError> {
    let t = async_nats::datetime::parse_rfc3339(v).map_err(|_| {
        invalid(
            "invalid_time",
            format!("start_time must be an RFC 3339 time like 2025-01-31T09:30:00Z or 2025-01-31T10:30:00.5+01:00, got {v:?}"),
        )
    })?;
    if t.unix_timestamp_nanos() > i64::MAX as i128 {
        return Err(invalid(
            "invalid_time",
            format!("start_time {v:?} is after 2262-04-11, the last time nats-server can compare"),
        ));
    }
    Ok(t)
}

fn flag(what: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(invalid(
            "invalid_query",
            format!("{what} must be true or false, got {v:?}"),
        )),
    }
}

const STARTS: [&str; 4] = ["start_seq", "start_time", "last", "last_per_subject"];

/// GET .../replay's query string.
pub fn replay(query: Option<&str>, stream: &str, max: u32) -> Result<Replay, ApiError> {
    let p = params(
        query,
        &[
            "start_seq",
            "start_time",
            "last",
            "last_per_subject",
            "subject",
            "limit",
            "cursor",
        ],
    )?;
    let limit = limit(&p, max)?;
    let filter = filter(&p)?;
    let given: Vec<&str> = STARTS
        .iter()
        .copied()
        .filter(|k| p.contains_key(k))
        .filter(|k| *k != "last_per_subject" || p[k] != "false" && p[k] != "0")
        .collect();
    if let Some(c) = p.get("cursor") {
        if let Some(k) = given.first() {
            return Err(invalid(
                "invalid_query",
                format!("{k} and cursor together: the cursor already says where the page starts; send it with subject and limit only"),
            ));
        }
        let cursor = Cursor::decode(c, stream, filter.as_deref())
            .map_err(|e| invalid("invalid_cursor", e.to_string()))?;
        return Ok(Replay {
            filter: cursor.filter.clone(),
            start: Start::Cursor(cursor),
            limit,
        });
    }
    if given.len() > 1 {
        return Err(invalid(
            "invalid_query",
            format!(
                "{} together: give one of {}",
                given.join(" and "),
                STARTS.join(", ")
            ),
        ));
    }
    let start = match given.first().copied() {
        None => Start::All,
        Some("start_seq") => Start::Seq(seq("start_seq", &p["start_seq"])?),
        Some("start_time") => Start::Time(time(&p["start_time"])?),
        Some("last") => Start::Last(match p["last"].parse::<u64>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(invalid(
                    "invalid_query",
                    format!("last must be a whole number from 1, got {:?}", p["last"]),
                ))
            }
        }),
        Some(_) => {
            flag("last_per_subject", &p["last_per_subject"])?;
            Start::LastPerSubject
        }
    };
    if let Some(v) = p.get("last_per_subject") {
        flag("last_per_subject", v)?;
    }
    Ok(Replay {
        start,
        filter,
        limit,
    })
}

/// GET .../latest's query string: the filter and the bound.
pub fn latest(query: Option<&str>, max: u32) -> Result<(Option<String>, u32), ApiError> {
    let p = params(query, &["subject", "limit"])?;
    Ok((filter(&p)?, limit(&p, max)?))
}

/// The `{subject}` of `.../subjects/{subject}/last`: percent-decoded, one
/// concrete subject.
pub fn path_subject(segment: &str, stream: &str) -> Result<String, ApiError> {
    let s = percent_decode(segment).ok_or_else(|| {
        invalid(
            "invalid_subject",
            format!("subject {segment:?} is not valid percent-encoded UTF-8"),
        )
    })?;
    match subject::check(&s, false) {
        Ok(()) => Ok(s),
        Err(e) if e.fault == Fault::Wildcard => Err(invalid(
            "invalid_subject",
            format!("subject {s:?} has a wildcard; this endpoint reads one subject. For the last message of every subject matching it use GET /api/v1/streams/{stream}/latest?subject={}", s.replace('>', "%3E")),
        )),
        Err(e) => Err(invalid("invalid_subject", e.to_string())),
    }
}

/// What a cursor for the first page of a start continues as.
pub fn mode_of(start: &Start) -> Mode {
    match start {
        Start::LastPerSubject => Mode::LastPerSubject,
        Start::Cursor(c) => c.mode,
        _ => Mode::Seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(q: &str) -> Replay {
        replay(Some(q), "S", 500).unwrap_or_else(|e| panic!("{q}: {}", e.message))
    }

    fn err(q: &str) -> ApiError {
        let e = replay(Some(q), "S", 500).expect_err(q);
        assert_eq!(e.status.as_u16(), 400, "{q}");
        e
    }

    #[test]
    fn percent_decoding_follows_rfc_3986() {
        assert_eq!(
            percent_decode("market.ticker.%3E").as_deref(),
            Some("market.ticker.>")
        );
        assert_eq!(percent_decode("a.%2a.b").as_deref(), Some("a.*.b"));
        assert_eq!(
            percent_decode("10:30+02:00").as_deref(),
            Some("10:30+02:00")
        );
        assert_eq!(
            percent_decode("10:30%2B02:00").as_deref(),
            Some("10:30+02:00")
        );
        assert_eq!(percent_decode("caf%C3%A9").as_deref(), Some("café"));
        for bad in ["%", "%4", "%zz", "%FF", "a%2"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn each_start_and_its_default() {
        assert_eq!(
            replay(None, "S", 500).unwrap(),
            Replay {
                start: Start::All,
                filter: None,
                limit: 100
            }
        );
        assert_eq!(
            replay(None, "S", 20).unwrap().limit,
            20,
            "capped by the max"
        );
        assert_eq!(ok("start_seq=7").start, Start::Seq(7));
        assert_eq!(ok("last=3&limit=2").start, Start::Last(3));
        assert_eq!(ok("last=3&limit=2").limit, 2);
        assert_eq!(ok("last_per_subject=true").start, Start::LastPerSubject);
        assert_eq!(ok("last_per_subject").start, Start::LastPerSubject);
        assert_eq!(
            ok("last_per_subject=false&start_seq=2").start,
            Start::Seq(2)
        );
        let f = ok("subject=market.ticker.%3E&start_seq=1");
        assert_eq!(f.filter.as_deref(), Some("market.ticker.>"));
        for (q, nanos) in [
            (
                "start_time=2025-01-31T09:30:00Z",
                1_738_315_800_000_000_000i128,
            ),
            (
                "start_time=2025-01-31T10:30:00.5+01:00",
                1_738_315_800_500_000_000,
            ),
            (
                "start_time=2025-01-31T10:30:00.5%2B01:00",
                1_738_315_800_500_000_000,
            ),
        ] {
            match ok(q).start {
                Start::Time(t) => assert_eq!(t.unix_timestamp_nanos(), nanos, "{q}"),
                s => panic!("{q}: {s:?}"),
            }
        }
    }

    #[test]
    fn bad_input_is_a_400_naming_the_parameter() {
        for (q, code, needle) in [
            ("start_seq=0", "invalid_seq", "start_seq"),
            ("start_seq=-1", "invalid_seq", "start_seq"),
            ("start_seq=abc", "invalid_seq", "start_seq"),
            ("start_seq=99999999999999999999", "invalid_seq", "start_seq"),
            ("start_time=yesterday", "invalid_time", "RFC 3339"),
            ("start_time=2025-01-31T09:30:00", "invalid_time", "RFC 3339"),
            (
                "start_time=2025-13-31T09:30:00Z",
                "invalid_time",
                "RFC 3339",
            ),
            ("start_time=2999-01-01T00:00:00Z", "invalid_time", "2262"),
            ("last=0", "invalid_query", "last"),
            ("last=x", "invalid_query", "last"),
            ("last_per_subject=maybe", "invalid_query", "true or false"),
            ("limit=0", "invalid_limit", "1 to 500"),
            ("limit=501", "invalid_limit", "1 to 500"),
            ("limit=ten", "invalid_limit", "limit"),
            ("subject=market..x", "invalid_subject", "empty token"),
            ("subject=market.>.x", "invalid_subject", "last token"),
            ("subject=", "invalid_subject", "empty"),
            ("start_seq=1&last=2", "invalid_query", "one of"),
            ("start_seq=1&start_seq=2", "invalid_query", "more than once"),
            (
                "start_sequence=1",
                "invalid_query",
                "unknown query parameter",
            ),
            ("subject=%zz", "invalid_query", "percent-encoded"),
            ("cursor=nope", "invalid_cursor", "not a replay cursor"),
        ] {
            let e = err(q);
            assert_eq!(e.code, code, "{q}: {}", e.message);
            assert!(e.message.contains(needle), "{q}: {}", e.message);
        }
    }

    #[test]
    fn a_cursor_carries_its_filter_and_takes_no_start() {
        let c = Cursor {
            stream: "S".into(),
            filter: Some("market.ticker.>".into()),
            mode: Mode::Seq,
            next: 9,
        };
        let text = c.encode();
        let r = ok(&format!("cursor={text}&limit=5"));
        assert_eq!(r.filter.as_deref(), Some("market.ticker.>"));
        assert_eq!(r.start, Start::Cursor(c.clone()));
        assert_eq!(r.limit, 5);
        ok(&format!("cursor={text}&subject=market.ticker.%3E"));
        let e = err(&format!("cursor={text}&subject=market.trade.%3E"));
        assert_eq!(e.code, "invalid_cursor");
        let e = err(&format!("cursor={text}&start_seq=3"));
        assert!(e.message.contains("start_seq and cursor"), "{}", e.message);
        let e = replay(Some(&format!("cursor={text}")), "OTHER", 500).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            ("invalid_cursor", "this cursor belongs to stream S")
        );
    }

    #[test]
    fn latest_takes_a_filter_and_a_bound_only() {
        assert_eq!(latest(None, 1000).unwrap(), (None, 100));
        assert_eq!(
            latest(Some("subject=market.*.btc&limit=3"), 1000).unwrap(),
            (Some("market.*.btc".to_string()), 3)
        );
        assert_eq!(
            latest(Some("start_seq=1"), 1000).unwrap_err().code,
            "invalid_query"
        );
        assert_eq!(
            latest(Some("limit=1001"), 1000).unwrap_err().code,
            "invalid_limit"
        );
    }

    #[test]
    fn a_path_subject_is_one_concrete_subject() {
        assert_eq!(
            path_subject("market.ticker.btcusdt", "S").unwrap(),
            "market.ticker.btcusdt"
        );
        assert_eq!(path_subject("a%2Eb", "S").unwrap(), "a.b");
        for (bad, needle) in [
            ("market.*", "GET /api/v1/streams/S/latest?subject=market.*"),
            ("market.%3E", "latest?subject=market.%3E"),
            ("market..x", "empty token"),
            ("a%20b", "whitespace"),
            ("%FF", "percent-encoded"),
        ] {
            let e = path_subject(bad, "S").unwrap_err();
            assert_eq!((e.status.as_u16(), e.code), (400, "invalid_subject"));
            assert!(e.message.contains(needle), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn a_sequence_is_a_whole_number_from_one() {
        assert_eq!(seq("seq", "18446744073709551615").unwrap(), u64::MAX);
        for bad in ["0", "", "1.5", "-3", "0x10", " 1"] {
            assert_eq!(seq("seq", bad).unwrap_err().code, "invalid_seq", "{bad}");
        }
    }
}
