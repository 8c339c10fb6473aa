//! Every route the API serves, in one list: its path template, the methods
//! it takes and the status codes it answers with. The router dispatches
//! through it (so a route cannot be served without being listed), 405's
//! Allow header comes from it, and the OpenAPI document is checked against
//! it (see `openapi`): a route or status code missing from the document
//! fails the tests.

use hyper::Method;

/// Status codes every route may answer besides its own: 401 and 403
/// (`api.tokens_file`, checked before routing) and 405 (another method).
pub const COMMON_STATUSES: &[u16] = &[401, 403, 405];

macro_rules! routes {
    ($( $(#[$doc:meta])* $name:ident => $path:literal, $allow:literal, [$($status:literal),+ $(,)?]; )+) => {
        /// A route of the API (see the module's doc).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Route {
            $( $(#[$doc])* $name, )+
        }

        impl Route {
            /// In matching order: a concrete path before a template that
            /// would also match it.
            pub const ALL: &'static [Route] = &[$(Route::$name),+];

            /// The path as the OpenAPI document writes it: `{name}` for a
            /// parameter, which matches one non-empty path segment.
            pub fn template(self) -> &'static str {
                match self { $(Route::$name => $path,)+ }
            }

            /// The methods, as an Allow header lists them.
            pub fn allow(self) -> &'static str {
                match self { $(Route::$name => $allow,)+ }
            }

            /// The status codes of this route's own answers (and of its
            /// handler's errors), `COMMON_STATUSES` aside.
            pub fn statuses(self) -> &'static [u16] {
                match self { $(Route::$name => &[$($status),+],)+ }
            }
        }
    };
}

routes! {
    Health => "/health", "GET, HEAD", [200, 503];
    Status => "/api/v1/status", "GET, HEAD", [200];
    Streams => "/api/v1/streams", "GET, HEAD", [200, 503];
    NatsInfo => "/api/v1/nats/info", "GET, HEAD", [200];
    /// nats-server's own monitoring endpoints, passed through with their
    /// status codes.
    NatsMonitor => "/api/v1/nats/{endpoint}", "GET, HEAD", [200, 400, 404, 502, 503];
    Metrics => "/metrics", "GET, HEAD", [200];
    OpenApi => "/api/v1/openapi.json", "GET, HEAD", [200];
    Publish => "/api/v1/publish", "POST", [200, 400, 408, 413, 415, 503, 507];
    PublishBatch => "/api/v1/publish/batch", "POST", [200, 207, 400, 408, 413, 415, 503, 507];
    /// Streaming ingest: past the checks of the whole request, 200 and a
    /// stream whose lines carry each line's own status.
    PublishStream => "/api/v1/publish/stream", "POST", [200, 415, 503, 507];
    Subscribe => "/api/v1/subscribe", "GET", [200, 400, 429, 503];
    StreamDetail => "/api/v1/streams/{stream}", "GET, HEAD", [200, 404, 503];
    Consumers => "/api/v1/streams/{stream}/consumers", "GET, HEAD", [200, 404, 503];
    Consumer => "/api/v1/streams/{stream}/consumers/{consumer}", "GET, HEAD", [200, 404, 503];
    Fetch => "/api/v1/streams/{stream}/consumers/{consumer}/fetch", "POST", [200, 400, 404, 408, 409, 413, 415, 503];
    Ack => "/api/v1/streams/{stream}/consumers/{consumer}/ack", "POST", [200, 202, 207, 400, 404, 408, 413, 415, 503];
    Nak => "/api/v1/streams/{stream}/consumers/{consumer}/nak", "POST", [200, 202, 207, 400, 404, 408, 413, 415, 503];
    Term => "/api/v1/streams/{stream}/consumers/{consumer}/term", "POST", [200, 202, 207, 400, 404, 408, 413, 415, 503];
    /// A stream read in pages through an ephemeral consumer (`replay`).
    Replay => "/api/v1/streams/{stream}/replay", "GET, HEAD", [200, 400, 404, 503];
    /// The newest message of every subject matching a filter.
    Latest => "/api/v1/streams/{stream}/latest", "GET, HEAD", [200, 400, 404, 503];
    /// The last message on one subject.
    SubjectLast => "/api/v1/streams/{stream}/subjects/{subject}/last", "GET, HEAD", [200, 400, 404, 503];
    /// One message by stream sequence.
    Message => "/api/v1/streams/{stream}/messages/{seq}", "GET, HEAD", [200, 400, 404, 503];
}

