//! Splitting a streamed NDJSON body into lines as its frames arrive, with
//! no bound on the body and a bound on each line: a frame's complete lines
//! are handed out as slices of it (no copy); only a line split across
//! frames is assembled, and a line past the limit is skipped (counted, not
//! kept) up to its newline.

use bytes::{Bytes, BytesMut};

/// What the splitter hands out next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Piece {
    /// A line, without its line break and surrounding whitespace; never
    /// blank (blank lines are counted and skipped).
    Line { number: u64, bytes: Bytes },
    /// A line longer than the limit, skipped; `len` bytes without its
    /// line break.
    TooLong { number: u64, len: usize },
}

/// The lines of a body whose frames are pushed one after the other.
pub(super) struct Splitter {
    limit: usize,
    /// What is left of the last frame pushed.
    chunk: Bytes,
    /// The start of a line that began in an earlier frame.
    partial: BytesMut,
    /// Bytes of the line being skipped because it is over the limit.
    skipping: Option<usize>,
    /// Number (1-based) of the line being read.
    line: u64,
}

impl Splitter {
    /// Lines of at most `limit` bytes (line break excluded).
    pub(super) fn new(limit: usize) -> Splitter {
        Splitter {
            limit,
            chunk: Bytes::new(),
            partial: BytesMut::new(),
            skipping: None,
            line: 1,
        }
    }

    /// Whether every pushed byte has been handed out or kept as the start
    /// of a line: the next frame may be pushed.
    pub(super) fn drained(&self) -> bool {
        self.chunk.is_empty()
    }

    /// Whether a line has begun and not ended.
    pub(super) fn mid_line(&self) -> bool {
        self.skipping.is_some() || !self.partial.is_empty()
    }

    /// The number of the line being read (the next one handed out, unless
    /// blank lines come first).
    pub(super) fn line(&self) -> u64 {
        self.line
    }

    /// The next frame; call only once [`Self::drained`].
    pub(super) fn push(&mut self, frame: Bytes) {
        debug_assert!(
            self.chunk.is_empty(),
            "pushed before the last frame was split"
        );
        self.chunk = frame;
    }

    /// The next complete line of what was pushed; None when more bytes are
    /// needed.
    pub(super) fn next_piece(&mut self) -> Option<Piece> {
        loop {
            if self.chunk.is_empty() {
                return None;
            }
            let Some(i) = self.chunk.iter().position(|&b| b == b'\n') else {
                let rest = std::mem::take(&mut self.chunk);
                match &mut self.skipping {
                    Some(len) => *len += rest.len(),
                    None if self.partial.len() + rest.len() > self.limit => {
                        self.skipping = Some(self.partial.len() + rest.len());
                        self.partial = BytesMut::new();
                    }
                    None => self.partial.extend_from_slice(&rest),
                }
                return None;
            };
            let with_break = self.chunk.split_to(i + 1);
            let number = self.line;
            self.line += 1;
            if let Some(len) = self.skipping.take() {
                return Some(Piece::TooLong {
                    number,
                    len: len + i,
                });
            }
            let line = if self.partial.is_empty() {
                with_break.slice(..i)
            } else {
                self.partial.extend_from_slice(&with_break[..i]);
                self.partial.split().freeze()
            };
            if let Some(p) = self.piece(number, line) {
                return Some(p);
            }
        }
    }

    /// At the end of the body: the last line when it has no line break.
    pub(super) fn finish(&mut self) -> Option<Piece> {
        debug_assert!(self.chunk.is_empty());
        let number = self.line;
        if let Some(len) = self.skipping.take() {
            return Some(Piece::TooLong { number, len });
        }
        let line = self.partial.split().freeze();
        self.piece(number, line)
    }

