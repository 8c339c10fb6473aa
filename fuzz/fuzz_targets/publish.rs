//! Request bodies through the publish parser, as a single publish and as a
//! JSON or NDJSON batch: nothing may panic, and every refusal is a 4xx.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use marketprism_broker::config::Config;
use marketprism_broker::http::publish::{parse_entry, split_batch};

fuzz_target!(|data: &[u8]| {
    let config = Config::default();
    let body = Bytes::copy_from_slice(data);
    let refused = |e: marketprism_broker::http::error::ApiError| {
        assert!(e.status.is_client_error(), "{} for a bad body", e.status);
    };
    if let Err(e) = parse_entry(&config, &body, &body) {
        refused(e);
    }
    for ndjson in [false, true] {
        match split_batch(&body, ndjson) {
            Ok(raws) => {
                for raw in raws {
                    if let Err(e) = parse_entry(&config, &body, raw) {
                        refused(e);
                    }
                }
            }
            Err(e) => refused(e),
        }
    }
});
