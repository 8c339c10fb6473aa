//! Seeded, bounded randomized testing on the stable toolchain (cargo-fuzz
//! needs nightly, which CI does not have): the config parser and validator,
//! config -> nats-server.conf rendering checked by `nats-server -t`, and the
//! publish request parser.
//!
//! Each test runs a fixed number of cases from a fixed seed, so CI is
//! deterministic and takes a few seconds. Explore further with
//! `MPB_FUZZ_ITERS=100000` (cases per test) and `MPB_FUZZ_SEED=<n>`; a
//! failure names the seed, the case and its input. The seed corpus is the
//! shipped configs plus tests/corpus/.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use marketprism_broker::config::{parse_str, Config, Format};
use marketprism_broker::http::publish::{parse_entry, split_batch};
use marketprism_broker::natsconf::{render, Credentials, RenderOptions, INTERNAL_USER};
use serde_json::{json, Value};

/// splitmix64: tiny, fast, and good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// true one time in `n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())].clone()
    }
}

fn env_num(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Cases per test: `default`, or MPB_FUZZ_ITERS.
fn iters(default: u64) -> u64 {
    env_num("MPB_FUZZ_ITERS").unwrap_or(default)
}

/// The case's generator: MPB_FUZZ_SEED (else a fixed seed) mixed with the
/// test's name and the case number, so any case can be replayed alone.
fn rng(test: &str, case: u64) -> Rng {
    let base = env_num("MPB_FUZZ_SEED").unwrap_or(0x6d70_625f_6675_7a7a);
    let salt = test.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut r = Rng(base ^ salt ^ case.wrapping_mul(0xA24B_AED4_963E_E407));
    r.next();
    r
}

/// Runs `f`; a panic is reported with the seed, case and input.
fn guarded<T>(test: &str, case: u64, input: &dyn std::fmt::Debug, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let seed = std::env::var("MPB_FUZZ_SEED").unwrap_or_else(|_| "default".into());
            panic!("{test}: case {case} (seed {seed}) panicked: {msg}\ninput: {input:?}")
        }
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every file in these directories (relative to the crate), sorted.
fn files(dirs: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in dirs {
        for e in std::fs::read_dir(root().join(d)).unwrap().flatten() {
            if e.path().is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn opts() -> RenderOptions {
    RenderOptions {
        internal: Some(Credentials {
            user: INTERNAL_USER.into(),
            password: "fuzz-generated".into(),
        }),
        mask_secrets: false,
        server_version: None,
        source: "fuzz".into(),
    }
}

// ------------------------------------------------------- config parser ----

/// Values that have broken parsers before: numbers past every integer
/// type, units that overflow, YAML's special forms, subjects with
/// wildcards and `$`.
const NASTY: &[&str] = &[
    "-1",
    "0",
    "65536",
    "4294967296",
    "99999999999999999999999999",
    "-9223372036854775809",
    "1.5",
    "1e400",
    ".nan",
    "-.inf",
    "\"\"",
    "~",
    "null",
    "[]",
    "{}",
    "[[[[[]]]]]",
    "{a: {b: {c: 1}}}",
    "\"1GB\"",
    "\"0B\"",
    "\"17EB\"",
    "\"99999999999TB\"",
    "\"18446744073709551615\"",
    "\"-5s\"",
    "\"9999999999999h\"",
    "\"1.5ms\"",
    "\"1ns\"",
    "\"5 s\"",
    "\"abc\"",
    "true",
    "\"a b\"",
    "\"market.>\"",
    "\">\"",
    "\"*\"",
    "\"$SYS.>\"",
    "\"a..b\"",
    "\"\\u0000\"",
    "\"\\\"\\\\\"",
    "\"é€\"",
    "&anchor 5",
    "*anchor",
    "*missing",
    "!!binary aGk=",
    "!!str 5",
    "|\n  block",
    "'single ''quoted'''",
    "\"{{wildcard(1)}}\"",
    "\"$1\"",
    "{destination: \"x.y\", weight: 200}",
];

/// A random edit of config text, in lines, values or bytes.
fn mutate_config(r: &mut Rng, text: &str, other: &str, toml: bool) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    for _ in 0..1 + r.below(4) {
        let i = r.below(lines.len());
        match r.below(10) {
            0 => {
                lines.remove(i);
                if lines.is_empty() {
                    lines.push(String::new());
                }
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 => {
                let j = r.below(lines.len());
                lines.swap(i, j);
            }
            3 => {
                lines[i] = if r.one_in(2) {
                    format!("  {}", lines[i])
                } else {
                    lines[i].trim_start().to_string()
                }
            }
            4..=6 => {
                // Replace the value of a `key: value` (`key = value`) line.
                let sep = if toml { " = " } else { ": " };
                if let Some((k, _)) = lines[i].split_once(sep) {
                    lines[i] = format!("{k}{sep}{}", r.pick(NASTY));
                } else {
                    lines[i] = format!("{}{sep}{}", lines[i], r.pick(NASTY));
                }
            }
            7 => {
                // Splice in lines of another document.
                let o: Vec<&str> = other.lines().collect();
                if !o.is_empty() {
                    let a = r.below(o.len());
                    let b = (a + 1 + r.below(8)).min(o.len());
                    for (k, l) in o[a..b].iter().enumerate() {
                        lines.insert(i + k, l.to_string());
                    }
                }
            }
            _ => {
                // A byte-level edit inside the line.
                let l = &mut lines[i];
                let cut = (0..=l.len())
                    .filter(|&c| l.is_char_boundary(c))
                    .collect::<Vec<_>>();
                let at = r.pick(&cut);
                match r.below(3) {
                    0 => l.truncate(at),
                    1 => l.insert_str(
                        at,
                        r.pick(&[
                            "\"", "'", ":", "[", "{", "#", "\t", "-", "*", "&", "!", "\\", "é",
                        ]),
                    ),
                    _ => l.insert_str(at, r.pick(NASTY)),
                }
            }
        }
    }
    let mut out = lines.join("\n");
    if r.one_in(20) {
        // Truncated anywhere.
        let cut = r.below(out.len() + 1);
        while !out.is_char_boundary(cut.min(out.len())) {
            out.pop();
        }
        out.truncate(cut.min(out.len()));
    }
    out
}

/// Parses and validates; true when the config is valid.
fn check_config_text(text: &str, format: Format) -> bool {
    match parse_str(text, format) {
        Err(e) => {
            assert!(
                !e.message.trim().is_empty(),
                "an error without a message: {e:?}"
            );
            // The line it names is in the document.
            if let Some(l) = e.line {
                // YAML ends a line at \n, \r\n or a lone \r.
                let lines = text.replace("\r\n", "\n").replace('\r', "\n");
                let lines = lines.lines().count().max(1) as u32;
                assert!(l >= 1 && l <= lines + 1, "line {l} of {lines}: {e}");
            }
            let _ = e.to_string();
            false
        }
        Ok((c, _warnings)) => {
            // Whatever validates can be rendered.
            let _ = render(&c, &opts());
            true
        }
    }
}

#[test]
fn the_config_parser_never_panics_and_always_says_what_is_wrong() {
    let mut corpus: Vec<(PathBuf, String)> =
        files(&["config", "config/examples", "tests/corpus/config"])
            .into_iter()
            .map(|p| {
                let t = std::fs::read_to_string(&p).unwrap();
                (p, t)
            })
            .collect();
    // The seed corpus itself: shipped files must parse, the corpus's own
    // hostile ones must not panic.
    for (p, t) in &corpus {
        let format = Format::from_path(p).unwrap_or(Format::Yaml);
        let valid = guarded("config-corpus", 0, p, || check_config_text(t, format));
        let shipped = !p.starts_with(root().join("tests"));
        let named_invalid = p.to_string_lossy().contains("bomb");
        assert_eq!(valid, shipped || !named_invalid, "{}", p.display());
    }
    corpus.retain(|(p, _)| Format::from_path(p).is_ok());
    let n = iters(3000);
    let mut valid = 0;
    for case in 0..n {
        let mut r = rng("config", case);
        let (path, text) = r.pick(&corpus).clone();
        let format = Format::from_path(&path).unwrap();
        let toml = matches!(format, Format::Toml);
        let other = r.pick(&corpus).1.clone();
        let mutated = if r.one_in(25) {
            let n = r.below(512);
            String::from_utf8_lossy(&(0..n).map(|_| r.next() as u8).collect::<Vec<_>>())
                .into_owned()
        } else {
            let mut t = mutate_config(&mut r, &text, &other, toml);
            if r.one_in(3) {
                t = mutate_config(&mut r, &t, &other, toml);
            }
            t
        };
        if guarded("config", case, &mutated, || {
            check_config_text(&mutated, format)
        }) {
            valid += 1;
        }
    }
    // Mutations that never (or always) validate would test little.
    assert!(
        valid * 20 >= n && valid * 20 <= n * 19,
        "{valid} of {n} mutated configs validated"
    );
}

// ------------------------------------------------------------ rendering ----

/// Characters that need care in nats-server.conf strings.
const CHARS: &[&str] = &[
    "a", "b", "z", "A", "Q", "0", "7", "-", "_", ".", "\"", "\\", "$", "#", "'", "{", "}", "[",
    "]", ":", ",", "=", ";", "/", "@", "%", "&", "*", "é", "€", "😀", "(", ")", "~", "`", "+",
];

/// Rarely: whitespace and control characters, which validation must keep
/// out of anything rendered.
const RARE: &[&str] = &[
    " ", "\t", "\n", "\r", "\u{0}", "\u{7f}", "\u{85}", "\u{a0}", "\u{2028}",
];

fn word(r: &mut Rng, max: usize) -> String {
    (0..1 + r.below(max))
        .map(|_| {
            if r.one_in(60) {
                r.pick(RARE)
            } else {
                r.pick(CHARS)
            }
        })
        .collect()
}

/// A subject token: mostly plain, sometimes odd.
fn token(r: &mut Rng) -> String {
    if r.one_in(6) {
        word(r, 4).replace(['.', '*', '>'], "x")
    } else {
        r.pick(&["market", "orders", "a", "b", "trade", "BTC-USD", "x_1", "é"])
            .to_string()
    }
}

fn subject(r: &mut Rng, wild: bool) -> String {
    let n = 1 + r.below(4);
    let mut t: Vec<String> = (0..n)
        .map(|_| {
            if wild && r.one_in(4) {
                "*".into()
            } else {
                token(r)
            }
        })
        .collect();
    if wild && r.one_in(3) {
        t.push(">".into());
    }
    t.join(".")
}

fn y(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn size(r: &mut Rng) -> String {
    let n = r.pick(&[0u64, 1, 16, 512, 1000, 1024, 65536, 1 << 40]);
    y(&format!(
        "{n}{}",
        r.pick(&["", "B", "KB", "MB", "GB", "TB", "K", "M", "G"])
    ))
}

fn dur(r: &mut Rng) -> String {
    let n = r.pick(&[0u64, 1, 2, 30, 90, 1000, 86_400, 1 << 33]);
    y(&format!(
        "{n}{}",
        r.pick(&["ms", "s", "m", "h", "d", "us", "ns"])
    ))
}

fn list_of(r: &mut Rng, f: impl Fn(&mut Rng) -> String) -> String {
    let n = r.below(4);
    let items: Vec<String> = (0..n).map(|_| y(&f(r))).collect();
    format!("[{}]", items.join(", "))
}

/// A broker config with ports, sizes, durations, streams, consumers,
/// users with permissions and mappings (no TLS: it needs real files),
/// random enough that some do not validate and most do.
fn gen_config(r: &mut Rng, data_dir: &Path) -> String {
    // Each key has good values and, one time in 12, a bad one: most
    // configs validate, and the validator still sees every kind of mistake.
    fn bad(r: &mut Rng) -> bool {
        r.one_in(12)
    }
    let mut s = String::new();
    let port = if bad(r) {
        r.pick(&[0u32, 70000])
    } else {
        r.pick(&[8085u32, 1, 65535])
    };
    s.push_str(&format!("port: {port}\n"));
    s.push_str("nats:\n");
    s.push_str(&format!("  data_dir: {}\n", y(&data_dir.to_string_lossy())));
    s.push_str(&format!("  nats_port: {}\n", 1024 + r.below(60000)));
    s.push_str(&format!("  http_port: {}\n", 1024 + r.below(60000)));
    if r.one_in(3) {
        s.push_str(&format!("  server_name: {}\n", y(&word(r, 12))));
    }
    if r.one_in(4) {
        let host = if bad(r) {
            "a b"
        } else {
            r.pick(&["127.0.0.1", "0.0.0.0", "::1", "::", "localhost"])
        };
        s.push_str(&format!("  host: {}\n", y(host)));
    }
    for key in ["max_connections", "max_subscriptions", "max_pings_out"] {
        if r.one_in(3) {
            let n = if bad(r) {
                -1
            } else {
                r.pick(&[0i64, 1, 1000, 65536, 4294967295])
            };
            s.push_str(&format!("  {key}: {n}\n"));
        }
    }
    if r.one_in(2) {
        let p = if bad(r) {
            size(r)
        } else {
            y(&format!("{}KB", 1 + r.below(65536)))
        };
        s.push_str(&format!("  max_payload: {p}\n"));
    }
    for key in ["jetstream_max_memory", "jetstream_max_storage"] {
        if r.one_in(2) {
            s.push_str(&format!("  {key}: {}\n", size(r)));
        }
    }
    for key in ["write_deadline", "ping_interval"] {
        if r.one_in(2) {
            let d = if bad(r) {
                dur(r)
            } else {
                y(&format!(
                    "{}{}",
                    1 + r.below(100_000),
                    r.pick(&["ms", "s", "m", "h"])
                ))
            };
            s.push_str(&format!("  {key}: {d}\n"));
        }
    }
    for key in ["jetstream_max_streams", "jetstream_max_consumers"] {
        if r.one_in(3) {
            let n = if bad(r) {
                r.pick(&[0i64, 1])
            } else {
                r.pick(&[-1i64, 100, 1 << 40])
            };
            s.push_str(&format!("  {key}: {n}\n"));
        }
    }
    if r.one_in(6) {
        s.push_str("  jetstream_enabled: false\n");
    }
    if r.one_in(2) {
        s.push_str("  streams:\n");
        for i in 0..1 + r.below(3) {
            let name = if bad(r) { word(r, 6) } else { format!("S{i}") };
            s.push_str(&format!("    {}:\n", y(&name)));
            let subjects: Vec<String> = (0..1 + r.below(3))
                .map(|_| format!("s{i}.{}", subject(r, true)))
                .collect();
            let quoted: Vec<String> = subjects.iter().map(|x| y(x)).collect();
            s.push_str(&format!("      subjects: [{}]\n", quoted.join(", ")));
            if r.one_in(2) {
                s.push_str(&format!("      max_age: {}\n", dur(r)));
            }
            if r.one_in(3) {
                let st = if bad(r) {
                    "disk"
                } else {
                    r.pick(&["file", "memory"])
                };
                s.push_str(&format!("      storage: {st}\n"));
            }
            if r.one_in(3) {
                let ret = r.pick(&["limits", "interest", "workqueue"]);
                s.push_str(&format!("      retention: {ret}\n"));
            }
            if r.one_in(3) {
                s.push_str(&format!("      max_bytes: {}\n", size(r)));
            }
            if r.one_in(3) {
                // One of the stream's subjects, unless meant to be bad.
                let filter = if bad(r) {
                    format!("s{i}.{}", subject(r, true))
                } else {
                    r.pick(&subjects)
                };
                s.push_str(&format!(
                    "      consumers:\n        c{i}:\n          filter_subject: {}\n",
                    y(&filter)
                ));
                if r.one_in(2) {
                    s.push_str(&format!("          ack_wait: {}\n", dur(r)));
                }
            }
        }
    }
    if r.one_in(2) {
        s.push_str("  users:\n");
        for _ in 0..1 + r.below(3) {
            s.push_str(&format!(
                "    - user: {}\n      password: {}\n",
                y(&word(r, 10)),
                y(&word(r, 16))
            ));
            if r.one_in(2) {
                s.push_str("      permissions:\n");
                if r.one_in(2) {
                    let l = list_of(r, |r| subject(r, true));
                    s.push_str(&format!("        publish: {l}\n"));
                } else {
                    let (a, d) = (
                        list_of(r, |r| subject(r, true)),
                        list_of(r, |r| subject(r, true)),
                    );
                    s.push_str(&format!(
                        "        publish:\n          allow: {a}\n          deny: {d}\n"
                    ));
                }
                if r.one_in(2) {
                    let l = list_of(r, |r| subject(r, true));
                    s.push_str(&format!("        subscribe: {l}\n"));
                }
            }
        }
    }
    if r.one_in(3) {
        s.push_str("  mappings:\n");
        for i in 0..1 + r.below(2) {
            let a = token(r);
            let b = token(r);
            let line = match r.below(3) {
                0 => format!(
                    "    {}: {}\n",
                    y(&format!("m{i}.{a}.*")),
                    y(&format!("x{i}.$1.{b}"))
                ),
                1 => format!(
                    "    {}: {}\n",
                    y(&format!("m{i}.*.*")),
                    y(&format!("x{i}.{{{{wildcard(2)}}}}.{{{{wildcard(1)}}}}"))
                ),
                _ => {
                    let w = if bad(r) { 0 } else { r.pick(&[50, 90]) };
                    format!(
                        "    {}:\n      - destination: {}\n        weight: {w}\n      - destination: {}\n        weight: {}\n",
                        y(&format!("m{i}.{a}.>")),
                        y(&format!("x{i}.v1.>")),
                        y(&format!("x{i}.v2.>")),
                        100 - w,
                    )
                }
            };
            s.push_str(&line);
        }
    }
    if r.one_in(8) {
        s.push_str(&format!(
            "  cluster_name: {}\n  cluster_routes: [\"nats://127.0.0.1:{}\"]\n",
            y(&word(r, 8)),
            1024 + r.below(60000)
        ));
    }
    s
}

#[test]
fn every_generated_config_that_validates_is_accepted_by_nats_server_t() {
    let bins = common::nats_servers();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("state with \"quotes\" and $dollar");
    let conf = dir.path().join("nats-server.conf");
    let n = iters(200);
    let mut valid = 0;
    for case in 0..n {
        let mut r = rng("render", case);
        let yaml = gen_config(&mut r, &data_dir);
        let parsed = guarded("render", case, &yaml, || parse_str(&yaml, Format::Yaml));
        let c: Config = match parsed {
            Ok((c, _)) => c,
            Err(e) => {
                assert!(!e.message.is_empty(), "{e:?}");
                continue;
            }
        };
        valid += 1;
        let text = guarded("render", case, &yaml, || render(&c, &opts()));
        std::fs::write(&conf, &text).unwrap();
        for bin in &bins {
            if let Err(e) = common::nats_server_t(bin, &conf) {
                panic!(
                    "case {case}: {} -t refuses the rendering of a config that validated:\n{e}\n--- broker config ---\n{yaml}\n--- nats-server.conf ---\n{text}",
                    bin.display()
                );
            }
        }
    }
    // A generator that only made invalid configs would test nothing.
    assert!(
        valid * 4 >= n,
        "only {valid} of {n} generated configs validated"
    );
}

// ------------------------------------------------------ publish parser ----

fn json_value(r: &mut Rng, depth: usize) -> Value {
    match r.below(if depth > 3 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(r.one_in(2)),
        2 => json!(r.next() as i64),
        3 => json!((r.next() % 10_000) as f64 / 7.0),
        4 => json!(word(r, 12) + r.pick(&["", "\n", "\t", "\u{0}", "\u{7f}", "\u{2028}"])),
        5 => Value::Array((0..r.below(4)).map(|_| json_value(r, depth + 1)).collect()),
        _ => Value::Object(
            (0..r.below(4))
                .map(|_| (word(r, 5), json_value(r, depth + 1)))
                .collect(),
        ),
    }
}

/// A publish object that must be accepted, and what it must become.
fn valid_request(r: &mut Rng) -> (Value, String, Vec<u8>) {
    let subj: String = subject(r, false)
        .replace('$', "d")
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                'w'
            } else {
                c
            }
        })
        .collect();
    let msg = json_value(r, 0);
    let payload = match &msg {
        Value::String(s) => s.clone().into_bytes(),
        v => serde_json::to_vec(v).unwrap(),
    };
    let mut req = json!({"subject": subj, "message": msg});
    if r.one_in(3) {
        req["headers"] =
            json!({"X-Trace": word(r, 8).replace(['\r', '\n'], ""), "X-Many": ["a", "b"]});
    }
    if r.one_in(3) {
        req["msg_id"] = json!(format!("id-{}", r.next()));
    }
    (req, subj, payload)
}

fn mutate_bytes(r: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..1 + r.below(4) {
        let at = r.below(b.len() + 1);
        match r.below(7) {
            0 if at < b.len() => b[at] ^= 1 << r.below(8),
            1 if at < b.len() => {
                let end = (at + 1 + r.below(8)).min(b.len());
                b.drain(at..end);
            }
            2 => {
                let tok: &[u8] = r.pick(&[
                    b"\"" as &[u8],
                    b"\\",
                    b"\\u",
                    b"\\ud800",
                    b"{",
                    b"}",
                    b"[",
                    b"]",
                    b",",
                    b":",
                    b"\xff",
                    b"\xc3",
                    b"\xed\xa0\x80",
                    b"\n",
                    b"\"subject\":",
                    b"\"message\":",
                    b"\"headers\":{\"a b\":\"c\"}",
                    b"\"msg_id\":\"\"",
                    b"1e999999",
                    b"-0",
                    b"null",
                ]);
                b.splice(at..at, tok.iter().copied());
            }
            3 => b.truncate(at),
            4 if at < b.len() => {
                let end = (at + 1 + r.below(16)).min(b.len());
                let dup = b[at..end].to_vec();
                b.splice(at..at, dup);
            }
            _ => b.insert(at, r.next() as u8),
        }
    }
}

fn check_entry(c: &Config, body: &Bytes, raw: &[u8]) {
    match parse_entry(c, body, raw) {
        Ok(e) => {
            marketprism_broker::subject::check(&e.subject, false)
                .unwrap_or_else(|err| panic!("accepted a bad subject {:?}: {err}", e.subject));
            assert!(!e.subject.starts_with('$'), "accepted {:?}", e.subject);
            assert!(e.payload.len() as u64 <= c.nats.max_payload.bytes());
        }
        Err(e) => {
            assert!(e.status.is_client_error(), "{e:?}");
            assert!(!e.message.is_empty(), "{e:?}");
        }
    }
}

#[test]
fn the_publish_parser_never_panics_and_valid_requests_round_trip() {
    let mut c = Config::default();
    c.nats.max_payload = marketprism_broker::config::Size(4096);
    let corpus: Vec<Vec<u8>> = files(&["tests/corpus/publish"])
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(!corpus.is_empty());
    for case in 0..iters(20_000) {
        let mut r = rng("publish", case);
        // Valid: the subject, payload, headers and msg_id come out as sent.
        let (req, subj, payload) = valid_request(&mut r);
        let body = Bytes::from(serde_json::to_vec(&req).unwrap());
        let e = guarded("publish", case, &req, || parse_entry(&c, &body, &body));
        match e {
            Ok(e) => {
                assert_eq!(e.subject, subj, "case {case}: {req}");
                assert_eq!(&e.payload[..], &payload[..], "case {case}: {req}");
                let h = e.headers.as_ref();
                assert_eq!(
                    h.is_some(),
                    req.get("headers").is_some() || req.get("msg_id").is_some(),
                    "case {case}: {req}"
                );
                if let Some(id) = req.get("msg_id") {
                    assert_eq!(
                        h.unwrap().get("Nats-Msg-Id").map(|v| v.as_str()),
                        id.as_str()
                    );
                }
            }
            Err(err) => {
                // Only because the payload is past max_payload.
                assert!(payload.len() > 4096, "case {case}: {req} refused: {err:?}");
                assert_eq!(err.status.as_u16(), 413);
            }
        }
        // The same entries as a batch, JSON array and NDJSON.
        let (req2, _, _) = valid_request(&mut r);
        let arr = Bytes::from(serde_json::to_vec(&json!([req, req2])).unwrap());
        let nd = Bytes::from(format!("{req}\n\n{req2}\n"));
        for (b, ndjson) in [(&arr, false), (&nd, true)] {
            let parts = guarded("publish-batch", case, b, || split_batch(b, ndjson)).unwrap();
            assert_eq!(parts.len(), 2, "case {case}: {b:?}");
            let first = parse_entry(&c, b, parts[0]).map(|e| e.subject);
            assert_eq!(first.ok().as_deref().unwrap_or(&subj), subj);
        }

        // Mutated: from this request or a corpus file, never a panic.
        let mut m = if r.one_in(3) {
            r.pick(&corpus).clone()
        } else {
            body.to_vec()
        };
        mutate_bytes(&mut r, &mut m);
        let mb = Bytes::from(m);
        guarded("publish-mutated", case, &mb, || {
            check_entry(&c, &mb, &mb);
            for ndjson in [false, true] {
                if let Ok(parts) = split_batch(&mb, ndjson) {
                    for p in parts {
                        check_entry(&c, &mb, p);
                    }
                }
            }
        });
    }
}
