//! GET /api/v1/openapi.json: the API's OpenAPI 3.1 document, kept in the
//! repository as doc/openapi.json and built into the binary, so the
//! document a daemon serves is the one for its own routes. The tests check
//! it against the route table (`table`) and validate it with an OpenAPI
//! validator.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Response, StatusCode};

/// The document, as kept in the repository.
pub const DOCUMENT: &str = include_str!("../../doc/openapi.json");

pub fn document() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(DOCUMENT.as_bytes())));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::DOCUMENT;
    use crate::http::table::{Route, COMMON_STATUSES};
    use serde_json::Value;
    use std::collections::BTreeSet;

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).expect("doc/openapi.json is JSON")
    }

    /// (path, method, status) of every documented response.
    fn documented() -> BTreeSet<(String, String, u16)> {
        let mut out = BTreeSet::new();
        let doc = doc();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for code in op["responses"].as_object().unwrap().keys() {
                    let code = code.parse().unwrap_or_else(|_| {
                        panic!("{method} {path}: response {code:?} is not a status code")
                    });
                    out.insert((path.clone(), method.to_uppercase(), code));
                }
            }
        }
        out
    }

    /// (path, method, status) of everything the router can answer.
    fn served() -> BTreeSet<(String, String, u16)> {
        let mut out = BTreeSet::new();
        for &r in Route::ALL {
            for m in r.allow().split(", ") {
                for &s in r.statuses().iter().chain(COMMON_STATUSES) {
                    out.insert((r.template().to_string(), m.to_string(), s));
                }
            }
        }
        out
    }

    #[test]
    fn every_route_method_and_status_the_router_serves_is_documented() {
        let missing: Vec<_> = served().difference(&documented()).cloned().collect();
        assert!(
            missing.is_empty(),
            "served but not in doc/openapi.json: {missing:?}"
        );
    }

    #[test]
    fn the_document_promises_nothing_the_router_does_not_serve() {
        let extra: Vec<_> = documented().difference(&served()).cloned().collect();
        assert!(
            extra.is_empty(),
            "in doc/openapi.json but not served (src/http/table.rs): {extra:?}"
        );
    }

    #[test]
    fn it_is_openapi_3_1_and_names_each_operation_once() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut ids = BTreeSet::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                let id = op["operationId"].as_str().expect("an operationId");
                assert!(ids.insert(id.to_string()), "operationId {id} twice");
            }
        }
    }
}
