//! Who may call what on the HTTP API: the access a request needs, the
//! bearer token it presents, and the decision.
//!
//! A `read` token may call every GET; mutating endpoints (every method
//! but GET and HEAD) need a `write` token. GET /health stays open so
//! liveness probes need no secret; the other GETs need a token only with
//! `api.tokens_for_reads: true`. The tokens themselves are loaded by
//! [`crate::security`].

use hyper::{Method, StatusCode};

pub use crate::security::tokens::{Access, Tokens};

use super::error::ApiError;

/// The realm in `WWW-Authenticate`.
pub const CHALLENGE: &str = "Bearer realm=\"marketprism-broker\"";

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
    use crate::security::tokens::fixture::{tokens, R, W};

    #[test]
    fn gets_read_everything_else_writes_and_health_is_always_open() {
        for reads in [false, true] {
            assert_eq!(need(&Method::GET, "/health", reads), Need::Nothing);
            assert_eq!(need(&Method::HEAD, "/health", reads), Need::Nothing);
            for m in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
                assert_eq!(need(&m, "/api/v1/publish", reads), Need::At(Access::Write));
                assert_eq!(
                    need(&m, "/api/v1/publish/stream", reads),
                    Need::At(Access::Write),
                    "streaming ingest writes"
                );
                assert_eq!(need(&m, "/health", reads), Need::At(Access::Write));
            }
        }
        for p in ["/api/v1/status", "/metrics", "/api/v1/subscribe"] {
            assert_eq!(need(&Method::GET, p, false), Need::Nothing);
            assert_eq!(need(&Method::GET, p, true), Need::At(Access::Read));
        }
    }

    #[test]
    fn replay_and_latest_values_are_reads() {
        // GETs, so a read-only token may replay; the ephemeral consumers
        // they make are the daemon's business, not a write by the client.
        for p in [
            "/api/v1/streams/MARKET_DATA/replay",
            "/api/v1/streams/MARKET_DATA/latest",
            "/api/v1/streams/MARKET_DATA/subjects/market.ticker.btc/last",
            "/api/v1/streams/MARKET_DATA/messages/7",
        ] {
            assert_eq!(need(&Method::GET, p, false), Need::Nothing, "{p}");
            assert_eq!(need(&Method::GET, p, true), Need::At(Access::Read), "{p}");
            assert_eq!(need(&Method::HEAD, p, true), Need::At(Access::Read), "{p}");
            assert_eq!(need(&Method::POST, p, true), Need::At(Access::Write), "{p}");
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
}
