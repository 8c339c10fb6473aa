//! An event stream's bytes: one SSE event per message (encoded once per
//! subject, whatever the number of clients), `dropped` notices, the
//! heartbeat comment and the other named events. `data:` is always one
//! line of JSON.

use std::io::Write as _;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::http::message;

/// The comment that keeps an idle stream open through proxies.
pub const HEARTBEAT: Bytes = Bytes::from_static(b": heartbeat\n\n");

/// The longest `dropped` event (`dropped(u64::MAX)`): the room a client's
/// budget keeps for the notice that goes before its next message.
pub const DROPPED_MAX: usize = 192;

/// One SSE event; `data` is one line of JSON.
pub fn event(name: &str, id: Option<u64>, data: &Value) -> Bytes {
    let mut s = String::new();
    if let Some(id) = id {
        s.push_str(&format!("id: {id}\n"));
    }
    s.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    Bytes::from(s)
}

/// A `message` event (one line of JSON, as `event` writes it), written in
/// one allocation.
pub fn message(id: u64, m: &async_nats::Message) -> Bytes {
    let mut v = Vec::with_capacity(m.payload.len() + m.subject.len() + 64);
    let _ = write!(v, "id: {id}\nevent: message\ndata: ");
    let at = v.len();
    if serde_json::to_writer(&mut v, &message::Out::of(m)).is_err() {
        // Not reachable with the types Out holds; never half a line.
        v.truncate(at);
        v.extend_from_slice(b"null");
    }
    v.extend_from_slice(b"\n\n");
    Bytes::from(v)
}

/// A lower bound of `message(_, m).len()`, known without encoding: the
/// subject and the payload are in it whole (JSON as it came less any
/// surrounding whitespace, else as longer base64).
pub fn min_len(m: &async_nats::Message) -> usize {
    m.subject.len() + m.payload.trim_ascii().len()
}

/// Tells a client how many messages it did not get since the last notice.
pub fn dropped(n: u64) -> Bytes {
    event(
        "dropped",
        None,
        &json!({"dropped": n, "message": format!("{n} message(s) were dropped: they came faster than this client read them")}),
    )
}

/// Tells a client that the daemon's connection for event streams was down
/// for `down_for` and is back: what was published meanwhile on its
/// subject was not delivered (core NATS keeps nothing), and how much that
/// was nobody knows.
pub fn interrupted(down_for: std::time::Duration) -> Bytes {
    let ms = down_for.as_millis() as u64;
    event(
        "interrupted",
        None,
        &json!({"down_ms": ms, "message": format!("the daemon's connection to nats-server was down for {ms} ms and is back (nats-server restarted?): messages published on this subject meanwhile were not delivered")}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interruption_says_for_how_long() {
        let e = interrupted(std::time::Duration::from_millis(1234));
        let text = std::str::from_utf8(&e).unwrap();
        assert!(
            text.starts_with("event: interrupted\ndata: {\"down_ms\":1234,"),
            "{text}"
        );
        assert!(
            text.ends_with("}\n\n") && text.matches('\n').count() == 3,
            "{text}"
        );
    }

    #[test]
    fn events_are_one_json_line_each() {
        let e = event("message", Some(7), &json!({"data": "two\nlines"}));
        assert_eq!(
            &e[..],
            b"id: 7\nevent: message\ndata: {\"data\":\"two\\nlines\"}\n\n"
        );
    }

    #[test]
    fn a_message_event_carries_its_id_subject_and_payload() {
        let m = async_nats::Message {
            subject: "a.b".into(),
            reply: None,
            payload: Bytes::from_static(b"{\"p\": 1}"),
            headers: None,
            status: None,
            description: None,
            length: 8,
        };
        assert_eq!(
            &message(42, &m)[..],
            &b"id: 42\nevent: message\ndata: {\"subject\":\"a.b\",\"data\":{\"p\": 1}}\n\n"[..]
        );
        let m = async_nats::Message {
            payload: Bytes::from_static(b"not\njson"),
            ..m
        };
        assert_eq!(
            &message(43, &m)[..],
            &b"id: 43\nevent: message\ndata: {\"subject\":\"a.b\",\"data\":\"bm90Cmpzb24=\",\"data_encoding\":\"base64\"}\n\n"[..]
        );
    }

    #[test]
    fn the_least_size_of_a_message_event_is_never_more_than_its_size() {
        for payload in [
            &b""[..],
            b"  {\"a\": 1}\n\n",
            b"\x0c[1]\x0c",
            b"\x00\x01binary",
            b"\"x\"",
            b" 12 ",
        ] {
            let m = async_nats::Message {
                subject: "s.t".into(),
                reply: None,
                payload: Bytes::copy_from_slice(payload),
                headers: None,
                status: None,
                description: None,
                length: payload.len(),
            };
            assert!(min_len(&m) <= message(1, &m).len(), "{payload:?}");
        }
    }

    #[test]
    fn a_dropped_notice_fits_the_room_kept_for_it() {
        assert!(
            dropped(u64::MAX).len() <= DROPPED_MAX,
            "{}",
            dropped(u64::MAX).len()
        );
        let e = String::from_utf8(dropped(3).to_vec()).unwrap();
        assert!(
            e.starts_with("event: dropped\ndata: {\"dropped\":3,"),
            "{e}"
        );
    }
}
