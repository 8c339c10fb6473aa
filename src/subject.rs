//! NATS subjects: validation, wildcard matching and overlap (pure).
//!
//! Used by config validation (stream subjects must not overlap; nats-server
//! would refuse the second stream at runtime), by subject mappings and by
//! the publish routing in `routing.rs`.

use std::fmt;

/// Longest subject the HTTP API accepts. nats-server has no hard limit, but
/// nothing real comes close and a limit keeps hostile input cheap.
pub const MAX_SUBJECT_LEN: usize = 1024;

/// Why a subject or name is refused; the message quotes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectError {
    pub fault: Fault,
    pub message: String,
}

/// What kind of wrong, for callers that answer the cases apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Not a valid subject or name at all.
    Malformed,
    /// A valid pattern, but a wildcard where a concrete subject is needed
    /// (publishing).
    Wildcard,
}

impl fmt::Display for SubjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, SubjectError> {
    Err(SubjectError {
        fault: Fault::Malformed,
        message: msg.into(),
    })
}

/// Checks a subject; `wildcards` allows `*` and a final `>` (subscriptions,
/// stream subjects, permissions) or forbids them (publishing).
pub fn check(subject: &str, wildcards: bool) -> Result<(), SubjectError> {
    if subject.is_empty() {
        return err("subject is empty");
    }
    if subject.len() > MAX_SUBJECT_LEN {
        return err(format!("subject is longer than {MAX_SUBJECT_LEN} bytes"));
    }
    if let Some(c) = subject
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return err(format!(
            "subject {subject:?} contains {c:?}; whitespace and control characters are not allowed"
        ));
    }
    let n = subject.split('.').count();
    for (i, tok) in subject.split('.').enumerate() {
        if tok.is_empty() {
            return err(format!(
                "subject {subject:?} has an empty token (leading, trailing or double dot)"
            ));
        }
        let wild = tok == "*" || tok == ">";
        if !wild && (tok.contains('*') || tok.contains('>')) {
            return err(format!(
                "subject {subject:?}: `*` and `>` must be whole tokens"
            ));
        }
        if wild && !wildcards {
            return Err(SubjectError {
                fault: Fault::Wildcard,
                message: format!(
                    "subject {subject:?} contains the wildcard {tok:?}; publish to a concrete subject"
                ),
            });
        }
        if tok == ">" && i + 1 != n {
            return err(format!("subject {subject:?}: `>` must be the last token"));
        }
    }
    Ok(())
}

/// Whether a subject (no wildcards) matches a pattern.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some(pt), Some(st)) if pt == "*" || pt == st => continue,
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some subject matches both patterns.
pub fn overlaps(a: &str, b: &str) -> bool {
    fn go(a: &[&str], b: &[&str]) -> bool {
        match (a.first(), b.first()) {
            (None, None) => true,
            (Some(&">"), Some(_)) | (Some(_), Some(&">")) => true,
            (Some(x), Some(y)) => (*x == "*" || *y == "*" || x == y) && go(&a[1..], &b[1..]),
            _ => false,
        }
    }
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    go(&a, &b)
}

/// Whether every subject `filter` matches is also matched by `pattern`
/// (a consumer's filter must lie within its stream's subjects).
pub fn within(filter: &str, pattern: &str) -> bool {
    let f: Vec<&str> = filter.split('.').collect();
    for (i, pt) in pattern.split('.').enumerate() {
        if pt == ">" {
            // `>` takes one token or more; so does a `>` in the filter.
            return i < f.len();
        }
        match f.get(i) {
            None | Some(&">") => return false,
            Some(_) if pt == "*" => continue,
            Some(ft) if *ft == pt => continue,
            Some(_) => return false,
        }
    }
    f.len() == pattern.split('.').count()
}

/// JetStream stream (and consumer) names: no whitespace, `.`, `*`, `>`,
/// path separators or control characters (they become subject tokens and
/// file names inside nats-server).
pub fn check_stream_name(name: &str) -> Result<(), SubjectError> {
    check_name("stream", name)
}

/// Durable consumer names: the same rules as stream names.
pub fn check_consumer_name(name: &str) -> Result<(), SubjectError> {
    check_name("consumer", name)
}

