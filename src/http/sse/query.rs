//! The `subject` of GET /api/v1/subscribe's query string.

/// The value of `subject` in a query string, percent-decoded; `Err` with
/// the raw value when the decoded bytes are not UTF-8 (replacing them would
/// follow a subject the client never asked for).
pub fn subject_param(query: &str) -> Option<Result<String, &str>> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == "subject").then(|| percent_decode(v).ok_or(v))
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = match b.get(i + 1..i + 3) {
            Some(&[h, l]) if b[i] == b'%' => hex(h).zip(hex(l)).map(|(h, l)| h * 16 + l),
            _ => None,
        };
        match (escaped, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, c) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_comes_from_the_query_string_percent_decoded() {
        assert_eq!(
            subject_param("subject=market.binance.%3E"),
            Some(Ok("market.binance.>".into()))
        );
        assert_eq!(subject_param("x=1&subject=a.*&y=2"), Some(Ok("a.*".into())));
        assert_eq!(subject_param("subject=a.%2"), Some(Ok("a.%2".into())));
        assert_eq!(subject_param("subject=a.%C3%A9"), Some(Ok("a.é".into())));
        assert_eq!(subject_param("subjects=a"), None);
        assert_eq!(subject_param(""), None);
    }

    #[test]
    fn a_subject_that_is_not_utf8_once_decoded_is_refused_not_replaced() {
        assert_eq!(subject_param("subject=a.%FF"), Some(Err("a.%FF")));
        assert_eq!(subject_param("subject=a.%C3"), Some(Err("a.%C3")));
    }
}
