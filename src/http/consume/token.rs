//! Ack tokens: a fetched message's JetStream ack subject, parsed (pure),
//! and how long one can be, which sizes an ack request's body.

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
    /// Parses `s`, or None when it is not an ack subject. One pass over
    /// the bytes and no allocation: a fetch parses every message's subject
    /// and an ack checks every token it is given.
    pub fn parse(s: &'a str) -> Option<AckSubject<'a>> {
        let rest = s.strip_prefix("$JS.ACK.")?;
        if s.len() > subject::MAX_SUBJECT_LEN {
            return None;
        }
        if s.is_ascii() {
            // What subject::check refuses in a concrete ASCII subject:
            // whitespace, control characters and wildcards (empty tokens
            // are refused below).
            if s.bytes()
                .any(|b| b <= b' ' || b == 0x7f || b == b'*' || b == b'>')
            {
                return None;
            }
        } else if subject::check(s, false).is_err() {
            return None;
        }
        let mut t = [""; 9];
        let mut n = 0;
        for tok in rest.split('.') {
            if tok.is_empty() {
                return None;
            }
            if let Some(slot) = t.get_mut(n) {
                *slot = tok;
            }
            n += 1;
        }
        let t = match n {
            7 => &t[..7],
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
pub(crate) const fn max_ack_token_len() -> usize {
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
pub(crate) fn ack_body_limit(fetch_max_batch: u32) -> usize {
    /// Two quotes, a comma, a line break and four spaces of indentation.
    const PER_TOKEN: usize = 8;
    /// `{"tokens": [], "delay_ms": 18446744073709551615}` and whitespace.
    const ENVELOPE: usize = 1024;
    (fetch_max_batch as usize)
        .saturating_mul(max_ack_token_len() + PER_TOKEN)
        .saturating_add(ENVELOPE)
        .max(64 << 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
            "$JS.ACK.MARKET_DATA.c.1.2.3.4.5\u{a0}",
            "$JS.ACK.MARKET_DATA..1.2.3.4.5",
            "$JS.ACK.MARKET_DATA.c.1.2.3.4.5.",
            "$JS.ACK.MARKET_DATA.c.1.2.3.4.5.6",
            "$JS.ACK.MARKET_DATA.c.1.2.3.4.5\t",
            "$JS.ACK.MARKET_DATA.c.1.2.3.4.-5",
            "$JS.ACK.MARKET_DATA.c.1.2.3.4.18446744073709551616",
        ] {
            assert_eq!(AckSubject::parse(bad), None, "{bad}");
            // Never accepts what the full subject check refuses.
            if subject::check(bad, false).is_err() {
                assert_eq!(AckSubject::parse(bad), None, "{bad}");
            }
        }
        let long = format!(
            "$JS.ACK.S.c.1.2.3.4.5.{}",
            "x".repeat(subject::MAX_SUBJECT_LEN)
        );
        assert_eq!(AckSubject::parse(&long), None, "longer than any subject");
        // A name in another script is a valid subject token.
        let a = AckSubject::parse("$JS.ACK.S.c\u{e9}.1.2.3.4.5").unwrap();
        assert_eq!(a.consumer, "c\u{e9}");
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
}
