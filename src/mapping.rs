//! Subject mappings (pure): checking a source pattern and its
//! destinations the way nats-server will, and computing where a subject is
//! mapped, so the publish path knows which stream captures it.
//!
//! A destination refers to the source's `*` tokens as `$N` or
//! `{{wildcard(N)}}` (1-based), and may end in `>` when the source does.
//! Debian's nats-server (2.9) insists that every `*` of the source is used
//! in each destination; that rule is enforced here for every version, so a
//! config that checks also runs.

use std::fmt::Write as _;

use crate::subject;

/// One destination of a mapping, with its share of the messages in percent.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    pub subject: String,
    pub weight: u8,
}

/// A destination token.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    /// 1-based index of a `*` in the source.
    Wildcard(usize),
    /// The final `>`: the rest of the subject.
    Rest,
}

/// Parses one destination token: a literal, `$N`, `{{wildcard(N)}}` or `>`.
fn part(tok: &str) -> Result<Part, String> {
    if tok == ">" {
        return Ok(Part::Rest);
    }
    if tok == "*" {
        return Err(
            "a destination may not contain `*`; refer to the source's wildcards as $1, $2, ... or {{wildcard(1)}}"
                .into(),
        );
    }
    if let Some(n) = tok.strip_prefix('$') {
        return n
            .parse::<usize>()
            .map(Part::Wildcard)
            .map_err(|_| format!("`{tok}`: expected $ followed by a wildcard number"));
    }
    if let Some(inner) = tok.strip_prefix("{{").and_then(|t| t.strip_suffix("}}")) {
        let inner = inner.trim();
        let arg = inner
            .strip_prefix("wildcard(")
            .or_else(|| inner.strip_prefix("Wildcard("))
            .and_then(|a| a.strip_suffix(')'));
        return match arg.map(|a| a.trim().parse::<usize>()) {
            Some(Ok(n)) => Ok(Part::Wildcard(n)),
            _ => Err(format!(
                "`{tok}`: the only transform function supported is {{{{wildcard(N)}}}}"
            )),
        };
    }
    if tok.contains(['{', '}', '$']) {
        return Err(format!(
            "`{tok}`: a token is a literal, $N or {{{{wildcard(N)}}}}, not a mix"
        ));
    }
    Ok(Part::Literal(tok.to_string()))
}

fn parts(dest: &str) -> Result<Vec<Part>, String> {
    dest.split('.').map(part).collect()
}

/// Checks a mapping the way nats-server would accept it.
pub fn check(source: &str, destinations: &[Destination]) -> Result<(), String> {
    subject::check(source, true).map_err(|e| format!("source: {e}"))?;
    if source.starts_with('$') {
        return Err(format!(
            "source {source:?}: subjects starting with `$` belong to NATS itself"
        ));
    }
    if destinations.is_empty() {
        return Err("a mapping needs at least one destination".into());
    }
    let stars = source.split('.').filter(|t| *t == "*").count();
    let rest = source.ends_with('>');
    for d in destinations {
        let dest = &d.subject;
        if dest.is_empty() || dest.split('.').any(str::is_empty) {
            return Err(format!(
                "destination {dest:?} has an empty token (leading, trailing or double dot)"
            ));
        }
        if dest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "destination {dest:?} contains whitespace or a control character"
            ));
        }
        let ps = parts(dest).map_err(|e| format!("destination {dest:?}: {e}"))?;
        let mut used = vec![false; stars];
        for (i, p) in ps.iter().enumerate() {
            match p {
                Part::Wildcard(n) if *n == 0 || *n > stars => {
                    return Err(format!(
                        "destination {dest:?} refers to wildcard {n}, but the source {source:?} has {stars} `*` token(s)"
                    ))
                }
                Part::Wildcard(n) => used[n - 1] = true,
                Part::Rest if i + 1 != ps.len() => {
                    return Err(format!("destination {dest:?}: `>` must be the last token"))
                }
                Part::Rest if !rest => {
                    return Err(format!(
                        "destination {dest:?} ends in `>` but the source {source:?} does not"
                    ))
                }
                _ => {}
            }
        }
        if let Some(n) = used.iter().position(|u| !u) {
            return Err(format!(
                "destination {dest:?} does not use wildcard {} of the source {source:?}; nats-server requires every `*` to appear in each destination",
                n + 1
            ));
        }
        if rest && !matches!(ps.last(), Some(Part::Rest)) {
            return Err(format!(
                "destination {dest:?} must end in `>` like its source {source:?}, or the rest of the subject would be dropped"
            ));
        }
        if d.weight == 0 || d.weight > 100 {
            return Err(format!(
                "destination {dest:?}: weight must be between 1 and 100 (percent)"
            ));
        }
    }
    let total: u32 = destinations.iter().map(|d| d.weight as u32).sum();
    if total != 100 {
        return Err(format!(
            "the weights add up to {total}%, not 100%: nats-server would drop the other {}% of the messages",
            100i64 - total as i64
        ));
    }
    Ok(())
}

