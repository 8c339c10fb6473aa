//! Config text (YAML and TOML) through the parser and validator, and every
//! config that validates through the nats-server.conf renderer: nothing
//! may panic, and every refusal must say what is wrong. (That nats-server
//! accepts each rendering is checked by tests/fuzz.rs with `nats-server -t`,
//! too slow to run per input here.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use marketprism_broker::config::{parse_str, Format};
use marketprism_broker::natsconf::{render, Credentials, RenderOptions, INTERNAL_USER};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for format in [Format::Yaml, Format::Toml] {
        match parse_str(text, format) {
            Ok((config, _warnings)) => {
                let opts = RenderOptions {
                    internal: Some(Credentials {
                        user: INTERNAL_USER.into(),
                        password: "fuzz".into(),
                    }),
                    mask_secrets: false,
                    source: "fuzz".into(),
                };
                let conf = render(&config, &opts);
                assert!(conf.contains("jetstream") || !config.nats.jetstream_enabled);
            }
            Err(e) => assert!(!e.message.is_empty(), "an error without a message"),
        }
    }
});