fn check_name(kind: &str, name: &str) -> Result<(), SubjectError> {
    if name.is_empty() {
        return err(format!("{kind} name is empty"));
    }
    if name.len() > 255 {
        return err(format!("{kind} name {name:?} is longer than 255 bytes"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return err(format!(
            "invalid {kind} name {name:?}: it contains {c:?} (names may not contain whitespace, `.`, `*`, `>`, `/` or `\\`)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_subjects() {
        for s in [
            "market.binance.BTCUSDT.trade",
            "test.message",
            "a",
            "market.okx.BTC-USDT.orderbook",
        ] {
            check(s, false).unwrap();
        }
        for s in ["market.>", "market.*.BTCUSDT.trade", ">", "*"] {
            check(s, true).unwrap();
        }
    }

    #[test]
    fn invalid_subjects_say_why() {
        assert!(check("", false).unwrap_err().message.contains("empty"));
        assert!(check("a..b", false)
            .unwrap_err()
            .message
            .contains("empty token"));
        assert!(check(".a", false)
            .unwrap_err()
            .message
            .contains("empty token"));
        assert!(check("a.", false)
            .unwrap_err()
            .message
            .contains("empty token"));
        assert!(check("a b", false)
            .unwrap_err()
            .message
            .contains("whitespace"));
        assert!(check("a\u{0}b", false).is_err());
        assert!(check("market.>", false)
            .unwrap_err()
            .message
            .contains("wildcard"));
        assert_eq!(
            check("market.*.x", false).unwrap_err().fault,
            Fault::Wildcard
        );
        assert_eq!(check("a.b*", false).unwrap_err().fault, Fault::Malformed);
        assert!(check("market.*.x", false)
            .unwrap_err()
            .message
            .contains("wildcard"));
        assert!(check("a.>.b", true)
            .unwrap_err()
            .message
            .contains("last token"));
        assert!(check("a.b*", true)
            .unwrap_err()
            .message
            .contains("whole tokens"));
        assert!(check(&"a".repeat(MAX_SUBJECT_LEN + 1), false).is_err());
    }

    #[test]
    fn matching() {
        assert!(matches("market.>", "market.binance.BTCUSDT.trade"));
        assert!(!matches("market.>", "market"));
        assert!(!matches("market.>", "marketx.a"));
        assert!(matches("market.*.x", "market.a.x"));
        assert!(!matches("market.*.x", "market.a.b.x"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(matches(">", "anything.at.all"));
    }

    #[test]
    fn overlap() {
        assert!(overlaps("market.>", "market.binance.>"));
        assert!(overlaps("market.*.x", "market.a.>"));
        assert!(overlaps("a.*", "*.b"));
        assert!(overlaps("a.b", "a.b"));
        assert!(!overlaps("market.>", "system.>"));
        assert!(!overlaps("a.>", "a"));
        assert!(!overlaps("a.*", "a.b.c"));
        assert!(overlaps(">", "x"));
        assert!(!overlaps("analytics.>", "metrics.>"));
    }

    #[test]
    fn filters_within_stream_subjects() {
        assert!(within("market.>", "market.>"));
        assert!(within("market.binance.>", "market.>"));
        assert!(within("market.*.BTCUSDT.trade", "market.>"));
        assert!(within("market.*", "market.>"));
        assert!(within("a.b", "a.*"));
        assert!(within("a.*", "a.*"));
        assert!(within("x", ">"));
        assert!(!within(">", "market.>"));
        assert!(!within("market", "market.>"));
        assert!(!within("market.>", "market.*"));
        assert!(!within("a.*", "a.b"));
        assert!(!within("a.b.c", "a.*"));
        assert!(!within("system.>", "market.>"));
    }

    #[test]
    fn stream_names() {
        check_stream_name("MARKET_DATA").unwrap();
        check_stream_name("custom-1").unwrap();
        assert!(check_stream_name("A.B")
            .unwrap_err()
            .message
            .contains("'.'"));
        assert!(check_stream_name("A B").is_err());
        assert!(check_stream_name("A/B").is_err());
        assert!(check_stream_name("").is_err());
        check_consumer_name("market-consumer").unwrap();
        assert!(check_consumer_name("a.b")
            .unwrap_err()
            .message
            .contains("invalid consumer name"));
    }
}