/// The subjects a destination can produce, as a pattern: `$N` and
/// `{{wildcard(N)}}` become `*` (`market.$2.$1` -> `market.*.*`).
pub fn pattern(dest: &str) -> Option<String> {
    let out: Vec<String> = parts(dest)
        .ok()?
        .into_iter()
        .map(|p| match p {
            Part::Literal(l) => l,
            Part::Wildcard(_) => "*".into(),
            Part::Rest => ">".into(),
        })
        .collect();
    Some(out.join("."))
}

/// Where `subject` goes under a mapping from `source` to `dest`, or None
/// when the source does not match it. Both must have passed `check`.
pub fn apply(source: &str, dest: &str, subject: &str) -> Option<String> {
    if !subject::matches(source, subject) {
        return None;
    }
    let src: Vec<&str> = source.split('.').collect();
    let subj: Vec<&str> = subject.split('.').collect();
    let stars: Vec<&str> = src
        .iter()
        .zip(&subj)
        .filter(|(p, _)| **p == "*")
        .map(|(_, s)| *s)
        .collect();
    let mut out = String::new();
    for p in parts(dest).ok()? {
        if !out.is_empty() {
            out.push('.');
        }
        match p {
            Part::Literal(l) => out.push_str(&l),
            Part::Wildcard(n) => out.push_str(stars.get(n - 1)?),
            Part::Rest => {
                let _ = write!(out, "{}", subj[src.len() - 1..].join("."));
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Vec<Destination> {
        vec![Destination {
            subject: s.into(),
            weight: 100,
        }]
    }

    #[test]
    fn a_destination_as_a_pattern() {
        assert_eq!(
            pattern("market.$2.$1.trade").as_deref(),
            Some("market.*.*.trade")
        );
        assert_eq!(pattern("m.{{wildcard(1)}}.>").as_deref(), Some("m.*.>"));
    }

    #[test]
    fn tokens_are_reordered_and_the_rest_kept() {
        assert_eq!(
            apply("legacy.*.*", "market.$2.$1.trade", "legacy.BTCUSDT.binance").as_deref(),
            Some("market.binance.BTCUSDT.trade")
        );
        assert_eq!(
            apply(
                "old.*.>",
                "market.{{wildcard(1)}}.>",
                "old.okx.ETHUSDT.orderbook"
            )
            .as_deref(),
            Some("market.okx.ETHUSDT.orderbook")
        );
        assert_eq!(apply("a.b", "c.d", "a.b").as_deref(), Some("c.d"));
        assert_eq!(apply("a.*", "c.$1", "x.y"), None);
    }

    #[test]
    fn good_mappings_check() {
        for (s, d) in [
            ("foo", "bar"),
            ("legacy.*.*", "market.$2.$1"),
            ("legacy.*.*", "market.{{wildcard(2)}}.{{wildcard(1)}}"),
            ("old.>", "new.>"),
            ("old.*.>", "new.$1.>"),
        ] {
            assert_eq!(check(s, &one(d)), Ok(()), "{s} -> {d}");
        }
        let split = vec![
            Destination {
                subject: "orders.v1.>".into(),
                weight: 90,
            },
            Destination {
                subject: "orders.v2.>".into(),
                weight: 10,
            },
        ];
        assert_eq!(check("orders.>", &split), Ok(()));
    }

    #[test]
    fn bad_mappings_say_what_is_wrong() {
        for (s, d, says) in [
            ("foo..bar", "x", "empty token"),
            ("$JS.API.>", "x.>", "belong to NATS"),
            ("a.*", "b", "does not use wildcard 1"),
            ("a.*", "b.$2", "refers to wildcard 2"),
            ("a.*", "b.*", "may not contain `*`"),
            ("a.*", "b.{{partition(3,1)}}", "only transform function"),
            ("a", "b.>", "ends in `>` but the source"),
            ("a.>", "b", "must end in `>`"),
            ("a.>", "b.>.c", "must be the last token"),
            ("a.*", "b.x$1", "not a mix"),
            ("a", "b c", "whitespace"),
        ] {
            let e = check(s, &one(d)).unwrap_err();
            assert!(e.contains(says), "{s} -> {d}: {e}");
        }
        let half = vec![Destination {
            subject: "b".into(),
            weight: 50,
        }];
        assert!(check("a", &half).unwrap_err().contains("add up to 50%"));
    }
}
