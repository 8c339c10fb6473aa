//! Bearer tokens for the HTTP API (`api.tokens_file`): the file format
//! and the lookup.
//!
//! The file holds one token per line, `TOKEN`, `TOKEN read` or
//! `TOKEN write` (write is the default); `#` starts a comment line.
//! Parsing and lookup are pure; the only I/O is reading the file. A token
//! never leaves this module: not in errors, not in Debug output, not in
//! logs.

use std::fmt;
use std::path::Path;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
}

/// Shortest token accepted: a guessable secret protects nothing.
pub const MIN_TOKEN_LEN: usize = 16;

/// The tokens of one file.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    entries: Vec<(Vec<u8>, Access)>,
}

/// Never prints a token.
impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} entries, masked)", self.entries.len())
    }
}

/// A line of the tokens file that is wrong (1-based), and why. The
/// message never quotes the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

impl Tokens {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Tokens, LineError> {
        let mut entries: Vec<(Vec<u8>, Access)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |message: String| LineError { line, message };
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let mut words = l.split_whitespace();
            let token = words.next().unwrap_or_default();
            let access = match words.next() {
                None | Some("write") => Access::Write,
                Some("read") => Access::Read,
                Some(other) => {
                    return Err(err(format!(
                        "unknown access {other:?} after the token: write `read` or `write` (or nothing, which means write)"
                    )))
                }
            };
            if words.next().is_some() {
                return Err(err(
                    "a token contains no whitespace: write `TOKEN`, `TOKEN read` or `TOKEN write`"
                        .into(),
                ));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(err(format!(
                    "token is {} characters long; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)",
                    token.len()
                )));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err(
                    "a token may hold only printable ASCII characters (it travels in an HTTP header)"
                        .into(),
                ));
            }
            if entries.iter().any(|(t, _)| t == token.as_bytes()) {
                return Err(err("this token is listed twice".into()));
            }
            entries.push((token.as_bytes().to_vec(), access));
        }
        if entries.is_empty() {
            return Err(LineError {
                line: 0,
                message: "the file lists no token: every request would be refused".into(),
            });
        }
        Ok(Tokens { entries })
    }

    /// Reads and parses `path`; the error names the file and line.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| match e.line {
            0 => format!("{}: {}", path.display(), e.message),
            l => format!("{}:{l}: {}", path.display(), e.message),
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the presented token may do; None for an unknown one. Every
    /// entry is compared, each in constant time, so the answer's timing
    /// tells nothing about how much of a token was right.
    pub fn lookup(&self, presented: &[u8]) -> Option<Access> {
        let mut found = None;
        for (t, a) in &self.entries {
            if ct_eq(t, presented) {
                found = Some(*a);
            }
        }
        found
    }
}

/// Equality without an early exit on the first differing byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    // Keep the optimiser from turning the loop into a short-circuit.
    std::hint::black_box(diff) == 0
}

/// A tokens file's worth of tokens for unit tests: `W` writes, `R` reads.
#[cfg(test)]
pub(crate) mod fixture {
    use super::Tokens;

    pub const W: &str = "wwwwwwwwwwwwwwwwwwww";
    pub const R: &str = "rrrrrrrrrrrrrrrrrrrr";

    pub fn tokens() -> Tokens {
        Tokens::parse(&format!("# ops\n\n{W}\n  {R} read  \n")).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{tokens, R, W};
    use super::*;

    #[test]
    fn the_file_format_takes_comments_blank_lines_and_an_access_word() {
        let t = Tokens::parse(&format!(
            "# comment\n\n{W}\n{R} read\nxxxxxxxxxxxxxxxx write\n"
        ))
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.lookup(W.as_bytes()), Some(Access::Write));
        assert_eq!(t.lookup(R.as_bytes()), Some(Access::Read));
        assert_eq!(t.lookup(b"xxxxxxxxxxxxxxxx"), Some(Access::Write));
        assert_eq!(
            t.lookup(b"xxxxxxxxxxxxxxx"),
            None,
            "a prefix is not the token"
        );
        assert_eq!(t.lookup(b"xxxxxxxxxxxxxxxxx"), None, "nor is a longer one");
        assert_eq!(t.lookup(b""), None);
    }

    #[test]
    fn bad_lines_are_named_by_number_without_quoting_the_token() {
        let e = Tokens::parse(&format!("{W}\n\nshort\n")).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("at least 16"), "{}", e.message);
        assert!(!e.message.contains("short"));
        let e = Tokens::parse(&format!("# x\n{W} admin\n")).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("\"admin\""), "{}", e.message);
        assert!(!e.message.contains(W));
        let e = Tokens::parse(&format!("{W} read extra\n")).unwrap_err();
        assert!(e.message.contains("no whitespace"), "{}", e.message);
        let e = Tokens::parse(&format!("{W}\n{W} read\n")).unwrap_err();
        assert_eq!(
            (e.line, e.message.as_str()),
            (2, "this token is listed twice")
        );
        let e = Tokens::parse("# only comments\n\n").unwrap_err();
        assert!(e.message.contains("no token"), "{}", e.message);
        let e = Tokens::parse("ééééééééééééééééé\n").unwrap_err();
        assert!(e.message.contains("printable ASCII"), "{}", e.message);
    }

    #[test]
    fn debug_output_masks_the_tokens() {
        let shown = format!("{:?}", tokens());
        assert!(!shown.contains(W) && !shown.contains(R), "{shown}");
        assert!(shown.contains("2 entries"));
    }

    #[test]
    fn constant_time_equality_is_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"ab", b"abc"));
        assert!(!ct_eq(b"abc\0", b"abc"), "a padded zero is no match");
        assert!(ct_eq(b"", b""));
    }
}
