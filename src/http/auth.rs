//! Bearer tokens for the HTTP API (`api.tokens_file`).
//!
//! The file holds one token per line, `TOKEN`, `TOKEN read` or
//! `TOKEN write` (write is the default); `#` starts a comment line. A
//! `read` token may call every GET; mutating endpoints (every method but
//! GET and HEAD) need a `write` token. GET /health stays open so liveness
//! probes need no secret; the other GETs need a token only with
//! `api.tokens_for_reads: true`.
//!
//! Parsing and the access decision are pure; the only I/O is reading the
//! file. A token never leaves this module: not in errors, not in Debug
//! output, not in logs.

use std::fmt;
use std::path::Path;

use hyper::{Method, StatusCode};

use super::error::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
}

/// Shortest token accepted: a guessable secret protects nothing.
pub const MIN_TOKEN_LEN: usize = 16;

/// The realm in `WWW-Authenticate`.
pub const CHALLENGE: &str = "Bearer realm=\"marketprism-broker\"";

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

/// What the API enforces, loaded from the files the config names; the
/// daemon holds one and swaps it on reload.
#[derive(Debug, Default)]
pub struct Security {
    /// None: no `api.tokens_file`, every request is let through.
    pub tokens: Option<Tokens>,
    /// None: plain HTTP.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl Security {
    /// Reads `api.tokens_file` and `api.tls`; the error names the key.
    pub fn load(c: &crate::config::Config) -> Result<Security, String> {
        let tokens = match &c.api.tokens_file {
            Some(p) => Some(Tokens::load(p).map_err(|e| format!("api.tokens_file: {e}"))?),
            None => None,
        };
        let tls = match &c.api.tls {
            Some(t) => Some(
                super::tls::server_config(t)
                    .map_err(|e| format!("api.tls.{}: {}", e.key, e.message))?,
            ),
            None => None,
        };
        Ok(Security { tokens, tls })
    }

    /// One line for the log: what is enforced, never a token. None when
    /// nothing is (no tokens file, no TLS).
    pub fn describe(&self) -> Option<String> {
        let tokens = self
            .tokens
            .as_ref()
            .map(|t| format!("{} API token(s)", t.len()));
        let tls = self.tls.as_ref().map(|_| "TLS certificate".to_string());
        let parts: Vec<String> = tokens.into_iter().chain(tls).collect();
        (!parts.is_empty()).then(|| parts.join(", "))
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

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Nothing,
    At(Access),
}

/// The access `method path` needs. GET and HEAD read; everything else
/// (POST, PUT, DELETE, ...) may change something and needs write.
pub fn need(method: &Method, path: &str, tokens_for_reads: bool) -> Need {
    let read = method == Method::GET || method == Method::HEAD;
    match (read, path) {
        (true, "/health") => Need::Nothing,
        (true, _) if tokens_for_reads => Need::At(Access::Read),
        (true, _) => Need::Nothing,
        (false, _) => Need::At(Access::Write),
    }
}

/// Why a request was refused; the label of `http_auth_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No Authorization header (or not a bearer one): 401.
    Missing = 0,
    /// A bearer token that is not in the file: 401.
    Unknown = 1,
    /// A read token on a mutating endpoint: 403.
    ReadOnly = 2,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [Refusal::Missing, Refusal::Unknown, Refusal::ReadOnly];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Unknown => "unknown",
            Refusal::ReadOnly => "read_only",
        }
    }

    pub fn into_error(self) -> ApiError {
        match self {
            Refusal::Missing => ApiError {
                www_authenticate: true,
                ..ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this endpoint needs a token: send `Authorization: Bearer <token>`",
                )
            },
            Refusal::Unknown => ApiError {
                www_authenticate: true,
                ..ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the bearer token is not valid",
                )
            },
            Refusal::ReadOnly => ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this token may only read; this endpoint needs a write token",
            ),
        }
    }
}