    fn piece(&self, number: u64, line: Bytes) -> Option<Piece> {
        if line.len() > self.limit {
            return Some(Piece::TooLong {
                number,
                len: line.len(),
            });
        }
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            return None;
        }
        Some(Piece::Line {
            number,
            bytes: line.slice_ref(trimmed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every piece of `frames`, pushed one after the other, then finished.
    fn split(limit: usize, frames: &[&[u8]]) -> Vec<Piece> {
        let mut s = Splitter::new(limit);
        let mut out = Vec::new();
        for f in frames {
            assert!(s.drained());
            s.push(Bytes::copy_from_slice(f));
            while let Some(p) = s.next_piece() {
                out.push(p);
            }
        }
        out.extend(s.finish());
        out
    }

    fn line(number: u64, text: &str) -> Piece {
        Piece::Line {
            number,
            bytes: Bytes::copy_from_slice(text.as_bytes()),
        }
    }

    #[test]
    fn lines_are_numbered_and_blank_ones_skipped_but_counted() {
        let got = split(100, &[b"{\"a\":1}\n\n  {\"b\":2}\r\n \t\r\n{\"c\":3}"]);
        assert_eq!(
            got,
            vec![
                line(1, "{\"a\":1}"),
                line(3, "{\"b\":2}"),
                line(5, "{\"c\":3}")
            ]
        );
    }

    #[test]
    fn a_line_split_anywhere_across_frames_comes_out_whole() {
        let body = b"{\"subject\":\"a.b\",\"message\":1}\r\n{\"x\":\"y\"}\n\n{\"z\":[1,2]}\n";
        let whole = split(100, &[body]);
        assert_eq!(whole.len(), 3);
        // Every way to cut the body in three.
        for i in 0..body.len() {
            for j in i..body.len() {
                let got = split(100, &[&body[..i], &body[i..j], &body[j..]]);
                assert_eq!(got, whole, "cut at {i} and {j}");
            }
        }
        // One byte a frame.
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(split(100, &bytes), whole);
    }

    #[test]
    fn a_line_in_one_frame_is_a_slice_of_it_not_a_copy() {
        let mut s = Splitter::new(100);
        let frame = Bytes::from_static(b"{\"a\":1}\n");
        s.push(frame.clone());
        let Some(Piece::Line { bytes, .. }) = s.next_piece() else {
            panic!("a line")
        };
        assert_eq!(bytes.as_ptr(), frame.as_ptr());
    }

    #[test]
    fn a_line_over_the_limit_is_skipped_without_being_kept_and_the_next_one_still_comes() {
        let long = "x".repeat(50);
        let body = format!("{{\"a\":1}}\n{long}\n{{\"b\":2}}\n{long}");
        let got = split(10, &[body.as_bytes()]);
        assert_eq!(
            got,
            vec![
                line(1, "{\"a\":1}"),
                Piece::TooLong { number: 2, len: 50 },
                line(3, "{\"b\":2}"),
                Piece::TooLong { number: 4, len: 50 },
            ]
        );
        // Across frames, too: the skipped line is never held.
        let frames: Vec<&[u8]> = body.as_bytes().chunks(7).collect();
        let mut s = Splitter::new(10);
        let mut pieces = Vec::new();
        for f in frames {
            s.push(Bytes::copy_from_slice(f));
            while let Some(p) = s.next_piece() {
                pieces.push(p);
            }
            assert!(s.partial.len() <= 10, "held {} bytes", s.partial.len());
        }
        pieces.extend(s.finish());
        assert_eq!(pieces, got);
        // Exactly at the limit is fine.
        assert_eq!(split(3, &[b"abc\nabcd\n"])[0], line(1, "abc"));
        assert_eq!(
            split(3, &[b"abc\nabcd\n"])[1],
            Piece::TooLong { number: 2, len: 4 }
        );
    }

    #[test]
    fn where_the_reader_is() {
        let mut s = Splitter::new(100);
        assert!(!s.mid_line());
        s.push(Bytes::from_static(b"{\"a\":1}\n{\"b\""));
        assert!(!s.drained());
        assert_eq!(s.next_piece(), Some(line(1, "{\"a\":1}")));
        assert_eq!(s.next_piece(), None);
        assert!(s.drained() && s.mid_line());
        assert_eq!(s.line(), 2);
        s.push(Bytes::from_static(b":2}\n"));
        assert_eq!(s.next_piece(), Some(line(2, "{\"b\":2}")));
        assert!(!s.mid_line());
        assert_eq!(s.finish(), None);
    }
}