impl Route {
    /// Whether this route takes `m` (HEAD wherever GET is).
    pub fn takes(self, m: &Method) -> bool {
        self.allow().split(", ").any(|a| a == m.as_str())
    }

    /// Whether `status` is one this route is documented to answer with.
    pub fn answers(self, status: u16) -> bool {
        self.statuses().contains(&status) || COMMON_STATUSES.contains(&status)
    }
}

/// A path's parameters, in the template's order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Params<'a>(Vec<&'a str>);

impl<'a> Params<'a> {
    /// The `i`th parameter; the template guarantees it exists.
    pub fn get(&self, i: usize) -> &'a str {
        self.0.get(i).copied().unwrap_or_default()
    }
}

/// The route `path` is for, and its parameters; None for no route.
pub fn classify(path: &str) -> Option<(Route, Params<'_>)> {
    Route::ALL
        .iter()
        .find_map(|&r| matches(r.template(), path).map(|p| (r, p)))
}

fn matches<'a>(template: &str, path: &'a str) -> Option<Params<'a>> {
    let mut want = template.split('/');
    let mut got = path.split('/');
    let mut params = Params::default();
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(params),
            (Some(w), Some(g)) if w.starts_with('{') => {
                if g.is_empty() {
                    return None;
                }
                params.0.push(g);
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The template with each `{param}` replaced by a sample value.
    fn sample(r: Route) -> String {
        r.template()
            .split('/')
            .map(|s| if s.starts_with('{') { "x_1" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn every_route_is_reached_by_its_own_template() {
        for &r in Route::ALL {
            assert_eq!(classify(&sample(r)).map(|m| m.0), Some(r), "{r:?}");
        }
    }

    #[test]
    fn parameters_come_out_in_order_and_an_empty_one_is_no_route() {
        let (r, p) = classify("/api/v1/streams/MARKET_DATA/consumers/c1/fetch").unwrap();
        assert_eq!(r, Route::Fetch);
        assert_eq!((p.get(0), p.get(1)), ("MARKET_DATA", "c1"));
        assert_eq!(classify("/api/v1/streams/"), None);
        assert_eq!(classify("/api/v1/streams//consumers"), None);
        assert_eq!(classify("/api/v1/streams/S/consumers/c/other"), None);
        assert_eq!(classify("/api/v1/publish/"), None);
        assert_eq!(classify("/nope"), None);
        let (r, p) = classify("/api/v1/streams/S/subjects/market.ticker.%3E/last").unwrap();
        assert_eq!(
            (r, p.get(0), p.get(1)),
            (Route::SubjectLast, "S", "market.ticker.%3E")
        );
        assert_eq!(
            classify("/api/v1/streams/S/messages/7").unwrap().0,
            Route::Message
        );
        assert_eq!(classify("/api/v1/streams/S/replay/x"), None);
    }

    #[test]
    fn a_concrete_path_wins_over_a_template_that_also_matches_it() {
        assert_eq!(classify("/api/v1/nats/info").unwrap().0, Route::NatsInfo);
        assert_eq!(classify("/api/v1/nats/varz").unwrap().0, Route::NatsMonitor);
    }

    #[test]
    fn head_goes_wherever_get_does_and_405s_allow_comes_from_the_table() {
        assert!(Route::Health.takes(&Method::HEAD));
        assert!(!Route::Health.takes(&Method::POST));
        assert!(Route::Publish.takes(&Method::POST));
        assert!(!Route::Publish.takes(&Method::GET));
        // SSE: a HEAD would open a subscription nobody reads.
        assert!(!Route::Subscribe.takes(&Method::HEAD));
        for &r in Route::ALL {
            assert!(r.answers(405), "{r:?}");
            assert!(r.statuses().iter().all(|s| (200..600).contains(s)));
        }
    }
}