/// The token in an `Authorization: Bearer <token>` header value (the
/// scheme is case-insensitive, RFC 9110 11.1).
pub fn bearer(header: Option<&[u8]>) -> Option<&[u8]> {
    let h = header?;
    let scheme = b"bearer ";
    if h.len() <= scheme.len() || !h[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return None;
    }
    let t = h[scheme.len()..].trim_ascii();
    (!t.is_empty()).then_some(t)
}

/// The whole decision: Ok when the request may go on.
pub fn decide(tokens: &Tokens, need: Need, authorization: Option<&[u8]>) -> Result<(), Refusal> {
    let Need::At(need) = need else {
        return Ok(());
    };
    let token = bearer(authorization).ok_or(Refusal::Missing)?;
    match tokens.lookup(token) {
        None => Err(Refusal::Unknown),
        Some(have) if have >= need => Ok(()),
        Some(_) => Err(Refusal::ReadOnly),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: &str = "wwwwwwwwwwwwwwwwwwww";
    const R: &str = "rrrrrrrrrrrrrrrrrrrr";

    fn tokens() -> Tokens {
        Tokens::parse(&format!("# ops\n\n{W}\n  {R} read  \n")).unwrap()
    }

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
    fn gets_read_everything_else_writes_and_health_is_always_open() {
        for reads in [false, true] {
            assert_eq!(need(&Method::GET, "/health", reads), Need::Nothing);
            assert_eq!(need(&Method::HEAD, "/health", reads), Need::Nothing);
            for m in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
                assert_eq!(need(&m, "/api/v1/publish", reads), Need::At(Access::Write));
                assert_eq!(need(&m, "/health", reads), Need::At(Access::Write));
            }
        }
        for p in ["/api/v1/status", "/metrics", "/api/v1/subscribe"] {
            assert_eq!(need(&Method::GET, p, false), Need::Nothing);
            assert_eq!(need(&Method::GET, p, true), Need::At(Access::Read));
        }
    }

    #[test]
    fn decisions() {
        let t = tokens();
        let w = format!("Bearer {W}");
        let r = format!("Bearer {R}");
        let write = Need::At(Access::Write);
        let read = Need::At(Access::Read);
        assert_eq!(decide(&t, Need::Nothing, None), Ok(()));
        assert_eq!(decide(&t, write, None), Err(Refusal::Missing));
        assert_eq!(
            decide(&t, write, Some(b"Basic dXNlcjpw")),
            Err(Refusal::Missing)
        );
        assert_eq!(decide(&t, write, Some(b"Bearer ")), Err(Refusal::Missing));
        assert_eq!(
            decide(&t, write, Some(b"Bearer nopenopenopenopenope")),
            Err(Refusal::Unknown)
        );
        assert_eq!(decide(&t, write, Some(w.as_bytes())), Ok(()));
        assert_eq!(
            decide(&t, write, Some(r.as_bytes())),
            Err(Refusal::ReadOnly)
        );
        assert_eq!(decide(&t, read, Some(r.as_bytes())), Ok(()));
        assert_eq!(
            decide(&t, read, Some(w.as_bytes())),
            Ok(()),
            "write implies read"
        );
        let lower = format!("bearer {W}");
        assert_eq!(decide(&t, write, Some(lower.as_bytes())), Ok(()));
    }

    #[test]
    fn refusals_map_to_401_with_a_challenge_and_403_without() {
        for r in [Refusal::Missing, Refusal::Unknown] {
            let e = r.into_error();
            assert_eq!(
                (e.status, e.code, e.www_authenticate),
                (StatusCode::UNAUTHORIZED, "unauthorized", true)
            );
        }
        let e = Refusal::ReadOnly.into_error();
        assert_eq!(
            (e.status, e.code, e.www_authenticate),
            (StatusCode::FORBIDDEN, "forbidden", false)
        );
    }

    #[test]
    fn the_log_line_counts_tokens_and_names_no_secret() {
        assert_eq!(Security::default().describe(), None);
        let s = Security {
            tokens: Some(tokens()),
            tls: None,
        };
        assert_eq!(s.describe().as_deref(), Some("2 API token(s)"));
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
