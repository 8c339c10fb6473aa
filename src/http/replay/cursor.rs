//! The replay cursor (pure): where the next page starts, bound to the
//! stream and subject filter it was made for.
//!
//! A cursor is base64url (no padding) of four or five lines:
//! `r1`, the mode (`seq` or `lps`), the next stream sequence, the stream,
//! and the filter when there is one. Stream names and subjects cannot hold
//! a line break, so the text splits back unambiguously. It is opaque to
//! clients and not signed: forging one only reads the stream the client
//! may read anyway, and the checks below keep a cursor from being used
//! against another stream or filter by mistake.

use base64::Engine as _;

use crate::subject;

/// How a page continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every matching message from `next` on (start_seq, start_time, last
    /// and the default all become this after the first page).
    Seq,
    /// The last message of each matching subject, skipping those stored
    /// before `next` (handed out by earlier pages).
    LastPerSubject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub stream: String,
    pub filter: Option<String>,
    pub mode: Mode,
    /// The first stream sequence the next page may hand out.
    pub next: u64,
}

/// Why a cursor was refused; the message is the API error's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error(
        "cursor is not a replay cursor of this API (copy next_cursor from a replay answer as is)"
    )]
    Malformed,
    #[error("this cursor belongs to stream {0}")]
    OtherStream(String),
    #[error("this cursor was made for {made}, not {asked}")]
    OtherFilter { made: String, asked: String },
}

const MAGIC: &str = "r1";

fn describe(filter: Option<&str>) -> String {
    match filter {
        Some(f) => format!("subject={f}"),
        None => "no subject filter".to_string(),
    }
}

impl Cursor {
    pub fn encode(&self) -> String {
        let mode = match self.mode {
            Mode::Seq => "seq",
            Mode::LastPerSubject => "lps",
        };
        let mut text = format!("{MAGIC}\n{mode}\n{}\n{}", self.next, self.stream);
        if let Some(f) = &self.filter {
            text.push('\n');
            text.push_str(f);
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    /// The cursor in `text`, checked to belong to `stream` and, when the
    /// request names a filter too, to that filter.
    pub fn decode(
        text: &str,
        stream: &str,
        asked_filter: Option<&str>,
    ) -> Result<Cursor, CursorError> {
        let c = Self::parse(text).ok_or(CursorError::Malformed)?;
        if c.stream != stream {
            return Err(CursorError::OtherStream(c.stream));
        }
        if let Some(asked) = asked_filter {
            if c.filter.as_deref() != Some(asked) {
                return Err(CursorError::OtherFilter {
                    made: describe(c.filter.as_deref()),
                    asked: describe(Some(asked)),
                });
            }
        }
        Ok(c)
    }

    fn parse(text: &str) -> Option<Cursor> {
        if text.len() > 4096 {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let mut lines = text.split('\n');
        if lines.next()? != MAGIC {
            return None;
        }
        let mode = match lines.next()? {
            "seq" => Mode::Seq,
            "lps" => Mode::LastPerSubject,
            _ => return None,
        };
        let next: u64 = lines.next()?.parse().ok()?;
        // Sequences start at 1; an lps cursor skipping nothing holds 0.
        if next == 0 && mode == Mode::Seq {
            return None;
        }
        let stream = lines.next()?.to_string();
        subject::check_stream_name(&stream).ok()?;
        let filter = match lines.next() {
            None => None,
            Some(f) => {
                subject::check(f, true).ok()?;
                Some(f.to_string())
            }
        };
        if lines.next().is_some() {
            return None;
        }
        Some(Cursor {
            stream,
            filter,
            mode,
            next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(filter: Option<&str>, mode: Mode, next: u64) -> Cursor {
        Cursor {
            stream: "MARKET_DATA".into(),
            filter: filter.map(str::to_string),
            mode,
            next,
        }
    }

    #[test]
    fn a_cursor_comes_back_as_it_was_made() {
        for cur in [
            c(None, Mode::Seq, 1),
            c(Some("market.ticker.>"), Mode::Seq, u64::MAX),
            c(Some("market.*.btc"), Mode::LastPerSubject, 0),
            c(None, Mode::LastPerSubject, 42),
        ] {
            let text = cur.encode();
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{text} must need no escaping in a query string"
            );
            assert_eq!(
                Cursor::decode(&text, "MARKET_DATA", cur.filter.as_deref()),
                Ok(cur.clone())
            );
            // Without a filter in the request the cursor's own applies.
            assert_eq!(Cursor::decode(&text, "MARKET_DATA", None), Ok(cur));
        }
    }

    #[test]
    fn a_cursor_of_another_stream_or_filter_is_refused() {
        let text = c(Some("market.ticker.>"), Mode::Seq, 7).encode();
        assert_eq!(
            Cursor::decode(&text, "OTHER", None),
            Err(CursorError::OtherStream("MARKET_DATA".into()))
        );
        let e = Cursor::decode(&text, "MARKET_DATA", Some("market.trade.>")).unwrap_err();
        assert!(matches!(e, CursorError::OtherFilter { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "this cursor was made for subject=market.ticker.>, not subject=market.trade.>"
        );
        let unfiltered = c(None, Mode::Seq, 7).encode();
        assert!(Cursor::decode(&unfiltered, "MARKET_DATA", Some("market.>")).is_err());
    }

    #[test]
    fn garbage_is_malformed() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        for bad in [
            String::new(),
            "not base64!".to_string(),
            "AAAA".to_string(),
            b64("r2\nseq\n1\nS"),
            b64("r1\nall\n1\nS"),
            b64("r1\nseq\n0\nS"),
            b64("r1\nseq\n-1\nS"),
            b64("r1\nseq\nx\nS"),
            b64("r1\nseq\n1"),
            b64("r1\nseq\n1\nS.T"),
            b64("r1\nseq\n1\nS\nmarket..x"),
            b64("r1\nseq\n1\nS\nmarket.x\nextra"),
            "x".repeat(5000),
        ] {
            assert_eq!(
                Cursor::decode(&bad, "S", None),
                Err(CursorError::Malformed),
                "{bad}"
            );
        }
    }
}
