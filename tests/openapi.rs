//! The OpenAPI document (doc/openapi.json, served at
//! GET /api/v1/openapi.json) checked with real OpenAPI tooling: validated
//! as OpenAPI 3.1 (openapi-spec-validator), and a battery of good and bad
//! requests to every route whose responses are validated against it
//! (openapi-core). Every other integration test checks it too: the
//! daemon logs a status its route table lacks, and tests/common fails on it.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use marketprism_broker::http::table::{classify, Route};
use serde_json::Value;

const WRITE: &str = "w-0123456789abcdef-write-token";
const READ: &str = "r-0123456789abcdef-read-token";

const STREAMS: &str = r#"  streams:
    MARKET_DATA:
      subjects: ["market.>"]
      consumers:
        reader:
          filter_subject: "market.>"
"#;

fn daemon() -> Daemon {
    Daemon::builder()
        .nats(STREAMS)
        .file("tokens", &format!("{WRITE}\n{READ} read\n"))
        .top("api:\n  tokens_file: tokens\n")
        .start()
}

async fn battery(d: &Daemon, doc: &Path) -> Value {
    let base = format!("http://127.0.0.1:{}", d.http);
    python_client(
        "openapi_check.py",
        &[doc.to_str().unwrap(), &base, WRITE, READ],
    )
    .await
}

fn doc_path() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/doc/openapi.json"))
}

#[tokio::test]
async fn every_route_answers_as_the_document_says() {
    let d = daemon();
    d.wait_healthy(std::time::Duration::from_secs(20)).await;
    let out = battery(&d, doc_path()).await;
    let failures = out["failures"].as_array().unwrap();
    assert!(failures.is_empty(), "{:#?}", failures);
    // The battery reaches every route the router serves, with every
    // method it takes: a new route needs its requests here.
    let mut reached = BTreeSet::new();
    for e in out["exchanges"].as_array().unwrap() {
        let path = e[1].as_str().unwrap().split('?').next().unwrap();
        if let Some((route, _)) = classify(path) {
            reached.insert((route.template(), e[0].as_str().unwrap().to_string()));
        }
    }
    for &r in Route::ALL {
        for m in r.allow().split(", ") {
            assert!(
                reached.contains(&(r.template(), m.to_string())),
                "tests/clients/openapi_check.py sends no {m} {}",
                r.template()
            );
        }
    }
}

#[tokio::test]
async fn a_response_the_document_does_not_describe_is_found() {
    // The same battery against a document that lacks POST
    // /api/v1/publish's 400 and GET /api/v1/streams/{stream}'s 404: the
    // check must see both.
    let d = daemon();
    d.wait_healthy(std::time::Duration::from_secs(20)).await;
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(doc_path()).unwrap()).unwrap();
    let paths = &mut doc["paths"];
    paths["/api/v1/publish"]["post"]["responses"]
        .as_object_mut()
        .unwrap()
        .remove("400");
    paths["/api/v1/streams/{stream}"]["get"]["responses"]
        .as_object_mut()
        .unwrap()
        .remove("404");
    let altered = d.dir.path().join("altered-openapi.json");
    std::fs::write(&altered, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = battery(&d, &altered).await;
    let failures: Vec<&str> = out["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        failures
            .iter()
            .any(|f| f.starts_with("POST /api/v1/publish -> 400")),
        "{failures:#?}"
    );
    assert!(
        failures
            .iter()
            .any(|f| f.starts_with("GET /api/v1/streams/NO_SUCH_STREAM -> 404")),
        "{failures:#?}"
    );
}
